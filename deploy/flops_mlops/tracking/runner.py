"""One tenant's tracking server in one process: MLflow's ASGI app with our login app, served by uvicorn.

`mlflow server` is a CLI process that prepares the environment of its server, starts uvicorn as a child and
stays resident only to supervise it: two Python processes of about 300 MB each. This module prepares the
same environment (what `mlflow server --serve-artifacts --app-name flops-basic-auth` hands its uvicorn worker),
opens the stores, builds the app (app.create_app: MLflow's basic-auth app inside MLflow's FastAPI app,
with our guards) and serves it with uvicorn in its own process. uvicorn stops gracefully on SIGTERM.

    python -m flops_mlops.tracking.runner --host H --port P [--allowed-hosts a,b:5000,...] [--workers N]
        [--ssl-certfile CRT --ssl-keyfile KEY]

With --ssl-certfile and --ssl-keyfile (tracking.tls) uvicorn serves HTTPS only; the arguments are file paths,
the key itself is never in them.

Arguments hold no secret. The store URIs, which carry passwords, come from the environment, as for
`mlflow server`: MLFLOW_BACKEND_STORE_URI (also the model registry) and MLFLOW_ARTIFACTS_DESTINATION
(proxied artifacts; new experiments get mlflow-artifacts:/). The login settings are app.py's
(MLFLOW_AUTH_ADMIN_PASSWORD, MLFLOW_FLASK_SERVER_SECRET_KEY, FLOPS_AUTH_DB, FLOPS_FL_USERS, FLOPS_LOCAL_URI).
The schema must be up to date (`python -m flops_mlops.tracking.server upgrade-schema`); on an older one the
runner exits before it listens. --allowed-hosts is MLflow's Host header check (/health is exempt). uvicorn
parses HTTP with h11 and bounds headers and connections (limits.py). With
--workers 1 (the default) everything runs in this one process; more workers are uvicorn's own worker processes.
MLflow's job runner is not started (tracking.job_execution: true keeps `mlflow server`, see tracking_server).

Leaner than `mlflow server`'s worker: packages MLflow imports only if they are there (its imports are guarded)
and a tracking server never needs (LEFT_OUT) are kept out of this process.
"""

from __future__ import annotations

import argparse
import importlib.abc
import importlib.util
import os
import sys
import uuid
from pathlib import Path

from .limits import uvicorn_settings

# MLflow loads these only when installed (guarded imports) and the server's routes never use them: scipy
# (sparse model inputs, a client-side matter), pyarrow (pandas' optional Arrow backend, HDFS artifacts).
LEFT_OUT = ("scipy", "pyarrow")
PROXIED_ARTIFACT_ROOT = "mlflow-artifacts:/"  # what --serve-artifacts gives new experiments


class UsageError(Exception):
    """A missing or bad setting; the message names it (never its value)."""


def mlflow_environment(env: dict[str, str], allowed_hosts: list[str]) -> dict[str, str]:
    """What `mlflow server --serve-artifacts` sets for its uvicorn worker (mlflow.server.constants' names).

    ``env``: this process's environment, with the store URIs.
    """
    backend = env.get("MLFLOW_BACKEND_STORE_URI", "").strip()
    destination = env.get("MLFLOW_ARTIFACTS_DESTINATION", "").strip()
    for key, value in (("MLFLOW_BACKEND_STORE_URI", backend), ("MLFLOW_ARTIFACTS_DESTINATION", destination)):
        if not value:
            raise UsageError(f"{key} is not set (the tracking server's store URIs come from its environment)")
    from ..configuration.values import (  # the rule the configuration's tracking.allowed_hosts follows
        AllowedHost,
        problem,
    )

    for host in allowed_hosts:
        if (why := problem(AllowedHost, host)) is not None:
            raise UsageError(f"--allowed-hosts: {why}")
    return {
        "_MLFLOW_SERVER_FILE_STORE": backend,
        "_MLFLOW_SERVER_REGISTRY_STORE": backend,
        "_MLFLOW_SERVER_ARTIFACT_ROOT": PROXIED_ARTIFACT_ROOT,
        "_MLFLOW_SERVER_SERVE_ARTIFACTS": "true",
        "_MLFLOW_SERVER_ARTIFACT_DESTINATION": destination,
        "_MLFLOW_SGI_NAME": "uvicorn",  # the basic-auth app then returns its FastAPI (ASGI) app
        "_MLFLOW_SERVER_BOOT_ID": uuid.uuid4().hex,
        "_MLFLOW_IN_JOB_EXECUTOR": "false",
        "MLFLOW_ENABLE_WORKSPACES": "false",
        "MLFLOW_SERVER_ALLOWED_HOSTS": ",".join(allowed_hosts),
    }


