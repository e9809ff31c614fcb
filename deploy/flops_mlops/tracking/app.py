"""The tracking server's web app: MLflow's basic-auth app, with our guards around it.

The tracking server's process builds it (runner.py; or `mlflow server --app-name flops-basic-auth`,
which loads ``create_app`` from the ``mlflow.app`` entry point group in its uvicorn worker). It returns MLflow's
own basic-auth app (``mlflow.server.auth``: users, passwords and permissions in the tenant's auth database),
configured from the environment, and adds:

- **No secret leaves the process.** Every store password and key this server holds is replaced by ``***`` in
  HTTP error answers (MLflow's FTP repository puts its whole URI, password included, into a 500) and in every
  line the process writes to its log. Any ``scheme://user:password@`` in those is cut to ``scheme://user:***@``.
- **Artifacts stay in the tenant's store.** An experiment may only have the proxied artifact root
  (``mlflow-artifacts:/...``); a model version only a source inside it (``models:/``, ``runs:/``,
  ``mlflow-artifacts:/``). Artifact uploads and downloads of a run or model version elsewhere are refused.
  Both checks run after MLflow's login check, so an anonymous client still gets 401.
- **Only the admin lists users** (and their grants): MLflow shows the list to any logged-in user.
- **Bad input is a 400 that names what is wrong, and no answer shows internals** (checks.py): malformed bodies,
  names and artifact paths are refused before MLflow reads them; SQL, tracebacks and the host's paths are cut
  from every error answer.
- **The UI opens on model training** (ui.py): on a first visit, not on GenAI, without its assistant panel, and an
  FL project's runs with their loss and accuracy.

It also makes sure the FL project users it was deployed with exist (containers: compose, Oakestra), once it
answers: ``fl-<project>`` with EDIT on that project's experiment and registered model only (users.py).

Environment (besides MLflow's own: MLFLOW_AUTH_ADMIN_PASSWORD, MLFLOW_FLASK_SERVER_SECRET_KEY):
  FLOPS_AUTH_DB    absolute path of the SQLite auth database; its folder also gets basic_auth.ini (no secret in it)
  FLOPS_FL_USERS   optional "project:password,...": FL project users to ensure
  FLOPS_SERVE_USERS optional "project:password,...": model server users (serve-<project>, READ on the model)
  FLOPS_LOCAL_URI  with FLOPS_FL_USERS: how this process reaches its own server (http://127.0.0.1:<port>)
"""

from __future__ import annotations

import io
import json
import logging
import os
import re
import sys
from collections.abc import Callable, Iterable
from pathlib import Path
from urllib.parse import unquote, urlsplit

from ..configuration.secrets import redact
from . import checks
from .checks import endpoint_of, request_json
from .ui import add_first_visit_defaults

ADMIN_USERNAME = "admin"
# Which environment variables hold secrets in the server (the store URIs also under MLflow's internal names).
SECRET_VARIABLES = ("MLFLOW_AUTH_ADMIN_PASSWORD", "MLFLOW_FLASK_SERVER_SECRET_KEY")
URI_VARIABLES = ("MLFLOW_BACKEND_STORE_URI", "_MLFLOW_SERVER_FILE_STORE", "MLFLOW_ARTIFACTS_DESTINATION",
                 "_MLFLOW_SERVER_ARTIFACT_DESTINATION", "MLFLOW_REGISTRY_STORE_URI", "_MLFLOW_SERVER_REGISTRY_STORE")
CREDENTIALS_IN_URI = re.compile(r"(?i)\b([a-z][a-z0-9+.-]*://[^\s/@:'\"]+):[^\s/@'\"]+@")
# The proxied artifact root: mlflow-artifacts:/<path>, without a host (a host sends clients elsewhere) and
# without '..' segments or escapes.
PROXIED_ROOT = re.compile(r"^mlflow-artifacts:/(?!/)[A-Za-z0-9._/-]*$")
MODEL_SOURCE = re.compile(r"^(models|runs):/(?!/)[A-Za-z0-9._/@-]*$")


# --- secrets out of every answer and log line ------------------------------------------------------------


def secrets_from_environment(env: dict[str, str]) -> list[str]:
    """The secret values this process holds: keys, passwords, and the passwords inside store URIs."""
    values = [env.get(key, "") for key in SECRET_VARIABLES]
    for key in URI_VARIABLES:
        try:
            password = urlsplit(env.get(key, "")).password
        except ValueError:
            password = None
        if password:
            values += [password, unquote(password)]
    return [value for value in values if value]


