"""Bring a tenant's backend store schema to the installed MLflow version; on an empty database, create it.

Run before each start of a tracking server, with the server's environment: the store URI (which holds the
database password) is read from MLFLOW_BACKEND_STORE_URI, never from the command line, and is masked in errors.
"""

import os
import sys
from urllib.parse import quote, urlsplit

from mlflow.db import upgrade

uri = os.environ.get("MLFLOW_BACKEND_STORE_URI", "")
if not uri:
    sys.exit("MLFLOW_BACKEND_STORE_URI is not set")
try:
    upgrade.main(args=[uri], standalone_mode=False)
except Exception as exc:  # noqa: BLE001 - report any failure, without the password
    secret = urlsplit(uri).password or ""
    text = str(exc)
    if secret:
        text = text.replace(quote(secret, safe=""), "***").replace(secret, "***")
    sys.exit(f"schema upgrade failed: {type(exc).__name__}: {text}")
