"""The tracking server's web app: MLflow's basic-auth app, with our guards around it.

The tracking server's process builds it (runner.py; or `mlflow server --app-name flops-basic-auth`,
which loads ``create_app`` from the ``mlflow.app`` entry point group in its uvicorn worker). It returns MLflow's
own basic-auth app (``mlflow.server.auth``: users, passwords and permissions in the tenant's auth database, in the
backend store's server with MySQL: auth_store.py),
configured from the environment, and adds:

- **No secret leaves the process.** Every store password and key this server holds is replaced by ``***`` in
  HTTP error answers (MLflow's FTP repository puts its whole URI, password included, into a 500) and in every
  line the process writes to its log. Any ``scheme://user:password@`` in those is cut to ``scheme://user:***@``.
- **Artifacts stay in the tenant's store** (locations.py). An experiment may only have the proxied artifact root
  (``mlflow-artifacts:/...``); a model version only a source inside it (``models:/``, ``runs:/``,
  ``mlflow-artifacts:/``). Artifact uploads and downloads of a run or model version elsewhere are refused.
  Both checks run after MLflow's login check, so an anonymous client still gets 401.
- **Only the admin lists users** (and their grants): MLflow shows the list to any logged-in user.
- **Bad input is a 400 that names what is wrong, and no answer shows internals** (checks.py): malformed bodies,
  names and artifact paths are refused before MLflow reads them; SQL, tracebacks and the host's paths are cut
  from every error answer.
- **Bounded bodies** (limits.py): every route but the artifact uploads takes at most 16 MB (413 beyond).
- **A storage quota** (quota_check.py, stores/quota.py): an upload past the tenant's artifact_store.quota is a 507.
- **Throttled, audited logins** (logins.py): repeated failed logins of a user name or from an address get a 429
  with a growing Retry-After; every password check writes one audit line (no secret) to the server's log.
- **A model version in one request** (model_archive.py): ``/flops/model-versions/archive`` answers with a tar of
  its files, for whoever may read them through MLflow's get-artifact route.
- **The UI opens on model training** (ui.py): on a first visit, not on GenAI, without its assistant panel, and an
  FL project's runs with their loss and accuracy.

It also makes sure the FL project users it was deployed with exist (containers: compose, Oakestra), once it
answers: ``fl-<project>`` with EDIT on that project's experiment and registered model only (users.py).

Environment (besides MLflow's own: MLFLOW_AUTH_ADMIN_PASSWORD, MLFLOW_FLASK_SERVER_SECRET_KEY):
  FLOPS_AUTH_DB    absolute path of the SQLite auth database (SQLite backend store); its folder also gets
                   basic_auth.ini (no secret in it). With a MySQL backend store the users and grants are in the
                   database <database>_auth beside the tracking database (auth_store.py); FLOPS_AUTH_DB is then only
                   an earlier release's file, which `upgrade-schema` moves in once
  FLOPS_FL_USERS   optional "project:password,...": FL project users to ensure
  FLOPS_SERVE_USERS optional "project:password,...": model server users (serve-<project>, READ on the model)
  FLOPS_LOCAL_URI  with FLOPS_FL_USERS: how this process reaches its own server (http://127.0.0.1:<port>)
  FLOPS_LOCAL_CA   with an https FLOPS_LOCAL_URI: the CA certificate it verifies its own server against
  FLOPS_TENANT     the tenant's id, for the login audit lines
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
from . import checks, logins, model_archive
from .locations import refuse_foreign_artifact_locations
from .quota_check import refuse_uploads_over_quota
from .checks import endpoint_of, request_json
from .limits import BodyLimit
from .ui import add_first_visit_defaults

ADMIN_USERNAME = "admin"
# Which environment variables hold secrets in the server (the store URIs also under MLflow's internal names).
SECRET_VARIABLES = ("MLFLOW_AUTH_ADMIN_PASSWORD", "MLFLOW_FLASK_SERVER_SECRET_KEY")
URI_VARIABLES = ("MLFLOW_BACKEND_STORE_URI", "_MLFLOW_SERVER_FILE_STORE", "MLFLOW_ARTIFACTS_DESTINATION",
                 "_MLFLOW_SERVER_ARTIFACT_DESTINATION", "MLFLOW_REGISTRY_STORE_URI", "_MLFLOW_SERVER_REGISTRY_STORE")
CREDENTIALS_IN_URI = re.compile(r"(?i)\b([a-z][a-z0-9+.-]*://[^\s/@:'\"]+):[^\s/@'\"]+@")


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


# --- FL project users the deployment declared ----------------------------------------------------------


def ensure_fl_users_when_up(spec: str, local_uri: str, admin_password: str, timeout: float = 600,
                            serve_spec: str = "", verify: str | bool = True) -> None:
    """In a background thread: once the server answers, create or re-key each declared project user (``spec``:
    fl-<project>, EDIT on the project) and model server user (``serve_spec``: serve-<project>, READ on its
    registered model). ``verify``: the CA an https ``local_uri`` is checked against."""
    import threading

    from ..configuration.schema import ConfigError
    from .users import AuthAdmin, UserError, ensure_project_user, ensure_serving_user, wait_until_healthy

    def work() -> None:
        if not wait_until_healthy(local_uri, timeout, verify):
            logging.getLogger("flops_mlops").error("FL project users: %s did not answer; none ensured", local_uri)
            return
        admin = AuthAdmin(local_uri, admin_password, verify=verify)
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


# Routes only the tenant's admin may call, and why. MLflow answers them for any logged-in user: /users/list tells
# who else uses the server and what each may see; a create makes the caller MANAGE its new experiment or model, so
# a read-only user could fill the store under names of its own. Here each FL project's experiment and registered
# model are created for it by the admin (`round`, or the tracking server for the projects its deployment declares).
ADMIN_ONLY = {
    "mlflow/users/list": "only the tenant's admin lists the users and their grants",
    "mlflow/experiments/create": "only the tenant's admin creates experiments: an FL project's is created for it "
                                 "when it first runs",
    "mlflow/registered-models/create": "only the tenant's admin creates registered models: an FL project's is "
                                       "created for it when it first runs",
}


def refuse_admin_routes_to_others():
    """Flask before_request hook (after the login check): ADMIN_ONLY routes answer 403 to every other user. A create
    of a name that exists passes (MLflow answers RESOURCE_ALREADY_EXISTS): MLflow's clients ask for it before they
    register a model version, and the project's registered model is there."""
    from flask import Response, request
    from mlflow.exceptions import MlflowException
    from mlflow.server import handlers
    from mlflow.server.auth import sender_is_admin

    endpoint = endpoint_of(request.path)
    reason = ADMIN_ONLY.get(endpoint)
    if reason is None or sender_is_admin():
        return None
    if request.method == "POST" and endpoint.endswith("/create"):
        name = str(request_json().get("name") or "")
        try:
            if endpoint == "mlflow/experiments/create":
                exists = handlers._get_tracking_store().get_experiment_by_name(name) is not None
            else:
                exists = bool(handlers._get_model_registry_store().get_registered_model(name))
        except MlflowException:
            exists = False
        if exists:
            return None
    return Response(json.dumps({"error_code": "PERMISSION_DENIED", "message": reason}), status=403,
                    mimetype="application/json")


