"""How the tracking servers reach the FTP artifact store: the settings our FTP artifact repository reads.

The repository (ftp_repository.py) runs inside the tracking server; repository() (its entry point) builds it
with these environment variables, which tracking.server.server_env sets from the configuration
(artifact_store.connect_timeout, data_timeout, tls).

With artifact_store.tls the tracking servers get the FTPS certificate's PEM text (not the key) in FLOPS_FTP_CA_PEM
and accept only a store that presents it (configuration/certificates.py).
"""

from __future__ import annotations

import os

from ..configuration.certificates import ca_pem
from ..configuration.stack import StackConfig

CONNECT_TIMEOUT_ENV = "FLOPS_FTP_CONNECT_TIMEOUT"
DATA_TIMEOUT_ENV = "FLOPS_FTP_DATA_TIMEOUT"
CA_PEM_ENV = "FLOPS_FTP_CA_PEM"


def environment(config: StackConfig) -> dict[str, str]:
    """The repository's settings for a tracking server's environment: timeouts, and the FTPS certificate."""
    store = config.artifact_store
    settings = {CONNECT_TIMEOUT_ENV: str(store.connect_timeout), DATA_TIMEOUT_ENV: str(store.data_timeout)}
    if store.tls:
        settings[CA_PEM_ENV] = ca_pem(config)
    return settings


def _seconds(env: dict[str, str], key: str, default: float) -> float:
    value = env.get(key, "").strip()
    if not value:
        return default
    try:
        seconds = float(value)
    except ValueError:
        seconds = 0.0
    if not seconds > 0:
        raise ValueError(f"{key}: expected a positive number of seconds, got {value!r}")
    return seconds


def repository(artifact_uri: str, tracking_uri: str | None = None, registry_uri: str | None = None):
    """The ``mlflow.artifact_repository`` entry point of schemes ftp and ftps (pyproject.toml): our FTPRepository,
    with the settings of environment().

    A factory in a module without MLflow imports: MLflow loads the entry points while it is itself being
    imported, which would find ftp_repository.py half-imported if that module were imported first.
    """
    from .ftp_repository import FTPRepository

    env = dict(os.environ)
    return FTPRepository(artifact_uri, tracking_uri, registry_uri,
                         connect_timeout=_seconds(env, CONNECT_TIMEOUT_ENV, 10),
                         data_timeout=_seconds(env, DATA_TIMEOUT_ENV, 60),
                         ca_pem=env.get(CA_PEM_ENV, "").strip() or None)
