"""What the pyinfra deploys write on a host, pinned by golden files (tests/unit/golden/pyinfra/).

Rendered with pyinfra's own template loader and the data the deploys pass, for a host with systemd and FHS
paths: a tracking server's unit alone on its host and beside the stores (ordered after them), MariaDB's
drop-in, a tracking server's environment and the tenants' SQL. After an intended change, FLOPS_UPDATE_GOLDEN=1
rewrites them (and fails); review the diff.
"""

from __future__ import annotations

import shlex
import sys
from pathlib import Path

import pytest
import yaml
from conftest import compare_with_golden

ROOT = Path(__file__).resolve().parent.parent.parent
PYINFRA_DIR = ROOT / "deploy" / "pyinfra"
GOLDEN = Path(__file__).parent / "golden" / "pyinfra"
sys.path.insert(0, str(PYINFRA_DIR))

from flops_mlops.compose import render as compose  # noqa: E402
from flops_mlops.configuration import loading as config_module  # noqa: E402
from flops_mlops.configuration.schema import ConfigError  # noqa: E402
from flops_mlops.configuration.secrets import Secrets  # noqa: E402
from pyinfra.api.util import get_template  # noqa: E402
from tasks import artifact_store, backend_store, docker_host, services, tracking_server  # noqa: E402
from tasks.settings import TEMPLATES, TRIM, HostSettings  # noqa: E402

FAKE_SECRETS = {
    "FLOPS_MYSQL_ADMIN_PASSWORD": "admin-pass",
    "FLOPS_TENANT_ACME_DB_PASSWORD": "acme-db",
    "FLOPS_TENANT_ACME_FTP_PASSWORD": "acme-ftp",
    "FLOPS_TENANT_GLOBEX_DB_PASSWORD": "it's\\odd",  # a quote and a backslash reach SQL as literals
    "FLOPS_TENANT_GLOBEX_FTP_PASSWORD": "globex-ftp",
    "FLOPS_TENANT_ACME_ADMIN_PASSWORD": "acme-admin-pass",
    "FLOPS_TENANT_ACME_SECRET_KEY": "acme-secret-key",
    "FLOPS_TENANT_ACME_FL_PASSWORD": "acme-fl-pass",
    "FLOPS_TENANT_GLOBEX_ADMIN_PASSWORD": "globex-admin-pass",
    "FLOPS_TENANT_GLOBEX_SECRET_KEY": "globex-secret-key",
    "FLOPS_TENANT_GLOBEX_FL_PASSWORD": "globex-fl-pass",
}


def host_settings(tmp_path: Path) -> HostSettings:
    data = {
        "name": "golden", "state_dir": "/unused", "secrets_file": str(tmp_path / "secrets.env"),
        "backend_store": {"kind": "mysql", "managed": False, "host": "10.0.0.11", "port": 3306},
        "artifact_store": {"kind": "vsftpd", "managed": False, "host": "10.0.0.12", "port": 2121,
                           "passive_ports": [30000, 30009], "pasv_address": "10.0.0.12"},
        "tracking": {"host": "0.0.0.0", "base_port": 5000, "public_host": "mlflow.example.org", "tls": True},
        "tenants": [{"id": "acme"}, {"id": "globex"}],
    }
    path = tmp_path / "stack.yaml"
    path.write_text(yaml.safe_dump(data))
    config = config_module.load(path)
    return HostSettings(config=config, secrets=Secrets(config.secrets_file, dict(FAKE_SECRETS)), mode="native",
                        root="", install_packages=False, service_user="flops-mlops",
                        venv="/opt/flops-mlops/venv", manage_venv=True, tracking_packages=())


def render(template: Path, data: dict) -> str:
    return get_template(str(template), jinja_env_kwargs=dict(TRIM)).render(**data)


def rendered_files(tmp_path: Path) -> dict[str, str]:
    s = host_settings(tmp_path)
    acme = s.config.tenants[0]
    all_roles = tracking_server.local_store_units(s, ["backend_store", "artifact_store", "tracking_server"])
    return {
        "host-tracking-acme.service": render(services.UNIT_TEMPLATE,
                                             services.unit_data(tracking_server.service(s, acme))),
        "all-roles-tracking-acme.service": render(services.UNIT_TEMPLATE,
                                                  services.unit_data(tracking_server.service(s, acme, None, all_roles))),
        "host-vsftpd.service": render(services.UNIT_TEMPLATE, services.unit_data(artifact_store.service(s))),
        "host-my.cnf": render(TEMPLATES / "my.cnf.j2", backend_store.cnf_data(s)),
        "tracking-acme.env": render(TEMPLATES / "tracking-server.env.j2", {
            "stack": s.config.name, "tenant": "acme", "env": tracking_server.environment(s, s.config, acme)}),
        "tenants.sql": render(TEMPLATES / "tenants.sql.j2", backend_store.tenants_data(s)),
    }


