"""The tracking-server image's entrypoint: store URIs from the environment, bad settings named and refused."""

from __future__ import annotations

import pytest

from flops_mlops import container
from flops_mlops.config import ConfigError
from flops_mlops.tracking_server import server_argv, server_env

BASE = {"FLOPS_DB_PASSWORD": "db-secret", "FLOPS_FTP_PASSWORD": "ftp/secret", "FLOPS_PUBLIC_PORT": "15500"}


def test_uris_come_from_the_environment_and_stay_out_of_the_command_line():
    config, tenant, secrets = container.stack_from_env(BASE)
    env = server_env(config, tenant, secrets)
    argv = server_argv(config, tenant)
    assert env["MLFLOW_BACKEND_STORE_URI"] == (
        "mysql+pymysql://mlflow_default:db-secret@backend-store:3306/mlflow_default?charset=utf8mb4")
    assert env["MLFLOW_ARTIFACTS_DESTINATION"] == "ftp://flops_default:ftp%2Fsecret@artifact-store:21/artifacts"
    assert not any(key.startswith("FLOPS_") for key in env)
    assert not any("secret" in arg for arg in argv)
    allowed = argv[argv.index("--allowed-hosts") + 1].split(",")
    assert {"127.0.0.1:15500", "localhost:15500", "tracking-server:5000"} <= set(allowed)
    assert argv[argv.index("--port") + 1] == "5000" and "--serve-artifacts" in argv


@pytest.mark.parametrize("override, message", [
    ({"FLOPS_DB_PASSWORD": ""}, "FLOPS_DB_PASSWORD: required"),
    ({"FLOPS_TENANT": "Bad-Id"}, "FLOPS_TENANT: 'Bad-Id' is not a valid tenant id"),
    ({"FLOPS_DB_HOST": "db;drop"}, "FLOPS_DB_HOST: expected a host name"),
    ({"FLOPS_PUBLIC_PORT": "70000"}, "FLOPS_PUBLIC_PORT: expected a TCP port"),
    ({"FLOPS_ALLOWED_HOSTS": "ok.example,bad host"}, "FLOPS_ALLOWED_HOSTS: 'bad host'"),
    ({"FLOPS_WORKERS": "0"}, "FLOPS_WORKERS: expected a positive integer"),
])
def test_bad_settings_are_refused_with_the_variable_named(override, message):
    with pytest.raises(ConfigError, match=message):
        container.stack_from_env({**BASE, **override})


def test_entrypoint_exits_2_on_bad_settings(monkeypatch, capsys):
    monkeypatch.delenv("FLOPS_DB_PASSWORD", raising=False)
    monkeypatch.setenv("FLOPS_FTP_PASSWORD", "x")
    assert container.main(["tracking-server"]) == 2
    assert "FLOPS_DB_PASSWORD: required" in capsys.readouterr().err