def make_redactor(secrets: Iterable[str]) -> Callable[[str], str]:
    known = list(secrets)

    def clean(text: str) -> str:
        return CREDENTIALS_IN_URI.sub(r"\1:***@", redact(text, known))

    return clean


class RedactingStream(io.TextIOBase):
    """A text stream that cleans every write before passing it on (stdout, stderr, log handlers)."""

    def __init__(self, target, clean: Callable[[str], str]):
        self.target = target
        self.clean = clean

    def write(self, text: str) -> int:
        self.target.write(self.clean(text))
        return len(text)

    def flush(self) -> None:
        self.target.flush()

    def fileno(self) -> int:
        return self.target.fileno()

    def isatty(self) -> bool:
        return False


def redact_process_output(clean: Callable[[str], str]) -> None:
    """Route everything Python writes (print, tracebacks, every logging stream handler) through ``clean``."""
    sys.stdout = RedactingStream(sys.__stdout__, clean)
    sys.stderr = RedactingStream(sys.__stderr__, clean)
    loggers = [logging.getLogger(), *(logging.getLogger(name) for name in list(logging.root.manager.loggerDict))]
    for logger in loggers:
        for handler in getattr(logger, "handlers", []):
            if isinstance(handler, logging.StreamHandler) and _writes_to_a_file(handler.stream):
                handler.setStream(RedactingStream(handler.stream, clean))


def _writes_to_a_file(stream) -> bool:
    """A stream that reaches a file or pipe (the server's log), not yet wrapped; in-memory buffers are left alone."""
    if isinstance(stream, RedactingStream):
        return False
    try:
        stream.fileno()
    except (AttributeError, OSError, ValueError):
        return False
    return True


class RedactErrorAnswers:
    """ASGI wrapper: error answers (status >= 400) and every header go out cleaned; other bodies stream as is."""

    def __init__(self, app, clean: Callable[[str], str], scrub: Callable[[str], str] = lambda text: text):
        self.app = app
        self.clean = clean
        self.scrub = scrub  # also filters the error answers' bodies (checks.without_internals)

    def _headers(self, headers) -> list[tuple[bytes, bytes]]:
        return [(name, self.clean(value.decode("latin-1")).encode("latin-1")) for name, value in headers]

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        held: dict = {}
        parts: list[bytes] = []

        async def cleaned_send(message):
            if message["type"] == "http.response.start":
                message = {**message, "headers": self._headers(message.get("headers", []))}
                if message["status"] < 400:
                    await send(message)
                else:
                    held["start"] = message
                return
            if "start" not in held or message["type"] != "http.response.body":
                await send(message)
                return
            parts.append(message.get("body", b""))
            if message.get("more_body"):
                return
            text = self.scrub(self.clean(b"".join(parts).decode("utf-8", "surrogateescape")))
            body = text.encode("utf-8", "surrogateescape")
            start = held.pop("start")
            headers = [(n, v) for n, v in start["headers"] if n.lower() != b"content-length"]
            headers.append((b"content-length", str(len(body)).encode()))
            await send({**start, "headers": headers})
            await send({"type": "http.response.body", "body": body})

        await self.app(scope, receive, cleaned_send)


# --- artifacts only in the tenant's store ----------------------------------------------------------------


def is_proxied_location(location: str) -> bool:
    return bool(PROXIED_ROOT.fullmatch(location)) and ".." not in location.split("/")


def is_allowed_model_source(source: str) -> bool:
    if MODEL_SOURCE.fullmatch(source):
        return ".." not in source.split("/")
    return is_proxied_location(source)


def refused(message: str):
    from flask import Response

    body = json.dumps({"error_code": "INVALID_PARAMETER_VALUE", "message": message})
    return Response(body, status=400, mimetype="application/json")


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


# --- FL project users the deployment declared ----------------------------------------------------------


def ensure_fl_users_when_up(spec: str, local_uri: str, admin_password: str, timeout: float = 600,
                            serve_spec: str = "") -> None:
    """In a background thread: once the server answers, create or re-key each declared project user (``spec``:
    fl-<project>, EDIT on the project) and model server user (``serve_spec``: serve-<project>, READ on its
    registered model)."""
    import threading

    from ..configuration.schema import ConfigError
    from .users import AuthAdmin, UserError, ensure_project_user, ensure_serving_user, wait_until_healthy

    def work() -> None:
        if not wait_until_healthy(local_uri, timeout):
            logging.getLogger("flops_mlops").error("FL project users: %s did not answer; none ensured", local_uri)
            return
        admin = AuthAdmin(local_uri, admin_password)
        for items, ensure, grant in ((spec, ensure_project_user, "EDIT on project"),
                                     (serve_spec, lambda a, p, w: ensure_serving_user(a, p, w, create=True),
                                      "READ on the registered model")):
            for item in filter(None, items.split(",")):
                project, _, password = item.partition(":")
                try:
                    user = ensure(admin, project, password)
                except (UserError, ConfigError) as exc:
                    logging.getLogger("flops_mlops").error("project user for %s: %s", project, exc)
                    continue
                print(f"project user {user}: {grant} {project}", flush=True)

    threading.Thread(target=work, name="flops-fl-users", daemon=True).start()


