"""Artifacts stay in the tenant's store: the rule on artifact locations, and the tracking server's hook that applies it.

An experiment may only have the proxied artifact root (``mlflow-artifacts:/<path>``, no host, no '..'); a model
version only a source inside it (``models:/``, ``runs:/``, ``mlflow-artifacts:/``). Artifact uploads and downloads
of a run or model version elsewhere are refused (400). app.py registers the hook after MLflow's login check, so an
anonymous client still gets 401; model_archive.py applies the same rule to its route.
"""

from __future__ import annotations

import re

from .checks import endpoint_of, json_error, request_json

# The proxied artifact root: mlflow-artifacts:/<path>, without a host (a host sends clients elsewhere) and
# without '..' segments or escapes.
PROXIED_ROOT = re.compile(r"^mlflow-artifacts:/(?!/)[A-Za-z0-9._/-]*$")
MODEL_SOURCE = re.compile(r"^(models|runs):/(?!/)[A-Za-z0-9._/@-]*$")


def is_proxied_location(location: str) -> bool:
    return bool(PROXIED_ROOT.fullmatch(location)) and ".." not in location.split("/")


def is_allowed_model_source(source: str) -> bool:
    if MODEL_SOURCE.fullmatch(source):
        return ".." not in source.split("/")
    return is_proxied_location(source)


def refused(message: str):
    """A 400 in MLflow's error shape, naming what is wrong."""
    from flask import Response

    status, body = json_error(400, "INVALID_PARAMETER_VALUE", message)
    return Response(body, status=status, mimetype="application/json")


def refuse_foreign_artifact_locations():
    """Flask before_request hook, registered after MLflow's login check."""
    from flask import request
    from mlflow.exceptions import MlflowException
    from mlflow.server import handlers

    endpoint = endpoint_of(request.path)
    if request.method == "POST" and endpoint == "mlflow/experiments/create":
        location = request_json().get("artifact_location") or ""
        if location and not is_proxied_location(str(location)):
            return refused(f"artifact_location {str(location)!r} is not allowed: experiments keep their artifacts "
                           "in this server's proxied store (leave it empty, or use mlflow-artifacts:/<path>)")
    elif request.method == "POST" and endpoint == "mlflow/model-versions/create":
        source = str(request_json().get("source") or "")
        if not is_allowed_model_source(source):
            return refused(f"source {source!r} is not allowed: a model version's files must be in this server's "
                           "proxied store (models:/, runs:/ or mlflow-artifacts:/)")
    elif endpoint in ("mlflow/upload-artifact", "get-artifact"):
        run_id = request.args.get("run_uuid") or request.args.get("run_id") or ""
        try:
            location = handlers._get_tracking_store().get_run(run_id).info.artifact_uri
        except MlflowException:
            return None  # MLflow's own handler answers for an unknown run
        if not is_proxied_location(location):
            return refused(f"run {run_id} keeps its artifacts outside this server's proxied store; refused")
    elif endpoint == "model-versions/get-artifact":
        try:
            version = handlers._get_model_registry_store().get_model_version(
                request.args.get("name", ""), request.args.get("version", ""))
        except MlflowException:
            return None
        if not is_allowed_model_source(version.source or ""):
            return refused("this model version's files are outside this server's proxied store; refused")
    return None
