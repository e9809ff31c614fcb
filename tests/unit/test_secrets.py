"""Secrets: random per deployment, private file, never silently replaced."""

from __future__ import annotations

import stat

import pytest
import yaml
from flops_mlops.configuration import loading, secrets
from flops_mlops.configuration.schema import ConfigError


def make_config(tmp_path, kind="mysql", tenants=("acme", "globex")):
    data = {"name": "t", "state_dir": "state", "secrets_file": ".env",
            "backend_store": {"kind": kind, "port": 3399}, "tenants": [{"id": t} for t in tenants]}
    path = tmp_path / "stack.yaml"
    path.write_text(yaml.safe_dump(data))
    return loading.load(path)


def test_init_writes_every_needed_password_privately(tmp_path):
    cfg = make_config(tmp_path)
    result = secrets.init(cfg)
    assert stat.S_IMODE(cfg.secrets_file.stat().st_mode) == 0o600
    values = secrets.read_env(cfg.secrets_file)
    per_tenant = ("DB_PASSWORD", "FTP_PASSWORD", "ADMIN_PASSWORD", "SECRET_KEY", "FL_PASSWORD", "SERVE_PASSWORD")
    assert set(result.added) == set(values) == {"FLOPS_MYSQL_ADMIN_PASSWORD"} | {
        f"FLOPS_TENANT_{t}_{key}" for t in ("ACME", "GLOBEX") for key in per_tenant}
    assert len(set(values.values())) == 13 and all(len(v) >= 32 for v in values.values())
    loaded = secrets.Secrets.load(cfg)
    assert loaded.db_password("acme") == values["FLOPS_TENANT_ACME_DB_PASSWORD"]
    assert loaded.admin_password("globex") == values["FLOPS_TENANT_GLOBEX_ADMIN_PASSWORD"]
    assert loaded.secret_key("acme") == values["FLOPS_TENANT_ACME_SECRET_KEY"]


def test_init_keeps_existing_values_and_adds_only_missing_ones(tmp_path):
    cfg = make_config(tmp_path, tenants=("acme",))
    secrets.init(cfg)
    before = secrets.read_env(cfg.secrets_file)
    bigger = make_config(tmp_path, tenants=("acme", "globex"))
    result = secrets.init(bigger)
    after = secrets.read_env(cfg.secrets_file)
    assert {k: after[k] for k in before} == before
    assert sorted(result.added) == ["FLOPS_TENANT_GLOBEX_ADMIN_PASSWORD", "FLOPS_TENANT_GLOBEX_DB_PASSWORD",
                                    "FLOPS_TENANT_GLOBEX_FL_PASSWORD", "FLOPS_TENANT_GLOBEX_FTP_PASSWORD",
                                    "FLOPS_TENANT_GLOBEX_SECRET_KEY", "FLOPS_TENANT_GLOBEX_SERVE_PASSWORD"]
    assert secrets.init(bigger).added == []


def test_force_regenerates_after_a_private_backup(tmp_path):
    cfg = make_config(tmp_path)
    secrets.init(cfg)
    before = secrets.read_env(cfg.secrets_file)
    result = secrets.init(cfg, force=True)
    after = secrets.read_env(cfg.secrets_file)
    assert all(after[k] != before[k] for k in before)
    assert result.backup and secrets.read_env(result.backup) == before
    assert stat.S_IMODE(result.backup.stat().st_mode) == 0o600
    again = secrets.init(cfg, force=True)  # within the same second: a second backup, the first one kept
    assert again.backup != result.backup and secrets.read_env(again.backup) == after
    assert secrets.read_env(result.backup) == before


def test_load_names_missing_file_missing_keys_and_open_mode(tmp_path):
    cfg = make_config(tmp_path)
    with pytest.raises(ConfigError, match=r"\.env: secrets file not found; create it with"):
        secrets.Secrets.load(cfg)
    cfg.secrets_file.write_text("FLOPS_MYSQL_ADMIN_PASSWORD=x\n")
    cfg.secrets_file.chmod(0o600)
    with pytest.raises(ConfigError, match="missing FLOPS_TENANT_ACME_DB_PASSWORD"):
        secrets.Secrets.load(cfg)
    secrets.init(cfg)
    cfg.secrets_file.chmod(0o644)
    with pytest.raises(ConfigError, match="readable by others"):
        secrets.Secrets.load(cfg)