def refuse_user_listing_to_non_admins():
    """Flask before_request hook (after the login check): only the admin lists the users and their grants.

    MLflow answers /users/list to any logged-in user; an FL project user or a data scientist has no need to
    learn who else uses the tenant's server and what each may see.
    """
    from flask import request
    from mlflow.server.auth import make_forbidden_response, sender_is_admin

    if endpoint_of(request.path) == "mlflow/users/list" and not sender_is_admin():
        return make_forbidden_response()
    return None


# --- the app -------------------------------------------------------------------------------------------


# How long a checked login is remembered. Without it every request pays the password hash check (tens of ms by
# design, 0.5 s and more on a busy edge node), and a model download of a few files costs seconds. MLflow keys the
# cache by an HMAC of the password with a per-process key and drops a user's entries when the user's password,
# admin flag or existence changes through the API; the server is one process (runner.py), so those
# changes take effect at once. Only a change made behind the server's back (its SQLite file) waits this long.
AUTH_CACHE_SECONDS = 30


def write_auth_config(database: Path) -> Path:
    """basic_auth.ini beside the auth database: every user sees nothing until granted (NO_PERMISSIONS), and a
    checked login is remembered for AUTH_CACHE_SECONDS."""
    folder = database.parent
    folder.mkdir(parents=True, exist_ok=True, mode=0o700)
    path = folder / "basic_auth.ini"
    text = ("[mlflow]\n"
            "default_permission = NO_PERMISSIONS\n"
            f"database_uri = sqlite:///{database}\n"
            f"admin_username = {ADMIN_USERNAME}\n"
            "authorization_function = mlflow.server.auth:authenticate_request_basic_auth\n"
            f"auth_cache_ttl_seconds = {AUTH_CACHE_SECONDS}\n")
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w", encoding="utf-8") as handle:
        handle.write(text)
    os.chmod(path, 0o600)
    return path


def create_app():
    """The `flops-basic-auth` app factory (in the server's process): login, then our guards, then MLflow."""
    os.umask(0o077)  # everything this server creates (auth database, temporary files) is private
    clean = make_redactor(secrets_from_environment(dict(os.environ)))
    redact_process_output(clean)
    database = os.environ.get("FLOPS_AUTH_DB", "")
    if not database or not os.path.isabs(database):
        raise SystemExit("tracking server: FLOPS_AUTH_DB must be the absolute path of the auth database")
    os.environ["MLFLOW_AUTH_CONFIG_PATH"] = str(write_auth_config(Path(database)))
    os.environ.setdefault("MLFLOW_BASIC_AUTH_FAIL_CLOSED", "true")
    os.environ.setdefault("MLFLOW_SERVER_ENABLE_GRAPHQL_AUTH", "true")

    from mlflow.server import app as flask_app
    from mlflow.server.auth import create_app as basic_auth_app

    app = basic_auth_app(flask_app)
    # After the login check MLflow registered: these run for logged-in users only (anonymous ones get 401).
    checks.install(app, flask_app)  # bad input: a 400 naming what is wrong; no internals in any answer
    flask_app.before_request(refuse_foreign_artifact_locations)
    flask_app.before_request(refuse_user_listing_to_non_admins)
    flask_app.after_request(add_first_visit_defaults)  # the UI opens on model training, not GenAI (ui.py)
    redact_process_output(clean)  # handlers MLflow's auth module added while loading
    if os.environ.get("FLOPS_FL_USERS") or os.environ.get("FLOPS_SERVE_USERS"):
        ensure_fl_users_when_up(os.environ.get("FLOPS_FL_USERS", ""), os.environ.get("FLOPS_LOCAL_URI", ""),
                                os.environ.get("MLFLOW_AUTH_ADMIN_PASSWORD", ""),
                                serve_spec=os.environ.get("FLOPS_SERVE_USERS", ""))
    return RedactErrorAnswers(app, clean, checks.without_internals)
