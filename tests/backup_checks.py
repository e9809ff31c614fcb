"""What a restore must bring back, however the stack is deployed (native, embedded, compose), written once:
everything a tenant holds, as its admin reads it through its tracking server, and the sha256 of each of its
FTP files.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

from tracking_checks import ftp_client, ftp_listing


def ftp_hashes(host: str, port: int, user: str, password: str, ca: Path | None = None) -> dict[str, str]:
    """sha256 of every file in ``user``'s FTP folder, by its path there (with ``ca`` over verified FTPS)."""
    hashes = {}
    paths = ftp_listing(host, port, user, password, "/", ca)
    with ftp_client(host, port, ca) as ftp:
        ftp.login(user, password)
        for path in paths:
            digest = hashlib.sha256()
            ftp.retrbinary(f"RETR {path}", digest.update)
            hashes[path] = digest.hexdigest()
    return hashes


def tenant_snapshot(uri: str, admin_password: str, files: dict[str, str]) -> dict:
    """Experiments, runs with their params, metrics and history, tags, registered models, versions and aliases,
    logged models, users with their grants, read as the admin through the server at ``uri``; and ``files``."""
    import mlflow
    from flops_mlops.tracking.users import AuthAdmin
    from mlflow.entities import ViewType

    client = mlflow.MlflowClient(uri)
    experiments = client.search_experiments(view_type=ViewType.ALL)
    ids = [e.experiment_id for e in experiments]
    runs = client.search_runs(ids, run_view_type=ViewType.ALL, max_results=1000)
    models = client.search_registered_models()
    admin = AuthAdmin(uri, admin_password)
    return {
        "experiments": sorted((e.experiment_id, e.name, e.lifecycle_stage, sorted(e.tags.items()))
                              for e in experiments),
        "runs": {r.info.run_id: (r.info.run_name, r.info.status, r.info.start_time, r.info.end_time,
                                 r.info.artifact_uri, r.data.params, r.data.metrics, r.data.tags) for r in runs},
        "history": {(r.info.run_id, key): [(m.step, m.value, m.timestamp)
                                           for m in client.get_metric_history(r.info.run_id, key)]
                    for r in runs for key in r.data.metrics},
        "registered_models": {m.name: (sorted(m.aliases.items()), sorted(m.tags.items())) for m in models},
        "versions": sorted((v.name, v.version, v.source, v.run_id, v.status, sorted(v.tags.items()))
                           for m in models for v in client.search_model_versions(f"name='{m.name}'")),
        "logged_models": sorted((m.model_id, m.name, m.status, m.artifact_location, sorted(m.params.items()))
                                for m in client.search_logged_models(experiment_ids=ids)),
        "users": sorted((u["username"], u["is_admin"], json.dumps(admin.permissions(u["username"]), sort_keys=True))
                        for u in admin.users()),
        "files": files,
    }