def test_sqlite_stacks_need_no_database_passwords(tmp_path):
    cfg = make_config(tmp_path, kind="sqlite", tenants=("acme",))
    assert secrets.required_keys(cfg) == ["FLOPS_TENANT_ACME_FTP_PASSWORD", "FLOPS_TENANT_ACME_ADMIN_PASSWORD",
                                          "FLOPS_TENANT_ACME_SECRET_KEY", "FLOPS_TENANT_ACME_FL_PASSWORD",
                                          "FLOPS_TENANT_ACME_SERVE_PASSWORD"]


def test_the_env_example_placeholders_are_refused(tmp_path):
    cfg = make_config(tmp_path, kind="sqlite", tenants=("acme",))
    secrets.init(cfg)
    values = secrets.read_env(cfg.secrets_file)
    values["FLOPS_TENANT_ACME_FTP_PASSWORD"] = "placeholder-run-flops-mlops-secrets-init"
    cfg.secrets_file.write_text("".join(f"{k}={v}\n" for k, v in values.items()))
    cfg.secrets_file.chmod(0o600)
    with pytest.raises(ConfigError, match="FLOPS_TENANT_ACME_FTP_PASSWORD still holds the .env.example placeholder"):
        secrets.Secrets.load(cfg)


def test_redact_hides_plain_and_url_quoted_values():
    text = "ftp://flops_acme:a%2Fb-c@127.0.0.1/artifacts failed; password a/b-c"
    assert secrets.redact(text, ["a/b-c", ""]) == "ftp://flops_acme:***@127.0.0.1/artifacts failed; password ***"


def test_replace_value_changes_one_key_after_a_backup(tmp_path):
    cfg = make_config(tmp_path, kind="sqlite", tenants=("acme",))
    secrets.init(cfg)
    before = secrets.read_env(cfg.secrets_file)
    backup = secrets.replace_value(cfg, "FLOPS_TENANT_ACME_ADMIN_PASSWORD", "new-admin-password")
    after = secrets.read_env(cfg.secrets_file)
    assert after == {**before, "FLOPS_TENANT_ACME_ADMIN_PASSWORD": "new-admin-password"}
    assert secrets.read_env(backup) == before
    assert stat.S_IMODE(cfg.secrets_file.stat().st_mode) == stat.S_IMODE(backup.stat().st_mode) == 0o600


def test_project_password_keys_refuse_names_that_are_not_projects():
    assert secrets.project_password_key("mnist") == "FLOPS_PROJECT_MNIST_PASSWORD"
    with pytest.raises(ConfigError, match="'a-b' is not a valid project name"):
        secrets.project_password_key("a-b")


def test_a_secrets_file_that_is_not_utf8_exits_2_naming_it_and_stays_as_it_was(tmp_path):
    from conftest import run_cli

    config_path = make_config(tmp_path).source
    bad = b"FLOPS_TENANT_ACME_FTP_PASSWORD=caf\xe9\n"
    env_file = tmp_path / ".env"
    env_file.write_bytes(bad)
    result = run_cli("secrets", "init", config=config_path)
    assert result.returncode == 2, result.stderr
    assert f"{env_file}: not UTF-8 text (byte 34)" in result.stderr and "Traceback" not in result.stderr
    assert env_file.read_bytes() == bad


def test_the_registry_login_is_both_keys_or_none(tmp_path):
    """push-image's login (FLOPS_REGISTRY_USER and FLOPS_REGISTRY_PASSWORD, set by hand): none without them, both
    when set, refused naming the missing key when one is set alone, or when others may read the file."""
    cfg = make_config(tmp_path, tenants=("acme",))
    assert secrets.registry_login(cfg) is None  # no secrets file yet
    secrets.init(cfg)
    assert secrets.registry_login(cfg) is None
    text = cfg.secrets_file.read_text()
    cfg.secrets_file.write_text(text + "FLOPS_REGISTRY_USER=pusher\n")
    with pytest.raises(ConfigError, match="FLOPS_REGISTRY_USER is set but FLOPS_REGISTRY_PASSWORD is not"):
        secrets.registry_login(cfg)
    cfg.secrets_file.write_text(text + "FLOPS_REGISTRY_USER=pusher\nFLOPS_REGISTRY_PASSWORD=s3cret-value\n")
    assert secrets.registry_login(cfg) == ("pusher", "s3cret-value")
    cfg.secrets_file.chmod(0o644)
    with pytest.raises(ConfigError, match="readable by others"):
        secrets.registry_login(cfg)
