"""The deployment's CA and the leaf certificates it signs (configuration/certificates.py), made by `secrets init`
with openssl; checked with Python's ssl module, which is what pymysql verifies with."""

from __future__ import annotations

import ssl
import stat
import subprocess

import pytest
import yaml
from flops_mlops.configuration import certificates, loading, secrets
from flops_mlops.configuration.schema import ConfigError
from flops_mlops.native.status import warnings
from flops_mlops.stores import mysql


def make_config(tmp_path, **backend):
    data = {"name": "t", "state_dir": "state", "secrets_file": ".env",
            "backend_store": {"kind": "mysql", "port": 3399, **backend}, "tenants": [{"id": "acme"}]}
    path = tmp_path / "stack.yaml"
    path.write_text(yaml.safe_dump(data))
    return loading.load(path)


def test_secrets_init_makes_a_ca_and_the_mysql_certificate_privately_and_keeps_them(tmp_path):
    config = make_config(tmp_path)
    secrets.init(config)
    files = certificates.mysql_files(config)
    assert [p.name for p in files] == [".env.ca.crt", ".env.mysql-tls.crt", ".env.mysql-tls.key"]
    for path in (*files[1:], certificates.ca_key_path(config)):
        assert stat.S_IMODE(path.stat().st_mode) == 0o600, path
    # The CA's certificate is public: containers of other uids read it where compose bind-mounts it.
    assert stat.S_IMODE(files[0].stat().st_mode) == 0o644
    ca, crt, _ = files
    # compose's service name too: the tracking servers dial backend-store there, and one certificate serves all
    assert certificates.certificate_names(crt) == {"DNS:backend-store", "DNS:localhost", "IP:127.0.0.1"}
    context = ssl.create_default_context(cafile=str(ca))  # the chain verifies: a CA, and a leaf it signed
    context.load_verify_locations(cafile=str(ca))
    before = crt.read_bytes()
    secrets.init(config, force=True)  # new passwords; the CA and certificate stay (clients trust them)
    assert crt.read_bytes() == before and not certificates.make_mysql_certificate(config)


def test_a_leaf_is_made_again_when_it_lacks_a_name(tmp_path):
    config = make_config(tmp_path, host="db.example")
    assert certificates.make_mysql_certificate(config)
    crt = certificates.leaf_paths(config, certificates.MYSQL_LEAF)[0]
    assert certificates.certificate_names(crt) == {"DNS:db.example", "DNS:backend-store", "DNS:localhost",
                                                   "IP:127.0.0.1"}
    assert certificates.make_mysql_certificate(config, extra_hosts=["10.1.2.3"])
    assert "IP:10.1.2.3" in certificates.certificate_names(crt)
    assert not certificates.make_mysql_certificate(config)  # covers every name still


def test_tls_is_on_by_default_and_the_uri_verifies(tmp_path):
    config = make_config(tmp_path)
    tenant = config.tenant("acme")
    uri = mysql.tenant_uri(config, tenant, "pw")
    assert uri.endswith(f"?charset=utf8mb4&ssl_ca={certificates.ca_certificate_path(config)}&ssl_check_hostname=true")
    assert [w for w in warnings(config) if w.startswith("backend_store")] == []


def test_tls_off_is_one_key_and_status_warns(tmp_path):
    config = make_config(tmp_path, tls=False)
    secrets.init(config)
    assert not certificates.ca_certificate_path(config).exists()
    assert mysql.tenant_uri(config, config.tenant("acme"), "pw").endswith("?charset=utf8mb4")
    assert ["backend_store.tls is false" in w for w in warnings(config) if w.startswith("backend_store")] == [True]


def test_a_missing_certificate_names_the_file_and_the_fix(tmp_path):
    config = make_config(tmp_path)
    with pytest.raises(ConfigError, match=r"\.env\.ca\.crt: not found \(backend_store\.tls is true\); make it with "
                                          r"`flops-mlops --config .*stack\.yaml secrets init`"):
        certificates.mysql_files(config)


def test_a_wrong_tls_value_is_refused_naming_the_key(tmp_path):
    with pytest.raises(ConfigError, match="backend_store.tls"):
        make_config(tmp_path, tls="sometimes")


def ftps_config(tmp_path, host="127.0.0.1"):
    data = {"name": "t", "state_dir": "state", "secrets_file": ".env", "tenants": [{"id": "acme"}],
            "backend_store": {"kind": "mysql", "port": 3399, "tls": False},
            "artifact_store": {"kind": "vsftpd", "host": host, "tls": True}}
    path = tmp_path / "stack.yaml"
    path.write_text(yaml.safe_dump(data))
    return loading.load(path)


