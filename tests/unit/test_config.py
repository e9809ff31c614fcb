"""The configuration model: shipped configs load; bad input is named precisely and rejected."""

from __future__ import annotations

from pathlib import Path

import pydantic
import pytest
import yaml
from flops_mlops.configuration import keys, loading
from flops_mlops.configuration.schema import ConfigError
from flops_mlops.configuration.stack import StackConfig, validate_tenant_id
from flops_mlops.configuration.tracking import Tenant

ROOT = Path(__file__).resolve().parents[2]
MINIMAL = {"name": "t", "state_dir": "state", "secrets_file": ".env", "tenants": [{"id": "acme"}]}


@pytest.mark.parametrize("name", sorted(p.name for p in (ROOT / "configs").glob("*.yaml")))
def test_shipped_configs_load(name):
    loaded = loading.load(ROOT / "configs" / name)
    assert loaded.tenants
    assert loaded.state_dir.is_absolute() and loaded.secrets_file.is_absolute()


def test_relative_paths_resolve_against_the_config_folder(tmp_path):
    path = tmp_path / "sub" / "stack.yaml"
    path.parent.mkdir()
    path.write_text(yaml.safe_dump(MINIMAL))
    loaded = loading.load(path)
    assert loaded.state_dir == path.parent / "state"
    assert loaded.secrets_file == path.parent / ".env"
    assert loaded.tracking_port(loaded.tenant("acme")) == 5000


def with_change(key: str, value) -> dict:
    data = yaml.safe_load(yaml.safe_dump(MINIMAL))
    target = data
    *parents, last = key.split(".")
    for part in parents:
        target = target.setdefault(part, {})
    if value is DELETE:
        del target[last]
    else:
        target[last] = value
    return data


DELETE = object()

# (key changed, new value, text the error must contain)
BAD = [
    ("colour", "blue", "stack.yaml: colour: unknown key"),
    ("tracking.prot", 5000, "stack.yaml: tracking.prot: unknown key"),
    ("tracking.base_port", "5000", "tracking.base_port: expected an integer, got str '5000'"),
    ("tracking.base_port", 70000, "tracking.base_port: expected a TCP port 1-65535, got 70000"),
    ("tracking.workers", True, "tracking.workers: expected an integer, got bool True"),
    ("tracking.job_execution", "no", "tracking.job_execution: expected true or false"),
    ("backend_store.kind", "postgres", "backend_store.kind: expected one of sqlite, mysql, got str 'postgres'"),
    ("artifact_store.passive_ports", [30010, 30000], "artifact_store.passive_ports: expected [min, max]"),
    ("artifact_store.pasv_address", "ftp.example", "artifact_store.pasv_address: expected an IPv4 address"),
    ("artifact_store.host", "bad host", "artifact_store.host: expected a host name or IP address"),
    ("artifact_store.connect_timeout", 0, "artifact_store.connect_timeout: expected at least 1 second, got 0"),
    ("artifact_store.data_timeout", "60", "artifact_store.data_timeout: expected an integer, got str '60'"),
    ("artifact_store.quota", "10 gigs", "artifact_store.quota: expected a size such as 10GB, 500MB or 0 (no limit), "
                                        "got '10 gigs'"),
    ("artifact_store.quota", -1, "artifact_store.quota: expected a size such as 10GB, 500MB or 0 (no limit), got -1"),
    ("artifact_store.quota", 1.5, "artifact_store.quota: expected an integer, got float 1.5"),
    ("artifact_store.tls", True, "artifact_store.tls: FTPS needs kind vsftpd (the embedded server speaks plain FTP "
                                 "only), got kind 'embedded'"),
    ("tenants", [], "tenants: expected at least one tenant"),
    ("tenants", [{"id": "Acme"}], "tenants[0].id: 'Acme' is not a valid tenant id"),
    ("tenants", [{"id": "acme; DROP"}], "tenants[0].id: 'acme; DROP' is not a valid tenant id"),
    ("tenants", [{"id": "../etc"}], "tenants[0].id: '../etc' is not a valid tenant id"),
    ("tenants", [{"id": "a" * 17}], "is not a valid tenant id"),
    ("tenants", [{"id": "acme"}, {"id": "acme"}], "tenants[1].id: tenant 'acme' is listed twice"),
    ("tenants", [{"id": "acme", "port": 5001}, {"id": "beta"}], "port 5001 is used twice"),
    ("tenants", [{"name": "acme"}], "tenants[0].name: unknown key"),
    ("name", "Big Stack", "name: 'Big Stack' is not valid"),
    ("state_dir", DELETE, "state_dir: required key is missing"),
    ("backend_store", "mysql", "backend_store: expected a mapping, got str 'mysql'"),
    # Strict: no number from a string, no true from 1, no path from a number.
    ("tracking.job_execution", 1, "tracking.job_execution: expected true or false, got int 1"),
    ("tenants", [{"id": "acme", "port": "5001"}], "tenants[0].port: expected an integer, got str '5001'"),
    ("state_dir", 5, "state_dir: expected a path, got int 5"),
    ("tracking.os_user", "root", "tracking.os_user: 'root' is not an unprivileged account name"),
    ("tracking.allowed_hosts", ["ok.example:5000", "bad host"], "tracking.allowed_hosts[1]: expected a host name"),
    # '*' lets any Host header in (MLflow matches with fnmatch); the message quotes the value as entered.
    ("tracking.allowed_hosts", ["*"], "tracking.allowed_hosts[0]: expected a host name or IP address"),
    ("tracking.allowed_hosts", ["*"], "got '*'"),
    ("tracking.allowed_hosts", ["10.0.*"], "got '10.0.*'"),
    ("tracking.allowed_hosts", ["*.org"], "got '*.org'"),
    ("tracking.allowed_hosts", ["ok.example:99999"], "got 'ok.example:99999'"),
    # HTTPS of the tracking servers: a bool; a certificate of one's own comes with its key, and only with tls on.
    ("tracking.tls", "yes", "tracking.tls: expected true or false, got str 'yes'"),
    ("tracking.tls_certificate", "my.crt", "tracking.tls_key: required with tracking.tls_certificate"),
    ("tracking.tls_key", "my.key", "tracking.tls_certificate: required with tracking.tls_key"),
    ("tracking.tls_ca", "ca.crt", "tracking.tls_ca: set to 'ca.crt', but tracking.tls is false"),
    # Passive data ports apart from every other port of the stack.
    ("artifact_store.passive_ports", [5000, 5009],
     "artifact_store.passive_ports: [5000, 5009] includes port 5000, used by tracking server of tenant acme"),
    ("artifact_store.passive_ports", [2120, 2130],
     "artifact_store.passive_ports: [2120, 2130] includes port 2121, used by the FTP control port"),
    # The oakestra section's rules hold at load time, not only when rendering.
    ("oakestra.registry", "docker.io", "backend_store.kind: Oakestra tracking servers need mysql"),
    ("oakestra.ip_plan.stores_block", 256, "oakestra.ip_plan.stores_block: expected 0-255, got 256"),
]


