"""The tracking-server image's entrypoint: store URIs from the environment, bad settings named and refused."""

from __future__ import annotations

import pytest
from flops_mlops.configuration.schema import ConfigError
from flops_mlops.tracking import container
from flops_mlops.tracking.server import server_argv, server_env

BASE = {"FLOPS_DB_PASSWORD": "db-secret", "FLOPS_FTP_PASSWORD": "ftp/secret", "FLOPS_PUBLIC_PORT": "15500",
        "FLOPS_ADMIN_PASSWORD": "admin-secret-123", "FLOPS_SECRET_KEY": "key-secret-123"}


def test_uris_come_from_the_environment_and_stay_out_of_the_command_line():
    config, tenant, secrets = container.stack_from_env(BASE)
    env = server_env(config, tenant, secrets, container.auth_db(BASE))
    argv = server_argv(config, tenant)
    assert env["MLFLOW_BACKEND_STORE_URI"] == (
        "mysql+pymysql://mlflow_default:db-secret@backend-store:3306/mlflow_default?charset=utf8mb4")
    assert env["MLFLOW_ARTIFACTS_DESTINATION"] == "ftp://flops_default:ftp%2Fsecret@artifact-store:21/artifacts"
    assert env["MLFLOW_AUTH_ADMIN_PASSWORD"] == "admin-secret-123"
    assert env["MLFLOW_FLASK_SERVER_SECRET_KEY"] == "key-secret-123"
    # The only settings of ours MLflow's worker gets are where its auth database is, its tenant (for the login
    # audit) and our FTP repository's timeouts and quota (defaults, as artifact_store's); no password under our names.
    assert {key: value for key, value in env.items() if key.startswith("FLOPS_")} == {
        "FLOPS_AUTH_DB": "/srv/mlflow/auth/auth.db", "FLOPS_TENANT": "default", "FLOPS_FTP_CONNECT_TIMEOUT": "10",
        "FLOPS_FTP_DATA_TIMEOUT": "60", "FLOPS_ARTIFACT_QUOTA": "10000000000"}
    # The container runs the same single-process runner as the native stack.
    assert argv[1:3] == ["-m", "flops_mlops.tracking.runner"]
    assert not any("secret" in arg for arg in argv)
    allowed = argv[argv.index("--allowed-hosts") + 1].split(",")
    assert {"127.0.0.1:15500", "localhost:15500", "tracking-server:5000"} <= set(allowed)
    assert argv[argv.index("--port") + 1] == "5000" and argv[argv.index("--host") + 1] == "0.0.0.0"


def test_ftp_timeouts_reach_the_server_from_the_container_environment():
    config, tenant, secrets = container.stack_from_env(
        {**BASE, "FLOPS_FTP_CONNECT_TIMEOUT": "7", "FLOPS_FTP_DATA_TIMEOUT": "90"})
    env = server_env(config, tenant, secrets, container.auth_db(BASE))
    assert (env["FLOPS_FTP_CONNECT_TIMEOUT"], env["FLOPS_FTP_DATA_TIMEOUT"]) == ("7", "90")


@pytest.mark.parametrize("override, message", [
    ({"FLOPS_DB_PASSWORD": ""}, "FLOPS_DB_PASSWORD: required"),
    ({"FLOPS_TENANT": "Bad-Id"}, "FLOPS_TENANT: 'Bad-Id' is not a valid tenant id"),
    ({"FLOPS_DB_HOST": "db;drop"}, "FLOPS_DB_HOST: expected a host name"),
    ({"FLOPS_PUBLIC_PORT": "70000"}, "FLOPS_PUBLIC_PORT: expected a TCP port"),
    ({"FLOPS_ALLOWED_HOSTS": "ok.example,bad host"}, "FLOPS_ALLOWED_HOSTS: 'bad host'"),
    ({"FLOPS_WORKERS": "0"}, "FLOPS_WORKERS: expected a positive integer"),
    ({"FLOPS_FTP_CONNECT_TIMEOUT": "0"}, "FLOPS_FTP_CONNECT_TIMEOUT: expected a whole number of seconds, at least 1, "
                                         "got '0'"),
    ({"FLOPS_FTP_DATA_TIMEOUT": "1m"}, "FLOPS_FTP_DATA_TIMEOUT: expected a whole number of seconds, at least 1, "
                                       "got '1m'"),
    ({"FLOPS_ADMIN_PASSWORD": ""}, "FLOPS_ADMIN_PASSWORD: required"),
    ({"FLOPS_SECRET_KEY": "placeholder-run-flops-mlops-secrets-init"}, "FLOPS_SECRET_KEY still holds"),
])
def test_bad_settings_are_refused_with_the_variable_named(override, message):
    with pytest.raises(ConfigError, match=message):
        container.stack_from_env({**BASE, **override})


@pytest.mark.parametrize("value, message", [
    ("demo:short", "item for 'demo' is not project:password"),
    ("bad-name:abcdefghijklmnop", "item for 'bad-name'"),
    ("demo", "item for 'demo'"),
    ("demo:has space in it", "item for 'demo'"),
])
def test_fl_users_are_checked_without_showing_the_password(value, message):
    with pytest.raises(ConfigError, match=message) as caught:
        container.fl_users({"FLOPS_FL_USERS": value})
    assert value.partition(":")[2] not in str(caught.value) or not value.partition(":")[2]


