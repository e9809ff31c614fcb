"""A registered model version's files in one answer: ``GET /flops/model-versions/archive?name=N&version=V``.

MLflow's clients download a model one HTTP request per listing and per file (9 to 10 requests for a small
PyTorch model), and each request costs about as much as fetching the whole model from the FTP store. This route
answers with one uncompressed tar of every file of the version, read from the store over one pooled FTP
connection (stores/ftp_repository.py). Model servers fetch through it (serving/fetch.py).

Who may: whoever may read the version's files through MLflow's own ``/model-versions/get-artifact``. The route
is registered with MLflow's validator of that route (``validate_can_read_model_version_artifact``: READ on the
registered model, no DENY on the version), so the login check and the grant check are MLflow's; an admin passes.
Like get-artifact, only a version whose files are in this server's proxied store is served (locations.py).

Answers: 200 with the tar (members are the model's relative paths, regular files and folders only); 400 when name
or version is missing or malformed; 403 without READ; 404 when the model or version does not exist.
"""

from __future__ import annotations

import re
import shutil
import tarfile
import tempfile
from collections.abc import Iterator
from pathlib import Path

from .locations import is_allowed_model_source, is_proxied_location, refused

ROUTE = "/flops/model-versions/archive"
VERSION = re.compile(r"[1-9][0-9]{0,9}")
CHUNK = 1024 * 1024


def _streamed(folder: Path, archive: Path) -> Iterator[bytes]:
    """The archive's bytes, in chunks; the temporary folder goes once the last one is sent (or the client left)."""
    try:
        with archive.open("rb") as handle:
            while chunk := handle.read(CHUNK):
                yield chunk
    finally:
        shutil.rmtree(folder, ignore_errors=True)


def write_archive(source: Path, archive: Path) -> None:
    """``source``'s files and folders as an uncompressed tar at ``archive``, names relative, sorted."""
    with tarfile.open(archive, "w", format=tarfile.PAX_FORMAT) as tar:
        for path in sorted(source.rglob("*")):
            tar.add(path, arcname=path.relative_to(source).as_posix(), recursive=False)


def archive_of_model_version():
    """The route's Flask view (after MLflow's login and permission check)."""
    from flask import Response, request
    from mlflow.server import handlers

    name, version = request.args.get("name", ""), request.args.get("version", "")
    if not name:
        return refused("name is required: the registered model's name")
    if not VERSION.fullmatch(version):
        return refused(f"version {version[:20]!r} is not a version number (1, 2, ...)")
    registry = handlers._get_model_registry_store()
    # an unknown model or version raises MLflow's RESOURCE_DOES_NOT_EXIST: catch_mlflow_exception makes it a 404
    source = registry.get_model_version(name, version).source or ""
    uri = registry.get_model_version_download_uri(name, version)
    if not (is_allowed_model_source(source) and is_proxied_location(uri)):
        return refused("this model version's files are outside this server's proxied store; refused")
    repository = handlers._get_artifact_repo_mlflow_artifacts()
    path = handlers._get_workspace_scoped_repo_path_if_enabled(
        handlers._get_proxied_run_artifact_destination_path(proxied_artifact_root=uri))
    folder = Path(tempfile.mkdtemp(prefix="flops-archive-"))
    try:
        files = folder / "files"
        files.mkdir()
        local = repository.download_artifacts(path, dst_path=str(files))
        archive = folder / "model.tar"
        write_archive(Path(local), archive)
    except BaseException:
        shutil.rmtree(folder, ignore_errors=True)
        raise
    response = Response(_streamed(folder, archive), mimetype="application/x-tar", direct_passthrough=True)
    response.headers["Content-Length"] = str(archive.stat().st_size)
    response.headers["Content-Disposition"] = f'attachment; filename="model-v{version}.tar"'
    return response


def install(flask_app) -> None:
    """Register the route and, for it, MLflow's READ check of a model version's artifacts."""
    from mlflow.server import auth, handlers

    flask_app.add_url_rule(ROUTE, "flops_model_version_archive",
                           handlers.catch_mlflow_exception(archive_of_model_version), methods=["GET"])
    auth.BEFORE_REQUEST_VALIDATORS[(ROUTE, "GET")] = auth.validate_can_read_model_version_artifact