class _LeaveOut(importlib.abc.MetaPathFinder):
    """Import hook: the LEFT_OUT packages are not found, as if they were not installed."""

    def find_spec(self, name, path=None, target=None):
        if name.partition(".")[0] in LEFT_OUT:
            raise ModuleNotFoundError(f"No module named {name!r} (left out of the tracking server)", name=name)
        return None


def leave_out_optional_packages() -> None:
    if not any(isinstance(finder, _LeaveOut) for finder in sys.meta_path):
        sys.meta_path.insert(0, _LeaveOut())


def create_app():
    """The ASGI app (uvicorn factory): stores opened and checked first, so a bad store fails the start."""
    leave_out_optional_packages()
    from .app import create_app as login_app

    app = login_app()  # first: every later line of this process is cleaned of secrets
    from mlflow.server.handlers import initialize_backend_stores

    backend = os.environ["_MLFLOW_SERVER_FILE_STORE"]
    initialize_backend_stores(backend, backend, PROXIED_ARTIFACT_ROOT)
    return app


def log_config() -> str | None:
    """MLflow's uvicorn log format (as under `mlflow server`), if this MLflow ships it."""
    spec = importlib.util.find_spec("mlflow")  # locates the package without importing it
    path = Path(spec.origin).parent / "server" / "uvicorn_log_config.yaml" if spec and spec.origin else None
    return str(path) if path and path.is_file() else None


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m flops_mlops.tracking.runner",
                                     description="One tenant's MLflow tracking server in one process (store "
                                                 "URIs and login settings from the environment).")
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--allowed-hosts", default="",
                        help="comma-separated Host header values to accept, besides MLflow's defaults")
    parser.add_argument("--workers", type=int, default=1, help="uvicorn workers; 1 serves from this process")
    parser.add_argument("--ssl-certfile", type=Path, help="serve HTTPS with this certificate (PEM file)")
    parser.add_argument("--ssl-keyfile", type=Path, help="the certificate's private key (PEM file)")
    args = parser.parse_args(argv)
    if (args.ssl_certfile is None) != (args.ssl_keyfile is None):
        parser.error("--ssl-certfile and --ssl-keyfile come together")
    for flag, path in (("--ssl-certfile", args.ssl_certfile), ("--ssl-keyfile", args.ssl_keyfile)):
        if path is not None and not path.is_file():
            parser.error(f"{flag}: {path}: no such file")
    if not 0 < args.port < 65536:
        parser.error(f"--port: expected a TCP port 1-65535, got {args.port}")
    if args.workers < 1:
        parser.error(f"--workers: expected a positive integer, got {args.workers}")
    args.allowed_hosts = [host.strip() for host in args.allowed_hosts.split(",") if host.strip()]
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    try:
        os.environ.update(mlflow_environment(dict(os.environ), args.allowed_hosts))
    except UsageError as exc:
        print(f"tracking server: {exc}", file=sys.stderr)
        return 2
    import uvicorn

    options = {"host": args.host, "port": args.port, "log_config": log_config(), **uvicorn_settings()}
    if args.ssl_certfile is not None:
        options.update(ssl_certfile=str(args.ssl_certfile), ssl_keyfile=str(args.ssl_keyfile))
    if args.workers == 1:
        uvicorn.run(create_app(), **options)
    else:  # uvicorn's supervisor starts the workers; each builds the app with create_app
        uvicorn.run(f"{__spec__.name if __spec__ else __name__}:create_app", factory=True, workers=args.workers,
                    **options)
    return 0


if __name__ == "__main__":
    sys.exit(main())