def test_fl_users_and_auth_db_accept_good_values():
    assert container.fl_users({"FLOPS_FL_USERS": "demo:abcdefghijklmnop,mnist:ABC-def_123456"}).count(":") == 2
    assert container.fl_users({}) == ""
    with pytest.raises(ConfigError, match="FLOPS_AUTH_DB: expected an absolute path"):
        container.auth_db({"FLOPS_AUTH_DB": "auth.db"})


def test_entrypoint_exits_2_on_bad_settings(monkeypatch, capsys):
    monkeypatch.delenv("FLOPS_DB_PASSWORD", raising=False)
    monkeypatch.setenv("FLOPS_FTP_PASSWORD", "x")
    assert container.main(["tracking-server"]) == 2
    assert "FLOPS_DB_PASSWORD: required" in capsys.readouterr().err


def test_ftps_and_mysql_tls_verify_their_servers_against_the_mounted_ca(tmp_path):
    ca = tmp_path / "ca.crt"
    ca.write_text("-----BEGIN CERTIFICATE-----\nMIIB\n-----END CERTIFICATE-----\n", encoding="ascii")
    env = {**BASE, "FLOPS_FTP_TLS": "true", "FLOPS_FTP_CA_FILE": str(ca), "FLOPS_DB_TLS": "true",
           "FLOPS_DB_CA_FILE": str(ca)}
    config, tenant, secrets = container.stack_from_env(env)
    server = server_env(config, tenant, secrets, container.auth_db(env), mysql_ca=container.db_ca_file(env),
                        ftp_ca=container.ftp_ca_file(env))
    assert server["MLFLOW_ARTIFACTS_DESTINATION"].startswith("ftps://flops_default:ftp%2Fsecret@artifact-store:21/")
    assert server["FLOPS_FTP_CA_PEM"] == ca.read_text()
    assert server["MLFLOW_BACKEND_STORE_URI"].endswith(f"?charset=utf8mb4&ssl_ca={ca}&ssl_check_hostname=true")
    # plain FTP and MySQL unless FLOPS_FTP_TLS and FLOPS_DB_TLS are true
    assert container.ftp_ca_file(BASE) is None and container.db_ca_file(BASE) is None


@pytest.mark.parametrize("override, message", [
    ({"FLOPS_FTP_TLS": "yes"}, "environment: FLOPS_FTP_TLS: expected true or false, got 'yes'"),
    ({"FLOPS_FTP_TLS": "true", "FLOPS_FTP_CA_FILE": "/nonexistent/ca.crt"},
     "environment: FLOPS_FTP_CA_FILE: cannot read the CA certificate '/nonexistent/ca.crt'"),
])
def test_bad_ftps_settings_are_refused_with_the_variable_named(override, message):
    with pytest.raises(ConfigError, match=message):
        container.stack_from_env({**BASE, **override})
        container.ftp_ca_file({**BASE, **override})


def test_https_serves_the_mounted_certificate_and_key_by_path(tmp_path):
    crt, key, ca = tmp_path / "tracking.crt", tmp_path / "tracking.key", tmp_path / "ca.crt"
    for path, kind in ((crt, "CERTIFICATE"), (key, "PRIVATE KEY"), (ca, "CERTIFICATE")):
        path.write_text(f"-----BEGIN {kind}-----\nMIIB\n-----END {kind}-----\n", encoding="ascii")
    env = {**BASE, "FLOPS_TLS": "true", "FLOPS_TLS_CERTIFICATE_FILE": str(crt), "FLOPS_TLS_KEY_FILE": str(key),
           "FLOPS_TLS_CA_FILE": str(ca)}
    config, tenant, _ = container.stack_from_env(env)
    argv = server_argv(config, tenant, container.tls_files(env))
    assert argv[argv.index("--ssl-certfile") + 1] == str(crt) and argv[argv.index("--ssl-keyfile") + 1] == str(key)
    assert "MIIB" not in " ".join(argv)  # paths only, never the key
    assert container.tls_ca_file(env) == ca
    assert container.tls_files(BASE) is None and container.tls_ca_file(BASE) is None  # plain HTTP by default


@pytest.mark.parametrize("override, message", [
    ({"FLOPS_TLS": "on"}, "environment: FLOPS_TLS: expected true or false, got 'on'"),
    ({"FLOPS_TLS": "true", "FLOPS_TLS_CERTIFICATE_FILE": "/nonexistent/tracking.crt"},
     "environment: FLOPS_TLS_CERTIFICATE_FILE: cannot read the certificate '/nonexistent/tracking.crt' "
     r"\(FLOPS_TLS is true\)"),
    ({"FLOPS_DB_TLS": "true", "FLOPS_DB_CA_FILE": "/nonexistent/ca.crt"},
     "environment: FLOPS_DB_CA_FILE: cannot read the CA certificate '/nonexistent/ca.crt'"),
])
def test_bad_tls_settings_are_refused_with_the_variable_named(override, message):
    env = {**BASE, **override}
    with pytest.raises(ConfigError, match=message):
        container.stack_from_env(env)
        container.db_ca_file(env)
        container.tls_files(env)