@pytest.mark.parametrize("key,value,expected", BAD, ids=[(f"{k} deleted" if v is DELETE else f"{k}={v!r}")[:40] for k, v, _ in BAD])
def test_bad_configs_are_rejected_with_file_key_and_expectation(tmp_path, key, value, expected):
    path = tmp_path / "stack.yaml"
    path.write_text(yaml.safe_dump(with_change(key, value)))
    with pytest.raises(ConfigError) as error:
        loading.load(path)
    assert str(path) in str(error.value)
    assert expected in str(error.value)


@pytest.mark.parametrize("text,expected", [
    ("name: [unclosed", "not valid YAML (line 1"),
    ("- just\n- a list\n", "expected a mapping of settings at the top level"),
    ("name: a\nstate_dir: s\nname: b\n", "key 'name' appears twice in one mapping (lines 1 and 3)"),
    ("name: a\ntracking:\n  base_port: 5000\n  base_port: 6000\n",
     "key 'base_port' appears twice in one mapping (lines 3 and 4)"),
    (b"name: caf\xe9\n", "not UTF-8 text (byte 9"),
])
def test_unreadable_files(tmp_path, text, expected):
    path = tmp_path / "stack.yaml"
    path.write_bytes(text) if isinstance(text, bytes) else path.write_text(text)
    with pytest.raises(ConfigError) as error:
        loading.load(path)
    assert expected in str(error.value) and str(path) in str(error.value)


def test_missing_file_is_named(tmp_path):
    with pytest.raises(ConfigError, match="nope.yaml: configuration file not found"):
        loading.load(tmp_path / "nope.yaml")


def test_docs_configuration_md_is_what_the_model_generates():
    """The drift check: regenerate with `flops-mlops config keys --markdown > docs/configuration.md`."""
    text = (ROOT / "docs" / "configuration.md").read_text(encoding="utf-8")
    assert text == keys.markdown(), ("docs/configuration.md is stale; regenerate it with "
                                       ".venv/bin/flops-mlops config keys --markdown > docs/configuration.md")


def test_a_loaded_configuration_is_one_every_target_accepts(tmp_path):
    """load() refuses what render would refuse later, so `config check` needs no special case."""
    data = yaml.safe_load((ROOT / "configs" / "oakestra.yaml").read_text())
    data["oakestra"]["tenants"][1]["slot"] = 1
    path = tmp_path / "stack.yaml"
    path.write_text(yaml.safe_dump(data))
    with pytest.raises(ConfigError, match=r"stack.yaml: oakestra.tenants\[1\].slot: slot 1 is already used"):
        loading.load(path)


def test_configurations_built_in_python_are_checked_and_copied_like_loaded_ones():
    built = StackConfig(name="t", state_dir="s", secrets_file=".env", tenants=[Tenant(id="acme")])
    moved = built.model_copy(update={"tracking": built.tracking.model_copy(update={"base_port": 6000})})
    assert moved.tracking_port(moved.tenants[0]) == 6000 and built.tracking.base_port == 5000
    with pytest.raises(pydantic.ValidationError, match="frozen"):
        built.name = "u"


def test_every_key_is_documented():
    rows = keys.describe()
    documented = {key for key, _, _ in rows}
    assert {"tenants[].id", "backend_store.kind", "artifact_store.passive_ports", "tracking.workers"} <= documented
    assert all(text.strip() for _, _, text in rows)


@pytest.mark.parametrize("value", ["acme\n", "acme\n; DROP", "\nacme"])
def test_a_trailing_or_embedded_newline_is_not_a_valid_tenant_id(value):
    with pytest.raises(ConfigError, match="is not a valid tenant id"):
        validate_tenant_id(value)


@pytest.mark.parametrize("text, size", [("10GB", 10 * 10**9), ("500 MiB", 500 * 2**20), ("0", 0), ("none", 0),
                                        (1234, 1234), ("2tb", 2 * 10**12)])
def test_a_quota_is_read_as_bytes(text, size):
    from flops_mlops.configuration.stores import ArtifactStore

    assert ArtifactStore(quota=text).quota == size
