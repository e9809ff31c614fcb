"""The single-process runner: it sets what `mlflow server` would set, refuses missing settings, and leaves out
what MLflow imports only when it is there."""

from __future__ import annotations

import subprocess
import sys

import pytest
from flops_mlops.tracking import runner as tracking_runner

STORES = {"MLFLOW_BACKEND_STORE_URI": "mysql+pymysql://u:db-secret@db:3306/d",
          "MLFLOW_ARTIFACTS_DESTINATION": "ftp://f:ftp-secret@ftp:21/artifacts"}


def test_the_environment_uses_the_names_mlflow_reads():
    """The names are MLflow's (internal ones included): the test fails when an MLflow upgrade renames one."""
    from mlflow.environment_variables import (
        _MLFLOW_IN_JOB_EXECUTOR,
        _MLFLOW_SERVER_BOOT_ID,
        _MLFLOW_SGI_NAME,
        MLFLOW_ENABLE_WORKSPACES,
        MLFLOW_SERVER_ALLOWED_HOSTS,
    )
    from mlflow.server import constants

    env = tracking_runner.mlflow_environment(STORES, ["tracking.example:5000", "127.0.0.1:5000"])
    assert env[constants.BACKEND_STORE_URI_ENV_VAR] == STORES["MLFLOW_BACKEND_STORE_URI"]
    assert env[constants.REGISTRY_STORE_URI_ENV_VAR] == STORES["MLFLOW_BACKEND_STORE_URI"]
    assert env[constants.ARTIFACTS_DESTINATION_ENV_VAR] == STORES["MLFLOW_ARTIFACTS_DESTINATION"]
    assert env[constants.SERVE_ARTIFACTS_ENV_VAR] == "true"
    assert env[constants.ARTIFACT_ROOT_ENV_VAR] == "mlflow-artifacts:/"  # clients never talk to FTP
    assert env[MLFLOW_SERVER_ALLOWED_HOSTS.name] == "tracking.example:5000,127.0.0.1:5000"
    assert env[_MLFLOW_SGI_NAME.name] == "uvicorn"
    assert env[_MLFLOW_IN_JOB_EXECUTOR.name] == "false" and env[MLFLOW_ENABLE_WORKSPACES.name] == "false"
    assert len(env[_MLFLOW_SERVER_BOOT_ID.name]) == 32


@pytest.mark.parametrize("missing", ["MLFLOW_BACKEND_STORE_URI", "MLFLOW_ARTIFACTS_DESTINATION"])
def test_a_missing_store_uri_exits_2_naming_the_variable(missing):
    env = {key: value for key, value in STORES.items() if key != missing}
    done = subprocess.run([sys.executable, "-m", "flops_mlops.tracking.runner", "--port", "5000"],
                          env={"PATH": "/usr/bin:/bin", **env}, capture_output=True, text=True, timeout=60)
    assert done.returncode == 2
    assert f"{missing} is not set" in done.stderr
    assert "secret" not in done.stdout + done.stderr


def test_any_host_is_refused():
    with pytest.raises(tracking_runner.UsageError, match="would let any Host header in\\), got '\\*'"):
        tracking_runner.mlflow_environment(STORES, ["*"])
    with pytest.raises(tracking_runner.UsageError, match="got '10.0.\\*'"):
        tracking_runner.mlflow_environment(STORES, ["localhost:5000", "10.0.*"])


def test_left_out_packages_cannot_be_imported_but_the_rest_can():
    script = ("from flops_mlops.tracking import runner as tracking_runner\n"
              "tracking_runner.leave_out_optional_packages()\n"
              "import pandas, sqlalchemy\n"
              "for name in ('scipy.sparse', 'pyarrow'):\n"
              "    try:\n"
              "        __import__(name)\n"
              "    except ImportError as exc:\n"
              "        print('refused', name)\n")
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    assert done.stdout.split("\n")[:2] == ["refused scipy.sparse", "refused pyarrow"]


def test_mlflow_ships_the_log_format_the_runner_uses():
    assert tracking_runner.log_config() is not None
