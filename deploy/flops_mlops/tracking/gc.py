"""`flops-mlops gc --tenant T [--older-than 30d]`: MLflow's `mlflow gc` for one tenant, with its credentials.

`mlflow gc` permanently deletes what is in the `deleted` lifecycle stage: runs (their artifacts first), logged
models (their files first) and experiments. Runs and models of our tracking servers have proxied locations
(mlflow-artifacts:/...), so their files are deleted through the tenant's tracking server, as its admin, which
deletes them from the FTP folder with our FTP repository (recursively; nothing there is no error).

Deleting a registered model version keeps the logged model that holds its files (MLflow 3). So first, every
logged model whose registered versions (tag mlflow.modelVersions) are all deleted is marked deleted too, and
its files go with this or a later gc; a logged model that was never registered, or has a live version, stays.

Credentials and the backend store URI reach the child process that runs gc through its environment, never its
arguments (`python -m flops_mlops.tracking.gc`).
"""

from __future__ import annotations

import argparse
import json
import os
import re
import subprocess
import sys

from ..configuration.schema import ConfigError
from ..configuration.secrets import Secrets, redact
from ..configuration.stack import StackConfig
from ..processes import StackError
from .server import TrackingServer, backend_store_uri, client_env
from .users import ADMIN

DURATION = re.compile(r"^(?=\d)((\d+(\.\d+)?)d)?((\d+(\.\d+)?)h)?((\d+(\.\d+)?)m)?((\d+(\.\d+)?)s)?$")
OLDER_THAN_ENV = "FLOPS_GC_OLDER_THAN"
MODEL_VERSIONS_TAG = "mlflow.modelVersions"


def add_gc_parser(commands):
    gc = commands.add_parser(
        "gc", help="permanently delete a tenant's deleted runs and models, their artifacts included (mlflow gc)",
        description="Run `mlflow gc` against the tenant's backend store, as its admin: runs, logged models and "
                    "experiments in the deleted stage are removed for good, and their files leave the FTP folder. "
                    "A logged model whose registered versions were all deleted is marked deleted first. The "
                    "tenant's tracking server must be up (files are deleted through it). See docs/backup.md.")
    gc.add_argument("--tenant", required=True, help="tenant id")
    gc.add_argument("--older-than", metavar="AGE",
                    help="only what was deleted longer ago than AGE (for example 30d, 12h, 1d2h30m)")
    return gc


def gc_command(config: StackConfig, args: argparse.Namespace) -> int:
    tenant = config.tenant(args.tenant)
    if args.older_than is not None and not DURATION.fullmatch(args.older_than):
        raise ConfigError(f"--older-than: expected an age like 30d, 12h or 1d2h30m, got {args.older_than!r}")
    secrets = Secrets.load(config)
    tracker = TrackingServer(config, tenant)
    if not tracker.healthy():
        raise StackError(f"tracking server of tenant {tenant.id} ({tracker.local_uri}) is not answering; gc deletes "
                         f"files through it: start it with `flops-mlops --config {config.source} up`")
    env = {key: value for key, value in os.environ.items() if not key.startswith(("MLFLOW_", "FLOPS_"))}
    env.update({"MLFLOW_BACKEND_STORE_URI": backend_store_uri(config, tenant, secrets),
                "MLFLOW_TRACKING_URI": tracker.local_uri, "MLFLOW_TRACKING_USERNAME": ADMIN,
                "MLFLOW_TRACKING_PASSWORD": secrets.admin_password(tenant.id),
                "MLFLOW_DISABLE_TELEMETRY": "true", OLDER_THAN_ENV: args.older_than or "", **client_env(config)})
    result = subprocess.run([sys.executable, "-m", "flops_mlops.tracking.gc"], env=env, capture_output=True,
                            text=True, timeout=3600)
    hidden = [value for value in secrets.values.values() if len(value) >= 8]
    print(redact(result.stdout, hidden), end="")
    if result.returncode != 0:
        raise StackError(f"gc of tenant {tenant.id} failed: {redact(result.stderr.strip(), hidden)[-2000:]}")
    print(f"tenant {tenant.id}: gc done")
    return 0


def retire_models_of_deleted_versions() -> list[str]:
    """Mark deleted every logged model whose registered versions are all gone; returns their ids."""
    import mlflow
    from mlflow.entities import ViewType
    from mlflow.exceptions import MlflowException

    client = mlflow.MlflowClient()
    experiments = [e.experiment_id for e in client.search_experiments(view_type=ViewType.ALL)]
    retired = []
    for start in range(0, len(experiments), 100):
        for model in client.search_logged_models(experiment_ids=experiments[start:start + 100]):
            versions = json.loads(model.tags.get(MODEL_VERSIONS_TAG) or "[]")
            if not versions:
                continue  # never registered: not ours to delete
            alive = []
            for v in versions:
                try:
                    client.get_model_version(v["name"], str(v["version"]))
                    alive.append(v)
                except MlflowException as exc:
                    if exc.error_code != "RESOURCE_DOES_NOT_EXIST":
                        raise
            if not alive:
                client.delete_logged_model(model.model_id)
                names = ", ".join(f"{v['name']} version {v['version']}" for v in versions)
                print(f"Logged model {model.model_id}: its registered versions ({names}) are deleted; marked deleted")
                retired.append(model.model_id)
    return retired


def _gc_from_env() -> int:
    from mlflow.cli import gc

    uri = os.environ["MLFLOW_BACKEND_STORE_URI"]
    retire_models_of_deleted_versions()
    older_than = os.environ.get(OLDER_THAN_ENV, "")
    gc.main(args=["--backend-store-uri", uri, *(["--older-than", older_than] if older_than else [])],
            standalone_mode=False)
    return 0


if __name__ == "__main__":
    sys.exit(_gc_from_env())
