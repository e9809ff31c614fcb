"""Bad input gets a 400 that names what is wrong; no answer shows the server's internals.

MLflow answers some malformed requests with a 500 (a JSON array where it expects an object, an artifact file name
longer than the file system allows, a webhook event it does not know), and on MySQL a name longer than its column
with a 400 that quotes the SQL statement and its parameters. This module, run after MLflow's login check, refuses
those requests first:

- **JSON bodies** of the REST API must be a JSON object (a string holding one is accepted, as MLflow accepts
  double-encoded bodies of older clients); request_json() is the one reading of a body our guards share;
- **names** (experiment, registered model, run, user, webhook) have no control character (NUL, CR, LF, ...) and
  fit their database column (NAME_FIELDS);
- **webhook events** are ones MLflow knows; an **experiment id** in a body is digits;
- **artifact paths** (the proxy's routes and the UI's upload) have no empty, '.' or '..' segment and no segment
  longer than a file name may be (255 bytes).

And it answers what slips through without internals: an exception in a route that comes from its input
(ValueError, TypeError, ...) is a 400 naming the exception's message; any other is a 500 that says only that the
server failed (the traceback goes to the server's log). without_internals() is the last filter of every error
answer (app.RedactErrorAnswers): SQL statements, tracebacks and the server's file paths never leave it.
"""

from __future__ import annotations

import json
import logging
import re
from urllib.parse import unquote

log = logging.getLogger("flops_mlops.checks")

# Per route (without its API prefix): the name fields of its body and the length of their database columns
# (MLflow's dbmodels: experiments.name 256, runs.name 250, registered_models.name 256, webhooks.name 256, auth
# users.username 255).
NAME_FIELDS = {
    "mlflow/experiments/create": {"name": 256},
    "mlflow/experiments/update": {"new_name": 256},
    "mlflow/registered-models/create": {"name": 256},
    "mlflow/registered-models/rename": {"new_name": 256},
    "mlflow/model-versions/create": {"name": 256},
    "mlflow/runs/create": {"run_name": 250},
    "mlflow/runs/update": {"run_name": 250},
    "mlflow/users/create": {"username": 255},
    "mlflow/webhooks": {"name": 256},
}
CONTROL = re.compile(r"[\x00-\x1f\x7f]")
MAX_SEGMENT_BYTES = 255  # a file name on Linux file systems
ARTIFACT_ROUTE = re.compile(r"^/(ajax-)?api/2\.0/mlflow-artifacts/artifacts(/(?P<path>.*))?$")
# Exceptions a route raises on input it cannot read: a 400, not a 500.
INPUT_ERRORS = (ValueError, TypeError, KeyError, IndexError, AttributeError, OverflowError, RecursionError)

# SQL statements as the drivers quote them (upper case), and the drivers' own markers.
SQL = re.compile(r"\bINSERT INTO\b|\bUPDATE \S+ SET\b|\bDELETE FROM\b|\bSELECT\b.{0,400}?\bFROM\b|"
                 r"(?i:\[SQL: |\(pymysql\.|\(sqlite3\.|\(MySQLdb\.|sqlalchemy\.)", re.DOTALL)
TRACEBACK = re.compile(r"Traceback \(most recent call last\)|File \"/[^\"]+\", line \d+")
# Absolute paths of the host (a temporary folder, the state dir, the venv), not URI paths (mlflow-artifacts:/...).
HOST_PATH = re.compile(r"(?<![\w:/.-])/(?:tmp|var|srv|opt|home|root|usr|etc|work|proc|run|nonexistent)"
                       r"(?:/[^\s'\"<>]*)?")


class BadInput(ValueError):
    """What is wrong with the request (HTTP 400)."""


def endpoint_of(path: str) -> str:
    """The route without its API prefix: /api/2.0/mlflow/x and /ajax-api/2.0/mlflow/x give mlflow/x."""
    for prefix in ("/api/2.0/", "/ajax-api/2.0/", "/api/3.0/", "/ajax-api/3.0/"):
        if path.startswith(prefix):
            return path[len(prefix):]
    return path.lstrip("/")


