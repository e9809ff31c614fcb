"""HTTPS of the tracking servers (tracking.tls): the certificates `secrets init` makes for each tenant's server, the
names they hold, their renewal, a certificate of the user's own, and what the servers and our clients are given.
Real openssl and Python's ssl module; the served stack is tests/integration/test_tracking_https.py."""

from __future__ import annotations

import ssl
import stat

import pytest
import yaml
from flops_mlops.cli import main
from flops_mlops.configuration import certificates, loading, secrets
from flops_mlops.configuration.schema import ConfigError
from flops_mlops.native.status import warnings
from flops_mlops.tracking.server import client_env, client_verify, server_argv, tls_paths


def make_config(tmp_path, tenants=("acme", "globex"), **tracking):
    data = {"name": "t", "state_dir": "state", "secrets_file": ".env",
            "tracking": {"tls": True, "public_host": "mlflow.example", **tracking},
            "tenants": [{"id": tenant} for tenant in tenants]}
    path = tmp_path / "stack.yaml"
    path.write_text(yaml.safe_dump(data))
    return loading.load(path)


def test_secrets_init_makes_one_private_certificate_per_tenant_server_for_its_names(tmp_path):
    config = make_config(tmp_path, host="0.0.0.0", allowed_hosts=["ui.example:443", "10.0.0.7", "*.example.org:*"])
    secrets.init(config)
    ca = certificates.ca_certificate_path(config)
    for tenant in ("acme", "globex"):
        crt, key = certificates.tracking_files(config, tenant)
        assert (crt.name, key.name) == (f".env.tracking-{tenant}.crt", f".env.tracking-{tenant}.key")
        for path in (crt, key, certificates.ca_key_path(config)):
            assert stat.S_IMODE(path.stat().st_mode) == 0o600, path
        assert stat.S_IMODE(ca.stat().st_mode) == 0o644  # the CA certificate is public; every client reads it
        # public_host, allowed_hosts without their port, its compose service name (the first tenant's is
        # tracking-server), loopback; not the wildcard address it listens on
        service = "tracking-server" if tenant == "acme" else f"tracking-server-{tenant}"
        assert certificates.certificate_names(crt) == {"DNS:mlflow.example", "DNS:ui.example", "IP:10.0.0.7",
                                                       f"DNS:{service}", "DNS:localhost", "IP:127.0.0.1"}
        context = ssl.create_default_context(cafile=str(ca))
        context.load_cert_chain(str(crt), str(key))  # the key is the certificate's
    assert config.tracking_uri(config.tenant("acme")).startswith("https://mlflow.example:")


def test_renewal_replaces_the_certificates_keeps_the_ca_and_the_passwords(tmp_path, capsys):
    config = make_config(tmp_path)
    secrets.init(config)
    ca = certificates.ca_certificate_path(config).read_bytes()
    env = config.secrets_file.read_bytes()
    before = {t: certificates.tracking_files(config, t)[0].read_bytes() for t in ("acme", "globex")}
    assert main(["--config", str(config.source), "secrets", "renew-certificates", "--tenant", "acme"]) == 0
    out = capsys.readouterr().out
    assert "tenant acme: new certificate" in out and "restart --tenant acme" in out and "globex" not in out
    assert certificates.tracking_files(config, "acme")[0].read_bytes() != before["acme"]
    assert certificates.tracking_files(config, "globex")[0].read_bytes() == before["globex"]
    assert certificates.ca_certificate_path(config).read_bytes() == ca and config.secrets_file.read_bytes() == env
    assert certificates.expiry(certificates.tracking_files(config, "acme")[0]).endswith("GMT")
    secrets.init(config, force=True)  # new passwords; the certificates stay
    assert certificates.make_tracking_certificates(config) == []


@pytest.mark.parametrize("tracking,expected", [
    ({"tls": False}, "tracking.tls: false, so the tracking servers have no certificate to renew"),
    ({"tls_certificate": "own.crt", "tls_key": "own.key"}, "tracking.tls_certificate: "),
])
def test_renewal_refuses_what_it_cannot_renew_with_exit_2(tmp_path, capsys, tracking, expected):
    config = make_config(tmp_path, **tracking)
    assert main(["--config", str(config.source), "secrets", "renew-certificates"]) == 2
    assert expected in capsys.readouterr().err