# --- the app -------------------------------------------------------------------------------------------


# How long a checked login is remembered (logins.remember_checked_passwords). Without it every request pays the
# password hash check (tens of ms by design, 0.5 s and more on a busy edge node), and a model download of a few files
# costs seconds. MLflow's own login cache is off: it keys a login by the password alone and forgets it only in the
# process that changed the user, so another instance of the tenant's server would accept an old password or a deleted
# user until the entry expires. Ours remembers a login together with the user's stored password hash, read from the
# auth database on every request: a password changed or a user deleted through any instance is refused at once.
AUTH_CACHE_SECONDS = 30


def write_auth_config(database_uri: str, folder: Path) -> Path:
    """basic_auth.ini in ``folder``: every user sees nothing until granted (NO_PERMISSIONS), MLflow's login cache
    off (see AUTH_CACHE_SECONDS). With a MySQL auth database the URI holds the tenant's database password: the
    file is 0600 in a 0700 folder, and read_auth_settings deletes it once MLflow has read it."""
    folder.mkdir(parents=True, exist_ok=True, mode=0o700)
    path = folder / "basic_auth.ini"
    text = ("[mlflow]\n"
            "default_permission = NO_PERMISSIONS\n"
            f"database_uri = {database_uri.replace('%', '%%')}\n"
            f"admin_username = {ADMIN_USERNAME}\n"
            "authorization_function = mlflow.server.auth:authenticate_request_basic_auth\n"
            "auth_cache_ttl_seconds = 0\n")
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w", encoding="utf-8") as handle:
        handle.write(text)
    os.chmod(path, 0o600)
    return path


