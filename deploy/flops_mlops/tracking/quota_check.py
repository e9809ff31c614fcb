"""An artifact upload whose length is announced (Content-Length) and would pass the tenant's storage quota is
refused before MLflow reads it (HTTP 507, naming the quota and the usage: stores/quota.py). It runs after the
login check, so only a user who may write learns the usage. Chunked uploads are checked by the repository itself,
with the file's real size, before it writes a byte to the store."""

from __future__ import annotations

import json

from .limits import is_upload


def refuse_uploads_over_quota():
    """Flask before_request hook (after MLflow's login check)."""
    from flask import Response, request
    from mlflow.server import handlers

    from ..stores.quota import QuotaExceeded

    if not is_upload(request.method, request.path) or not request.content_length:
        return None
    usage = getattr(handlers._get_artifact_repo_mlflow_artifacts(), "usage", None)  # our FTP repository's
    if usage is None:
        return None
    try:
        usage.admit(request.content_length)
    except QuotaExceeded as exc:
        body = json.dumps({"error_code": "RESOURCE_EXHAUSTED", "message": exc.message})
        return Response(body, status=exc.get_http_status_code(), mimetype="application/json")
    return None