def decoded_body(raw: bytes) -> dict | None:
    """The JSON object of a request body (None when empty); BadInput when it is something else."""
    if not raw.strip():
        return None
    try:
        value = json.loads(raw)
        if isinstance(value, str):  # double-encoded, as older clients send it (MLflow decodes it again)
            value = json.loads(value)
    except (ValueError, RecursionError):
        raise BadInput("the request body is not valid JSON") from None
    if not isinstance(value, dict):
        raise BadInput(f"the request body must be a JSON object, got a JSON {type(value).__name__}")
    return value


def request_json() -> dict:
    """The current Flask request's JSON object ({} when it has no body): what MLflow reads from it."""
    from flask import request

    return decoded_body(request.get_data(cache=True)) or {}


def name_problem(field: str, value, limit: int) -> str | None:
    if value is None:
        return None
    if not isinstance(value, str):
        return f"{field}: expected a string, got {type(value).__name__}"
    if CONTROL.search(value):
        return f"{field}: a name may not hold control characters (NUL, CR, LF, tab, ...)"
    if len(value) > limit:
        return f"{field}: at most {limit} characters, got {len(value)}"
    return None


def experiment_id_problem(endpoint: str, path: str, body: dict) -> str | None:
    """An experiment id is digits (the SQL stores' ids); the version 2 trace start needs one (MLflow fails on an
    empty one with a 500)."""
    value = body.get("experiment_id")
    if value is None and endpoint == "mlflow/traces" and "/2.0/" in path:
        return "experiment_id: required"
    if value is not None and not str(value).isdigit():
        return f"experiment_id: expected an experiment id (digits), got {str(value)[:40]!r}"
    return None


def webhook_problem(body: dict) -> str | None:
    from mlflow.entities.webhook import WebhookAction, WebhookEntity, WebhookEvent

    events = body.get("events")
    if events is None:
        return None
    if not isinstance(events, list):
        return "events: expected a list of {entity, action}"
    for i, event in enumerate(events):
        entity = event.get("entity") if isinstance(event, dict) else None
        action = event.get("action") if isinstance(event, dict) else None
        try:
            WebhookEvent(WebhookEntity(entity), WebhookAction(action))
        except (ValueError, TypeError) as exc:
            entities = ", ".join(e.value for e in WebhookEntity if e.value != "entity_unspecified")
            actions = ", ".join(a.value for a in WebhookAction if a.value != "action_unspecified")
            return f"events[{i}]: {exc} (entities: {entities}; actions: {actions})"
    return None


def path_problem(path: str, file_wanted: bool = False) -> str | None:
    """What is wrong with an artifact path (percent-decoded as MLflow decodes it), or None."""
    for _ in range(3):
        path = unquote(path)
    parts = path.split("/")
    if file_wanted and parts[-1] in ("", ".", ".."):
        return f"artifact path {path[:80]!r}: must end with a file name"
    for part in parts[:-1] if parts[-1] == "" else parts:
        if part in ("", ".", ".."):
            return f"artifact path {path[:80]!r}: empty, '.' and '..' segments are not allowed"
        if len(part.encode("utf-8", "surrogatepass")) > MAX_SEGMENT_BYTES:
            return f"artifact path: a file or folder name is at most {MAX_SEGMENT_BYTES} bytes, got {len(part)}"
        if CONTROL.search(part):
            return "artifact path: control characters are not allowed"
    return None


def json_error(status: int, code: str, message: str) -> tuple[int, bytes]:
    return status, json.dumps({"error_code": code, "message": message}).encode()


# --- Flask routes (after MLflow's login check) -----------------------------------------------------------


def refuse_bad_input():
    """Flask before_request hook: the body's shape, names and webhook events; the UI upload's path."""
    from flask import Response, request

    endpoint = endpoint_of(request.path)
    problem = None
    try:
        if endpoint == "mlflow/upload-artifact" and request.args.get("path"):
            problem = path_problem(request.args["path"], file_wanted=True)
        elif request.method in ("POST", "PATCH", "DELETE") and request.path.startswith(("/api/", "/ajax-api/")):
            if not request.mimetype or request.mimetype == "application/json":
                body = request_json()
                fields = NAME_FIELDS.get("mlflow/webhooks" if endpoint.startswith("mlflow/webhooks") else endpoint, {})
                problem = next((why for field, limit in fields.items()
                                if (why := name_problem(field, body.get(field), limit))), None)
                problem = problem or experiment_id_problem(endpoint, request.path, body)
                if problem is None and endpoint.startswith("mlflow/webhooks"):
                    problem = webhook_problem(body)
    except BadInput as exc:
        problem = str(exc)
    if problem is None:
        return None
    status, body = json_error(400, "INVALID_PARAMETER_VALUE", problem)
    return Response(body, status=status, mimetype="application/json")


