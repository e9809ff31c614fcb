"""How the tracking servers reach the FTP artifact store: the settings our FTP artifact repository reads.

The repository (ftp_repository.py) runs inside the tracking server; repository() (its entry point) builds it
with these environment variables, which tracking.server.server_env sets from the configuration
(artifact_store.connect_timeout, data_timeout, quota, tls).

With artifact_store.tls the tracking servers get the deployment's CA certificate (PEM text) in FLOPS_FTP_CA_PEM and
accept only a store whose certificate that CA signed for the host they dial (configuration/certificates.py).
"""

from __future__ import annotations

import os
from pathlib import Path

from ..configuration.certificates import ca_pem
from ..configuration.stack import StackConfig

CONNECT_TIMEOUT_ENV = "FLOPS_FTP_CONNECT_TIMEOUT"
DATA_TIMEOUT_ENV = "FLOPS_FTP_DATA_TIMEOUT"
CA_PEM_ENV = "FLOPS_FTP_CA_PEM"
CA_FILE_ENV = "FLOPS_FTP_CA_FILE"  # instead of the PEM text, where an environment file takes one line (pyinfra)
QUOTA_ENV = "FLOPS_ARTIFACT_QUOTA"  # bytes; 0: no limit (artifact_store.quota)


def environment(config: StackConfig, ca_file: Path | None = None) -> dict[str, str]:
    """The repository's settings for a tracking server's environment: timeouts, quota and, with TLS, the CA
    certificate's PEM text (from ``ca_file``; default the deployment's, beside the secrets file)."""
    store = config.artifact_store
    settings = {CONNECT_TIMEOUT_ENV: str(store.connect_timeout), DATA_TIMEOUT_ENV: str(store.data_timeout),
                QUOTA_ENV: str(store.quota)}
    if store.tls:
        settings[CA_PEM_ENV] = ca_pem(config, ca_file)
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
    quota = env.get(QUOTA_ENV, "0").strip() or "0"
    if not quota.isdigit():
        raise ValueError(f"{QUOTA_ENV}: expected a number of bytes (0: no limit), got {quota!r}")
    return FTPRepository(artifact_uri, tracking_uri, registry_uri,
                         connect_timeout=_seconds(env, CONNECT_TIMEOUT_ENV, 10),
                         data_timeout=_seconds(env, DATA_TIMEOUT_ENV, 60),
                         ca_pem=_ca_pem(env), quota=int(quota))


def _ca_pem(env: dict[str, str]) -> str | None:
    """The CA the store's certificate must verify against: FLOPS_FTP_CA_PEM, else the file FLOPS_FTP_CA_FILE."""
    pem = env.get(CA_PEM_ENV, "").strip()
    path = env.get(CA_FILE_ENV, "").strip()
    if pem or not path:
        return pem or None
    try:
        return Path(path).read_text(encoding="ascii")
    except (OSError, UnicodeDecodeError) as exc:
        raise ValueError(f"{CA_FILE_ENV}: cannot read the CA certificate {path!r}: {exc}") from None
