"""PEM files carried in one-line environment values: Oakestra hands a service no files, only ``environment``.

`push` fills an SLA's ``${file:<name>}`` placeholder with the file ``<secrets_file>.<name>`` (a certificate or key
that `secrets init` made) encoded as base64url without padding (``encode``): letters, digits, '-' and '_', the
characters every secret value has, so a value stays one line with nothing to escape. A container's entrypoint turns
each such ``<NAME>_B64`` variable back into a file (``write_files``): in a private folder (0700) of its own, each
file 0600, and hands on the path; a key never appears in an argument.

Standard library only: the artifact-store image runs this file as a script (``python3 pem_env.py FOLDER VAR=FILE
...``) before vsftpd starts.
"""

from __future__ import annotations

import base64
import binascii
import os
import sys
import tempfile
from pathlib import Path

SUFFIX = "_B64"
# The clients' setting (FL aggregator, model server): the CA the tracking server's certificate must verify against,
# decoded into the file MLflow's client reads (MLFLOW_TRACKING_SERVER_CERT_PATH).
TRACKING_CA = "FLOPS_TRACKING_CA_B64"
TRACKING_CA_PATH = "MLFLOW_TRACKING_SERVER_CERT_PATH"


class PemError(ValueError):
    """A value that is not base64url of PEM text; names the variable."""


def encode(data: bytes) -> str:
    """base64url of ``data`` without padding: one line of letters, digits, '-' and '_'."""
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode("ascii")


def decode(key: str, value: str) -> bytes:
    """The PEM bytes in the variable ``key``; PemError naming it when it holds anything else."""
    text = value.strip()
    if not text or text.strip("ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_"):
        raise PemError(f"environment: {key}: expected base64url (letters, digits, '-', '_') of a PEM file")
    try:
        data = base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))
    except (binascii.Error, ValueError):
        raise PemError(f"environment: {key}: not valid base64url ({len(text)} characters)") from None
    if not data.lstrip().startswith(b"-----BEGIN "):
        raise PemError(f"environment: {key}: the decoded value is not PEM text (no -----BEGIN line)")
    return data


def write_files(env: dict[str, str], wanted: dict[str, str], folder: Path | None = None) -> dict[str, Path]:
    """For each variable of ``wanted`` (``<NAME>_B64`` -> file name) set in ``env``: its PEM bytes in that file, in
    ``folder`` (default: a new private folder under the system's temporary one); {variable: path}."""
    found = {key: decode(key, env[key]) for key in wanted if env.get(key, "").strip()}
    if not found:
        return {}
    if folder is None:
        folder = Path(tempfile.mkdtemp(prefix="flops-pem-"))  # mode 0700
    folder.mkdir(mode=0o700, parents=True, exist_ok=True)
    paths = {}
    for key, data in found.items():
        path = folder / wanted[key]
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "wb") as handle:
            handle.write(data)
        os.chmod(path, 0o600)  # also when the file was there before
        paths[key] = path
    return paths


def export_tracking_ca(env=os.environ) -> Path | None:
    """A client of a tracking server (aggregator, model server): FLOPS_TRACKING_CA_B64 decoded into a private file,
    which MLFLOW_TRACKING_SERVER_CERT_PATH then names (PemError when the value is bad); None without it."""
    paths = write_files(dict(env), {TRACKING_CA: "tracking-ca.crt"})
    if not paths:
        return None
    env[TRACKING_CA_PATH] = str(paths[TRACKING_CA])
    return paths[TRACKING_CA]


def main(argv: list[str]) -> int:
    """``FOLDER VAR=FILE ...``: each variable set in the environment written to FOLDER/FILE (exit 2 on bad input)."""
    if len(argv) < 2 or any("=" not in item for item in argv[1:]):
        print("usage: pem_env.py FOLDER NAME_B64=FILE ...", file=sys.stderr)
        return 2
    wanted = dict(item.split("=", 1) for item in argv[1:])
    try:
        write_files(dict(os.environ), wanted, Path(argv[0]))
    except PemError as exc:
        print(exc, file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
