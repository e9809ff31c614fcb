"""The FTPS certificate of a deployment (artifact_store.tls), made by `secrets init` next to the secrets file.

``<secrets_file>.ftp-tls.crt`` and ``<secrets_file>.ftp-tls.key`` (both mode 0600; for .env: .env.ftp-tls.crt and
.env.ftp-tls.key): a self-signed certificate for artifact_store.host, made by openssl with a new key. vsftpd
presents it (rsa_cert_file, rsa_private_key_file); the tracking servers get its PEM text (not the key) and accept
only a store that presents it.
"""

from __future__ import annotations

import ipaddress
import os
import shutil
import subprocess
from pathlib import Path

from .schema import ConfigError
from .stack import StackConfig

DAYS = 825


def certificate_path(config: StackConfig) -> Path:
    return config.secrets_file.with_name(config.secrets_file.name + ".ftp-tls.crt")


def key_path(config: StackConfig) -> Path:
    return config.secrets_file.with_name(config.secrets_file.name + ".ftp-tls.key")


def _subject_alt_names(host: str) -> str:
    names = {"DNS:localhost", "IP:127.0.0.1"}
    try:
        ipaddress.ip_address(host)
        names.add(f"IP:{host}")
    except ValueError:
        names.add(f"DNS:{host}")
    return ",".join(sorted(names))


def make_certificate(config: StackConfig, force: bool = False) -> bool:
    """Make the certificate and key when TLS is on and they are missing (or ``force``); True when made."""
    if not config.artifact_store.tls:
        return False
    crt, key = certificate_path(config), key_path(config)
    if crt.exists() and key.exists() and not force:
        return False
    if shutil.which("openssl") is None:
        raise ConfigError(f"{config.source}: artifact_store.tls: making the FTPS certificate needs openssl; "
                          "on Debian: apt-get install openssl")
    for path in (crt, key):
        path.unlink(missing_ok=True)
    host = config.artifact_store.host
    subprocess.run(
        ["openssl", "req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes",
         "-keyout", str(key), "-out", str(crt), "-days", str(DAYS), "-subj", f"/CN={host}",
         "-addext", f"subjectAltName={_subject_alt_names(host)}"],
        check=True, capture_output=True, umask=0o077)
    for path in (crt, key):
        os.chmod(path, 0o600)
    return True


def ca_pem(config: StackConfig) -> str:
    """The certificate's PEM text, for the tracking servers (FLOPS_FTP_CA_PEM)."""
    crt = certificate_path(config)
    try:
        return crt.read_text(encoding="ascii")
    except FileNotFoundError:
        raise ConfigError(f"{crt}: FTPS certificate not found (artifact_store.tls is true); make it with "
                          f"`flops-mlops --config {config.source} secrets init`") from None