def read_auth_settings() -> None:
    """Point MLflow's auth app at the tenant's auth database (auth_store.database_uri): it reads basic_auth.ini
    once, when mlflow.server.auth is imported. A SQLite auth database keeps its ini beside it (no secret in it);
    a MySQL one's ini is written to a private temporary folder and removed right after."""
    import shutil
    import tempfile

    from .auth_store import AuthStoreError, database_uri, is_mysql

    try:
        uri = database_uri(dict(os.environ))
    except AuthStoreError as exc:
        raise SystemExit(f"tracking server: {exc}") from None
    if not is_mysql(uri):
        os.environ["MLFLOW_AUTH_CONFIG_PATH"] = str(write_auth_config(uri, Path(os.environ["FLOPS_AUTH_DB"]).parent))
        import mlflow.server.auth  # noqa: F401
        return
    folder = Path(tempfile.mkdtemp(prefix="flops-auth-"))
    try:
        os.environ["MLFLOW_AUTH_CONFIG_PATH"] = str(write_auth_config(uri, folder))
        import mlflow.server.auth  # noqa: F401
    finally:
        shutil.rmtree(folder, ignore_errors=True)


def create_app():
    """The `flops-basic-auth` app factory (in the server's process): login, then our guards, then MLflow."""
    os.umask(0o077)  # everything this server creates (auth database, temporary files) is private
    clean = make_redactor(secrets_from_environment(dict(os.environ)))
    redact_process_output(clean)
    os.environ.setdefault("MLFLOW_BASIC_AUTH_FAIL_CLOSED", "true")
    os.environ.setdefault("MLFLOW_SERVER_ENABLE_GRAPHQL_AUTH", "true")
    read_auth_settings()  # imports mlflow.server.auth: after every setting it may read on import

    from mlflow.server import app as flask_app
    from mlflow.server import auth
    from mlflow.server.auth import create_app as basic_auth_app

    app = basic_auth_app(flask_app)
    logins.remember_checked_passwords(auth.store, AUTH_CACHE_SECONDS)
    logins.read_users_once_per_request(auth.store)  # the user row the login check read, not one read per call
    logins.watch_password_checks(auth.store)  # both login paths (Flask, FastAPI) check passwords through it
    # After the login check MLflow registered: these run for logged-in users only (anonymous ones get 401).
    checks.install(app, flask_app)  # bad input: a 400 naming what is wrong; no internals in any answer
    flask_app.before_request(refuse_foreign_artifact_locations)
    flask_app.before_request(refuse_admin_routes_to_others)
    flask_app.before_request(refuse_uploads_over_quota)  # artifact_store.quota, before the body is read
    flask_app.after_request(add_first_visit_defaults)  # the UI opens on model training, not GenAI (ui.py)
    model_archive.install(flask_app)  # a model version's files in one answer, for READ (model servers fetch it)
    redact_process_output(clean)  # handlers MLflow's auth module added while loading
    logins.audit_to(sys.stderr)  # the server's log, cleaned
    if os.environ.get("FLOPS_FL_USERS") or os.environ.get("FLOPS_SERVE_USERS"):
        ensure_fl_users_when_up(os.environ.get("FLOPS_FL_USERS", ""), os.environ.get("FLOPS_LOCAL_URI", ""),
                                os.environ.get("MLFLOW_AUTH_ADMIN_PASSWORD", ""),
                                serve_spec=os.environ.get("FLOPS_SERVE_USERS", ""),
                                verify=os.environ.get("FLOPS_LOCAL_CA") or True)
    throttled = logins.LoginThrottle(BodyLimit(app), os.environ.get("FLOPS_TENANT", ""), auth.is_unprotected_route)
    return RedactErrorAnswers(throttled, clean, checks.without_internals)