def test_rendered_files_match_golden_files(tmp_path):
    files = rendered_files(tmp_path)
    compare_with_golden(GOLDEN, {name: text.encode("utf-8") for name, text in files.items()})


def test_store_passwords_stay_out_of_units(tmp_path):
    s = host_settings(tmp_path)
    visible = [render(services.UNIT_TEMPLATE, services.unit_data(tracking_server.service(s, tenant)))
               for tenant in s.config.tenants]
    visible.append(render(services.UNIT_TEMPLATE, services.unit_data(artifact_store.service(s))))
    for value in FAKE_SECRETS.values():
        assert not any(value in text for text in visible), value


def test_sql_literals_escape_quotes_and_backslashes(tmp_path):
    sql = render(TEMPLATES / "tenants.sql.j2", backend_store.tenants_data(host_settings(tmp_path)))
    assert "IDENTIFIED BY 'it''s\\\\odd'" in sql
    assert "`mlflow_globex`.* TO 'mlflow_globex'@'%'" in sql


def test_tracking_environment_holds_store_uris_with_url_safe_passwords(tmp_path):
    s = host_settings(tmp_path)
    env = tracking_server.environment(s, s.config, s.config.tenants[0])
    assert env["MLFLOW_BACKEND_STORE_URI"] == ("mysql+pymysql://mlflow_acme:acme-db@10.0.0.11:3306/mlflow_acme?charset="
                                               "utf8mb4&ssl_ca=/etc/flops-mlops/golden/mysql-ca.crt"
                                               "&ssl_check_hostname=true")  # the CA's copy on the host
    assert env["MLFLOW_ARTIFACTS_DESTINATION"] == "ftp://flops_acme:acme-ftp@10.0.0.12:2121/artifacts"


def test_tracking_environment_holds_the_login_settings_and_nothing_from_this_machine(tmp_path, monkeypatch):
    monkeypatch.setenv("FLOPS_SOMETHING_LOCAL", "x")
    monkeypatch.setenv("PATH", "/somewhere/local")
    s = host_settings(tmp_path)
    env = tracking_server.environment(s, s.config, s.config.tenants[0])
    assert env["MLFLOW_AUTH_ADMIN_PASSWORD"] == "acme-admin-pass"
    assert env["MLFLOW_FLASK_SERVER_SECRET_KEY"] == "acme-secret-key"
    assert env["FLOPS_AUTH_DB"] == "/var/lib/flops-mlops/golden/tracking/acme/auth/auth.db"
    assert env["HOME"] == "/var/lib/flops-mlops/golden/tracking/acme"
    assert "FLOPS_SOMETHING_LOCAL" not in env and "PATH" not in env
    svc = tracking_server.service(s, s.config.tenants[0])
    # The venv's Python runs our single-process runner (MLflow's app with our login), as flops-mlops up does.
    assert svc.user == "flops-mlops-acme" and svc.argv[:3] == ["/opt/flops-mlops/venv/bin/python", "-m",
                                                          "flops_mlops.tracking.runner"]


def test_compose_env_carries_every_secret_the_rendered_compose_reads(tmp_path):
    data = {"name": "golden", "state_dir": "/unused", "secrets_file": str(tmp_path / "secrets.env"),
            "backend_store": {"kind": "mysql", "managed": False, "port": 3306},
            "artifact_store": {"kind": "vsftpd", "managed": False, "port": 2121},
            "tenants": [{"id": "default"}, {"id": "acme"}]}
    (tmp_path / "stack.yaml").write_text(yaml.safe_dump(data))
    config = config_module.load(tmp_path / "stack.yaml")
    expected = ["FLOPS_MYSQL_ADMIN_PASSWORD", "FLOPS_TENANT_DEFAULT_DB_PASSWORD", "FLOPS_TENANT_ACME_DB_PASSWORD",
                "FLOPS_TENANT_DEFAULT_FTP_PASSWORD", "FLOPS_TENANT_ACME_FTP_PASSWORD",
                "FLOPS_TENANT_DEFAULT_ADMIN_PASSWORD", "FLOPS_TENANT_DEFAULT_SECRET_KEY",
                "FLOPS_TENANT_DEFAULT_FL_PASSWORD", "FLOPS_TENANT_DEFAULT_SERVE_PASSWORD",
                "FLOPS_TENANT_ACME_ADMIN_PASSWORD", "FLOPS_TENANT_ACME_SECRET_KEY"]
    values = {key: f"value-of-{key.lower()}" for key in expected}
    s = HostSettings(config=config, secrets=Secrets(config.secrets_file, {**values, "FLOPS_OTHER": "x"}),
                     mode="docker", root="/srv/sandbox", install_packages=False,
                     service_user="flops-mlops", venv="/opt/flops-mlops/venv", manage_venv=False,
                     tracking_packages=())
    rendered = compose.render(config, Path("/srv/compose"), checkout=Path("/srv/compose"))
    assert sorted(compose.secret_keys(rendered)) == sorted(expected)
    text = render(TEMPLATES / "compose.env.j2", docker_host.env_data(s, rendered))
    for key, value in values.items():
        assert f"\n{key}={value}\n" in text, key
    assert "FLOPS_OTHER" not in text
    # The images build on the host from the copies beside compose.yaml.
    assert "      context: .\n" in rendered[0].text
    del s.secrets.values["FLOPS_TENANT_ACME_FTP_PASSWORD"]
    with pytest.raises(ConfigError, match="compose.yaml needs FLOPS_TENANT_ACME_FTP_PASSWORD"):
        docker_host.env_data(s, rendered)