def test_the_ftps_certificate_is_signed_by_the_ca_for_every_name_a_client_dials(tmp_path):
    config = ftps_config(tmp_path, host="ftp.example")
    secrets.init(config)
    ca, crt, key = certificates.ftp_files(config)
    assert stat.S_IMODE(crt.stat().st_mode) == stat.S_IMODE(key.stat().st_mode) == 0o600
    assert certificates.certificate_names(crt) == {"DNS:ftp.example", "DNS:artifact-store", "DNS:localhost",
                                                   "IP:127.0.0.1"}
    assert certificates.signed_by_ca(config, crt)
    assert certificates.ca_pem(config) == ca.read_text()  # what the tracking servers verify against
    before = crt.read_bytes()
    secrets.init(config)
    assert crt.read_bytes() == before  # kept


def test_an_older_self_signed_ftps_certificate_is_made_again_signed_by_the_ca(tmp_path):
    config = ftps_config(tmp_path)
    certificates.make_ca(config)
    crt, key = certificates.certificate_path(config), certificates.key_path(config)
    names = ",".join(sorted(certificates.ftp_hosts(config)))
    subprocess.run(["openssl", "req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes",
                    "-keyout", str(key), "-out", str(crt), "-days", "2", "-subj", "/CN=127.0.0.1", "-addext",
                    "subjectAltName=" + ",".join(
                        f"IP:{n}" if n[0].isdigit() else f"DNS:{n}" for n in names.split(","))],
                   check=True, capture_output=True)
    assert not certificates.signed_by_ca(config, crt)
    assert certificates.make_certificate(config)
    assert certificates.signed_by_ca(config, crt)


def test_a_missing_ftps_file_names_the_file_and_the_key(tmp_path):
    config = ftps_config(tmp_path)
    with pytest.raises(ConfigError, match=r"\.env\.ca\.crt: not found \(artifact_store\.tls is true\); make it "
                                          r"with `flops-mlops --config .*secrets init`, or set artifact_store\.tls: "
                                          "false"):
        certificates.ftp_files(config)


def test_hosts_making_the_same_certificate_at_once_all_get_a_whole_matching_pair(tmp_path):
    """pyinfra prepares each host's deploy in its own thread, and each asks for the FTPS certificate: makers take
    turns, and no one sees a missing or half-made pair (as a CI run did: FileNotFoundError on the key)."""
    from concurrent.futures import ThreadPoolExecutor

    config = ftps_config(tmp_path)
    crt, key = certificates.leaf_paths(config, certificates.FTP_LEAF)

    def make(round_: int) -> tuple[bool, bool]:
        made = certificates.make_certificate(config, force=round_ % 2 == 0, extra_hosts=["10.0.0.7"])
        return made, crt.is_file() and key.is_file()

    with ThreadPoolExecutor(max_workers=8) as pool:
        results = list(pool.map(make, range(16)))
    assert all(present for _, present in results)
    public = [subprocess.run(argv, capture_output=True, check=True).stdout for argv in (
        ["openssl", "x509", "-in", str(crt), "-noout", "-pubkey"], ["openssl", "pkey", "-in", str(key), "-pubout"])]
    assert public[0] == public[1]  # the key is the certificate's
    assert certificates.signed_by_ca(config, crt)
    assert stat.S_IMODE(crt.stat().st_mode) == stat.S_IMODE(key.stat().st_mode) == 0o600
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith(".flops-")] == []


GREENLETS = """
from gevent import monkey
monkey.patch_all()
import sys
import gevent
from flops_mlops.configuration import certificates, loading
config = loading.load(sys.argv[1])
jobs = [gevent.spawn(certificates.make_certificate, config, force=True, extra_hosts=["10.0.0.7"]) for _ in range(4)]
gevent.joinall(jobs, raise_error=True)
print("made", sum(job.value for job in jobs))
"""


def test_greenlets_making_the_same_certificate_take_turns_without_a_deadlock(tmp_path):
    """pyinfra runs its hosts as gevent greenlets in one thread (pyinfra_cli patches everything): a greenlet waiting
    for the certificate lock must let the one holding it finish (a blocking flock hung a real three-host apply)."""
    import sys

    ftps_config(tmp_path)
    done = subprocess.run([sys.executable, "-c", GREENLETS, str(tmp_path / "stack.yaml")], capture_output=True,
                          text=True, timeout=120)
    assert done.returncode == 0 and done.stdout.strip() == "made 4", done.stderr[-2000:]