def flask_error(exc: Exception):
    """Flask error handler of every exception no route caught: 400 for input it could not read, else 500."""
    from flask import Response
    from mlflow.exceptions import MlflowException
    from werkzeug.exceptions import HTTPException

    if isinstance(exc, HTTPException):
        return exc
    if isinstance(exc, MlflowException):
        return Response(exc.serialize_as_json(), status=exc.get_http_status_code(), mimetype="application/json")
    status, body = classify(exc)
    return Response(body, status=status, mimetype="application/json")


def classify(exc: BaseException) -> tuple[int, bytes]:
    """The answer to an exception that escaped a route: its input's fault (400) or the server's (500)."""
    if isinstance(exc, INPUT_ERRORS) or isinstance(exc, UnicodeError):
        log.warning("a route could not read its input: %s: %s", type(exc).__name__, exc, exc_info=exc)
        message = without_internals(str(exc).splitlines()[0][:200] if str(exc) else type(exc).__name__)
        return json_error(400, "INVALID_PARAMETER_VALUE", f"the request could not be read: {message}")
    log.error("a route failed: %s", type(exc).__name__, exc_info=exc)
    return json_error(500, "INTERNAL_ERROR", "the server failed on this request; its log has the details")


# --- FastAPI routes (inside MLflow's app, after its login check) ------------------------------------------


class ArtifactPathCheck:
    """ASGI middleware of the artifact proxy's routes: a path MLflow would choke on is a 400."""

    def __init__(self, app):
        self.app = app

    async def __call__(self, scope, receive, send):
        match = ARTIFACT_ROUTE.match(scope.get("path", "")) if scope["type"] == "http" else None
        if match and match["path"] is not None:
            problem = path_problem(match["path"], file_wanted=scope.get("method") == "PUT")
            if problem is not None:
                status, body = json_error(400, "INVALID_PARAMETER_VALUE", problem)
                await send({"type": "http.response.start", "status": status,
                            "headers": [(b"content-type", b"application/json"),
                                        (b"content-length", str(len(body)).encode())]})
                await send({"type": "http.response.body", "body": body})
                return
        await self.app(scope, receive, send)


async def fastapi_error(request, exc: Exception):
    """FastAPI's handler of every exception a native route raised (MLflow's artifact proxy, ...)."""
    from starlette.responses import Response

    status, body = classify(exc)
    return Response(body, status_code=status, media_type="application/json")


# --- every error answer ------------------------------------------------------------------------------------


def without_internals(text: str) -> str:
    """An error answer without SQL, tracebacks or the host's file paths: a message is cut where the SQL or
    traceback starts (what comes before it, such as "Experiment(name=x) already exists.", stays), and a path of
    the host becomes <path>."""
    try:
        answer = json.loads(text)
    except ValueError:
        answer = None
    if isinstance(answer, dict) and isinstance(answer.get("message"), str):
        message = _cut(answer["message"])
        if message != answer["message"]:
            return json.dumps({**answer, "message": message})
        return HOST_PATH.sub("<path>", text)
    if _cut(text) != text:  # not an MLflow answer: nothing of it is kept
        return "the server could not process this request; its log has the details"
    return HOST_PATH.sub("<path>", text)


def _cut(message: str) -> str:
    found = [m.start() for m in (SQL.search(message), TRACEBACK.search(message)) if m]
    if not found:
        return message
    kept = re.sub(r"[\s(:]*(Error|Exception)?[\s(:]*$", "", message[:min(found)]).strip()
    kept = HOST_PATH.sub("<path>", kept)
    details = "the backend store's details are in the server's log"
    return f"{kept} ({details})" if kept else f"the backend store refused this request ({details})"


def install(fastapi_app, flask_app) -> None:
    """The checks and error handlers, after MLflow's login check (call after MLflow's auth app is built)."""
    from starlette.middleware import Middleware

    flask_app.before_request(refuse_bad_input)
    flask_app.register_error_handler(Exception, flask_error)
    fastapi_app.user_middleware.append(Middleware(ArtifactPathCheck))  # innermost: after the login check
    fastapi_app.add_exception_handler(Exception, fastapi_error)