def test_ftps_hosts_get_the_store_certificate_and_the_servers_the_ca_file(tmp_path):
    """artifact_store.tls: vsftpd is rendered for TLS only, with its certificate and key under <etc>/vsftpd; the
    tracking servers reach the store by ftps:// and read the CA from a file on their host (one line in the
    environment file, not the PEM text)."""
    import dataclasses

    from flops_mlops.configuration import certificates
    from tasks.settings import STACK_TEMPLATES

    s = host_settings(tmp_path)
    store = s.config.artifact_store.model_copy(update={"tls": True})
    s = dataclasses.replace(s, config=s.config.model_copy(update={"artifact_store": store}).located(s.config.source))
    certificates.make_certificate(s.config)
    assert "IP:10.0.0.12" in certificates.certificate_names(certificates.certificate_path(s.config))
    env = tracking_server.environment(s, s.config, s.config.tenants[0])
    assert env["MLFLOW_ARTIFACTS_DESTINATION"] == "ftps://flops_acme:acme-ftp@10.0.0.12:2121/artifacts"
    assert env["FLOPS_FTP_CA_FILE"] == "/etc/flops-mlops/golden/ftp-ca.crt" and "FLOPS_FTP_CA_PEM" not in env
    conf = render(STACK_TEMPLATES / "vsftpd.conf.j2", {
        "listen_address": "0.0.0.0", "listen_port": 2121, "os_user": "ftp", "ftp_root": "/srv", "pam_service": "p",
        "pasv_min_port": 1, "pasv_max_port": 2, "pasv_address": "10.0.0.12", "empty_dir": "/e", "log_file": "/l",
        **artifact_store.tls_settings(s)})
    for line in ("ssl_enable=YES", "force_local_logins_ssl=YES", "force_local_data_ssl=YES",
                 "rsa_cert_file=/etc/flops-mlops/golden/vsftpd/ftp.crt",
                 "rsa_private_key_file=/etc/flops-mlops/golden/vsftpd/ftp.key"):
        assert line in conf.splitlines(), line


def test_tracking_server_serves_https_with_its_files_and_the_deploy_waits_for_it_verified(tmp_path):
    """tracking.tls: the unit passes the paths of the certificate and key put on the host (never a key), and the
    deploy's readiness probe verifies the server against the CA on the host; no client of ours goes "insecure"."""
    s = host_settings(tmp_path)
    acme = s.config.tenant("acme")
    svc = tracking_server.service(s, acme)
    argv = svc.argv
    assert argv[argv.index("--ssl-certfile") + 1] == "/etc/flops-mlops/golden/tracking/acme.https.crt"
    assert argv[argv.index("--ssl-keyfile") + 1] == "/etc/flops-mlops/golden/tracking/acme.https.key"
    python, flag, code = shlex.split(svc.ready)[:3]
    assert (python, flag) == ("/opt/flops-mlops/venv/bin/python", "-c")
    assert "urlopen('https://127.0.0.1:5000/health'" in code
    assert "create_default_context(cafile='/etc/flops-mlops/golden/tracking-ca.crt')" in code
    assert "INSECURE" not in code and "CERT_NONE" not in code and "check_hostname" not in code
    plain = s.config.model_copy(update={"tracking": s.config.tracking.model_copy(update={"tls": False})})
    off = tracking_server.service(s, acme, plain)
    assert "--ssl-certfile" not in off.argv and "urlopen('http://127.0.0.1:5000/health'" in shlex.split(off.ready)[2]