def test_the_server_gets_file_paths_and_clients_the_ca(tmp_path):
    config = make_config(tmp_path)
    secrets.init(config)
    acme = config.tenant("acme")
    crt, key = tls_paths(config, acme)
    argv = server_argv(config, acme, (crt, key))
    assert argv[-4:] == ["--ssl-certfile", str(crt), "--ssl-keyfile", str(key)]
    assert "PRIVATE KEY" not in " ".join(argv)
    ca = str(certificates.ca_certificate_path(config))
    assert client_verify(config) == ca
    assert client_env(config) == {"MLFLOW_TRACKING_SERVER_CERT_PATH": ca}
    assert [w for w in warnings(config) if w.startswith("tracking")] == []


def test_tls_off_is_plain_http_and_status_warns(tmp_path):
    config = make_config(tmp_path, tls=False)
    secrets.init(config)
    assert not certificates.ca_certificate_path(config).exists()
    assert config.tracking_uri(config.tenant("acme")).startswith("http://")
    assert client_verify(config) is True and client_env(config) == {}
    assert ["tracking.tls is false" in w for w in warnings(config)] == [True]


def test_a_certificate_of_ones_own_is_used_as_given(tmp_path):
    (tmp_path / "other").mkdir()
    theirs = make_config(tmp_path / "other")  # another CA's certificate, as a user might bring one
    secrets.init(theirs)
    crt, key = certificates.tracking_files(theirs, "acme")
    config = make_config(tmp_path, tls_certificate=str(crt), tls_key=str(key),
                         tls_ca=str(certificates.ca_certificate_path(theirs)))
    secrets.init(config)
    assert not certificates.leaf_paths(config, certificates.tracking_leaf("acme"))[0].exists()  # none of ours
    assert certificates.tracking_files(config, "globex") == (crt, key)
    assert client_verify(config) == str(certificates.ca_certificate_path(theirs))
    without_ca = make_config(tmp_path, tls_certificate=str(crt), tls_key=str(key))
    assert client_verify(without_ca) is True  # the system's store


def test_a_missing_file_names_the_key_or_the_file_and_the_fix(tmp_path):
    config = make_config(tmp_path, tls_certificate="nowhere.crt", tls_key="nowhere.key")
    with pytest.raises(ConfigError, match=r"stack\.yaml: tracking\.tls_certificate: .*nowhere\.crt: no such file"):
        certificates.tracking_files(config, "acme")
    ours = make_config(tmp_path)
    with pytest.raises(ConfigError, match=r"\.env\.tracking-acme\.crt: not found \(tracking\.tls is true\); make it "
                                          r"with `flops-mlops --config .*stack\.yaml secrets init`"):
        certificates.tracking_files(ours, "acme")


def test_provisioned_servers_certificates_also_hold_the_names_their_host_is_reached_at(tmp_path):
    """`provision` (pyinfra) extends each tenant's certificate with the tracking host's inventory name and address;
    a second run with the same names keeps it, and a certificate of the user's own is left alone."""
    config = make_config(tmp_path, host="0.0.0.0")
    secrets.init(config)
    assert certificates.make_tracking_certificates_for(config, ["mlflow-1", "10.0.0.9", "0.0.0.0"]) == ["acme",
                                                                                                       "globex"]
    crt, key = certificates.tracking_files(config, "acme")
    assert certificates.certificate_names(crt) == {"DNS:mlflow.example", "DNS:mlflow-1", "IP:10.0.0.9",
                                                   "DNS:localhost", "IP:127.0.0.1"}
    assert certificates.signed_by_ca(config, crt) and stat.S_IMODE(key.stat().st_mode) == 0o600
    assert certificates.make_tracking_certificates_for(config, ["10.0.0.9"]) == []
    own = make_config(tmp_path, tls_certificate=str(crt), tls_key=str(key))
    assert certificates.make_tracking_certificates_for(own, ["mlflow-2"]) == []
    assert "DNS:mlflow-2" not in certificates.certificate_names(crt)


@pytest.mark.parametrize("name", ["native.yaml", "compose.yaml"])
def test_the_native_and_compose_configurations_turn_every_hop_to_tls_on_and_status_warns_for_each_one_off(name):
    from pathlib import Path

    native = loading.load(Path(__file__).resolve().parents[2] / "configs" / name)
    assert (native.tracking.tls, native.artifact_store.tls, native.backend_store.tls) == (True, True, True)
    assert warnings(native) == []
    for section in ("tracking", "artifact_store", "backend_store"):
        part = getattr(native, section).model_copy(update={"tls": False})
        off = native.model_copy(update={section: part})
        assert [w.split(" ")[0] for w in warnings(off)] == [f"{section}.tls"], section
