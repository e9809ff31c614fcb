"""Our FTP artifact repository is the one MLflow uses for ftp:// and ftps:// (its entry point replaces MLflow's
built-in FTPArtifactRepository), with the settings from the environment the tracking server gets. Its behaviour
against real FTP servers: tests/integration/test_ftp_repository.py."""

from __future__ import annotations

import subprocess
import sys

import pytest
from flops_mlops.configuration.secrets import Secrets, ftp_password_key
from flops_mlops.configuration.stack import StackConfig
from flops_mlops.configuration.tracking import Tenant
from flops_mlops.stores import ftp_client
from flops_mlops.tracking.server import artifacts_destination

# A fresh interpreter that imports our module before MLflow (the order that used to break the registration).
PROBE = """
import flops_mlops.stores.ftp_repository
from mlflow.store.artifact.artifact_repository_registry import get_artifact_repository, _artifact_repository_registry
from mlflow.store.artifact.ftp_artifact_repo import FTPArtifactRepository
for uri in ("ftp://u:pw@127.0.0.1:2121/artifacts", "ftps://u:pw@store.example/artifacts"):
    repo = get_artifact_repository(uri)
    print(uri.split(":")[0], type(repo).__module__, type(repo).__name__, repo.connect_timeout, repo.data_timeout,
          isinstance(repo, FTPArtifactRepository))
"""


def test_mlflows_registry_gives_our_repository_for_ftp_and_ftps():
    env = {"PATH": "/usr/bin:/bin", "FLOPS_FTP_CONNECT_TIMEOUT": "3", "FLOPS_FTP_DATA_TIMEOUT": "45",
           "MLFLOW_DISABLE_TELEMETRY": "true"}
    result = subprocess.run([sys.executable, "-W", "error::UserWarning", "-c", PROBE], capture_output=True,
                            text=True, env=env, timeout=120)
    assert result.returncode == 0, result.stderr[-2000:]
    assert result.stdout.splitlines() == [
        "ftp flops_mlops.stores.ftp_repository FTPRepository 3.0 45.0 False",
        "ftps flops_mlops.stores.ftp_repository FTPRepository 3.0 45.0 False",
    ]


def test_the_repository_shows_no_password():
    repo = ftp_client.repository("ftp://flops_acme:s3cr%2Ft-pw@127.0.0.1:2121/artifacts")
    assert repo.artifact_uri == "ftp://flops_acme@127.0.0.1:2121/artifacts"
    assert "s3cr" not in repr(repo)


@pytest.mark.parametrize("value", ["0", "-1", "soon", "nan"])
def test_bad_timeouts_in_the_environment_are_named(monkeypatch, value):
    monkeypatch.setenv("FLOPS_FTP_DATA_TIMEOUT", value)
    with pytest.raises(ValueError, match=f"FLOPS_FTP_DATA_TIMEOUT: expected a positive number of seconds, got {value!r}"):
        ftp_client.repository("ftp://u:p@h/x")


def test_the_servers_environment_carries_the_configured_timeouts_quota_and_tls():
    config = StackConfig(name="t", state_dir="/tmp/x", secrets_file="/tmp/x.env", tenants=[Tenant(id="acme")],
                         artifact_store={"kind": "vsftpd", "connect_timeout": 4, "data_timeout": 30,
                                         "quota": "2GiB"})
    secrets = Secrets(config.secrets_file, {ftp_password_key("acme"): "pw"})
    assert ftp_client.environment(config) == {"FLOPS_FTP_CONNECT_TIMEOUT": "4", "FLOPS_FTP_DATA_TIMEOUT": "30",
                                              "FLOPS_ARTIFACT_QUOTA": str(2 * 2**30)}
    assert artifacts_destination(config, config.tenant("acme"), secrets).startswith("ftp://")
    tls = config.model_copy(update={"artifact_store": config.artifact_store.model_copy(update={"tls": True})})
    assert artifacts_destination(tls, tls.tenant("acme"), secrets).startswith("ftps://flops_acme:pw@")
