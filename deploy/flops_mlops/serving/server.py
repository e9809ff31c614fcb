"""The model server: one registered model of one tenant, served by MLflow's scoring server in this process.

`python -m flops_mlops.serving.server`, started by `flops-mlops serve` (native), and the entry point of the
model-server image (compose, Oakestra, pyinfra). MLflow's scoring server app (``mlflow.pyfunc.scoring_server.init``:
``/ping``, ``/health``, ``/version``, ``/invocations``) runs under uvicorn in this process, on this Python: no
conda or virtualenv is created (MLflow's env_manager "local"). The model's requirements.txt must be met by this
environment; if not, the server does not start (exit 2, each unmet requirement named).

Where the model comes from (environment):
  FLOPS_SERVE_MODEL_DIR     a model folder on disk (an image with a baked version): served as is, offline
                            (FLOPS_SERVE_MODEL_NAME and FLOPS_SERVE_VERSION, if set, only say what it is); or
  MLFLOW_TRACKING_URI, MLFLOW_TRACKING_USERNAME, MLFLOW_TRACKING_PASSWORD
                            the tenant's tracking server and a user with READ on the registered model only
  MLFLOW_TRACKING_SERVER_CERT_PATH  with an https:// tracking server: the CA certificate it is verified against
                            (default: the system's store)
  FLOPS_TRACKING_CA_B64     instead (Oakestra, which passes no files): that CA certificate as base64url; written to
                            a private file that MLFLOW_TRACKING_SERVER_CERT_PATH then names (configuration/pem_env.py)
  FLOPS_SERVE_MODEL_NAME    registered model (= FL project)
  FLOPS_SERVE_ALIAS         alias to serve (default champion), or FLOPS_SERVE_VERSION: a fixed version
  FLOPS_SERVE_POLL_SECONDS  with an alias: how often to ask where the alias points (default 15; 0: never). When it
                            has moved, the new version is fetched, checked and loaded, then swapped in between
                            requests; until then, and if anything about the new version fails, the old one serves.
  FLOPS_SERVE_CACHE         folder for fetched versions (default ./models)
Serving:
  FLOPS_SERVE_HOST, FLOPS_SERVE_PORT   where to listen (default 127.0.0.1:8080)
  FLOPS_SERVE_MAX_BODY_BYTES           larger /invocations bodies get 413 (default 4 MiB)

Besides MLflow's routes, ``GET /model`` says what is served: {"name", "version", "alias", "source"}.
Bad requests to ``/invocations`` get a 4xx in MLflow's error shape ({"error_code", "message"}): MLflow's own
answers for what it checks, ours for a missing content type, an oversized body, and for payloads MLflow's parser
fails on with something other than its own exception (a JSON list, say).
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
import socket
import sys
import threading
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ..configuration import pem_env
from .fetch import FetchError, Registry, unmet_requirements

DEFAULT_MAX_BODY = 4 * 2**20
log = logging.getLogger("flops_mlops.serving.server")


class ServeError(Exception):
    """The server cannot start: bad settings, a model that cannot be fetched or whose requirements are unmet."""


@dataclass(frozen=True)
class Served:
    """A loaded model version and the scoring app that serves it."""

    name: str
    version: str
    alias: str | None
    source: str
    app: Any


def load(model_dir: Path, name: str, version: str, alias: str | None, source: str) -> Served:
    problems = unmet_requirements(model_dir)
    if problems:
        raise ServeError(f"model {name} version {version} needs what this environment does not have (no conda or "
                         "virtualenv is created at run time; log the model with the versions pinned in "
                         "deploy/images/constraints.txt, or build an environment for it):\n  "
                         + "\n  ".join(problems))
    keras_backend(model_dir)
    import mlflow.pyfunc
    from mlflow.pyfunc import scoring_server

    model = mlflow.pyfunc.load_model(str(model_dir))
    return Served(name, version, alias, source, scoring_server.init(model))


def keras_backend(model_dir: Path) -> None:
    """A Keras 3 model loads only on a backend, which MLflow records but does not set: set KERAS_BACKEND from the
    MLmodel before Keras is imported (an explicit setting wins)."""
    import yaml

    flavors = (yaml.safe_load((model_dir / "MLmodel").read_text(encoding="utf-8")) or {}).get("flavors") or {}
    backend = (flavors.get("keras") or {}).get("keras_backend")
    if backend and "keras" not in sys.modules:
        os.environ.setdefault("KERAS_BACKEND", str(backend))


def error_body(code: str, message: str) -> bytes:
    """MLflow's error shape (MlflowException.serialize_as_json)."""
    return json.dumps({"error_code": code, "message": message}).encode()


class ScoringGuard:
    """The ASGI app uvicorn runs: request checks MLflow's app lacks, ``/model``, and the swap on reload."""

    def __init__(self, served: Served, max_body: int):
        self.served = served
        self.max_body = max_body

    async def __call__(self, scope, receive, send) -> None:
        served = self.served  # one version for the whole request, even if a reload swaps it meanwhile
        if scope["type"] != "http":
            return await served.app(scope, receive, send)
        if scope["path"] == "/model" and scope["method"] == "GET":
            body = json.dumps({"name": served.name, "version": served.version, "alias": served.alias,
                               "source": served.source}).encode()
            return await respond(send, 200, body)
        if scope["path"] != "/invocations":
            return await served.app(scope, receive, send)
        headers = dict(scope["headers"])
        if not headers.get(b"content-type"):
            return await respond(send, 415, error_body(
                "BAD_REQUEST", "no Content-Type: send application/json, text/csv or application/vnd.apache.parquet"))
        declared = headers.get(b"content-length")
        if declared is not None and (not declared.isdigit() or int(declared) > self.max_body):
            return await self._too_large(send)
        chunks, size = [], 0
        while True:
            message = await receive()
            if message["type"] == "http.disconnect":
                return
            chunks.append(message.get("body", b""))
            size += len(chunks[-1])
            if size > self.max_body:
                return await self._too_large(send)
            if not message.get("more_body"):
                break
        body = b"".join(chunks)
        if not body:
            return await respond(send, 400, error_body("BAD_REQUEST", "empty body: send the rows to predict"))
        await self._invoke(served, scope, body, send)

    async def _invoke(self, served: Served, scope, body: bytes, send) -> None:
        """MLflow's /invocations with ``body``. Its error answers leave in MLflow's error shape, whatever MLflow sent
        (its 415s are plain text; an exception its parser does not catch is a 500, made a 400 here: the payload is
        the only input), without the server-side stack trace."""
        delivered = False

        async def replay():
            nonlocal delivered
            if delivered:
                await asyncio.Event().wait()  # the body was read; nothing more comes
            delivered = True
            return {"type": "http.request", "body": body, "more_body": False}

        start: dict[str, Any] = {"status": 500}
        parts: list[bytes] = []

        async def capture(message):
            if message["type"] == "http.response.start":
                start.update(message)
            else:
                parts.append(message.get("body", b""))

        try:
            await served.app(scope, replay, capture)
        except Exception as exc:
            log.warning("invocations: %s: %s", type(exc).__name__, exc)
            parts = [f"the payload could not be read as model input ({type(exc).__name__})".encode()]
            start = {"status": 500}
        status, answer = start["status"], b"".join(parts)
        if status < 400:
            await send(start)
            return await send({"type": "http.response.body", "body": answer})
        try:
            error = json.loads(answer)
            code, message = error["error_code"], error["message"]
        except (ValueError, KeyError, TypeError):
            code, message = "BAD_REQUEST", answer.decode("utf-8", errors="replace").strip()
        await respond(send, 400 if status == 500 else status, error_body(code, message))

    async def _too_large(self, send) -> None:
        await respond(send, 413, error_body(
            "RESOURCE_LIMIT_EXCEEDED", f"request body larger than {self.max_body} bytes "
                                       "(FLOPS_SERVE_MAX_BODY_BYTES); send fewer rows per request"))


async def respond(send, status: int, body: bytes) -> None:
    await send({"type": "http.response.start", "status": status,
                "headers": [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode())]})
    await send({"type": "http.response.body", "body": body})


# --- where the model comes from ---------------------------------------------------------------------------


@dataclass(frozen=True)
class Settings:
    name: str
    alias: str | None
    version: str | None
    model_dir: Path | None
    cache: Path
    poll: float
    host: str
    port: int
    max_body: int
    registry: Registry | None

    @classmethod
    def from_environment(cls, env: dict[str, str]) -> Settings:
        def number(key: str, default: str, kind=int):
            value = env.get(key, default)
            try:
                result = kind(value)
            except ValueError:
                raise ServeError(f"{key}: expected a number, got {value!r}") from None
            if result < 0:
                raise ServeError(f"{key}: expected a number >= 0, got {value!r}")
            return result

        model_dir = Path(env["FLOPS_SERVE_MODEL_DIR"]) if env.get("FLOPS_SERVE_MODEL_DIR") else None
        name = env.get("FLOPS_SERVE_MODEL_NAME", "")
        version = env.get("FLOPS_SERVE_VERSION") or None
        alias = None if version else env.get("FLOPS_SERVE_ALIAS") or "champion"
        registry = None
        if model_dir is None:
            missing = [key for key in ("MLFLOW_TRACKING_URI", "MLFLOW_TRACKING_USERNAME", "MLFLOW_TRACKING_PASSWORD",
                                       "FLOPS_SERVE_MODEL_NAME") if not env.get(key)]
            if missing:
                raise ServeError(f"{', '.join(missing)}: not set (or set FLOPS_SERVE_MODEL_DIR to serve a model "
                                 "folder)")
            registry = Registry(env["MLFLOW_TRACKING_URI"], env["MLFLOW_TRACKING_USERNAME"],
                                env["MLFLOW_TRACKING_PASSWORD"],
                                verify=env.get("MLFLOW_TRACKING_SERVER_CERT_PATH") or True)
        elif not (model_dir / "MLmodel").is_file():
            raise ServeError(f"FLOPS_SERVE_MODEL_DIR: {model_dir} holds no MLmodel file")
        port = number("FLOPS_SERVE_PORT", "8080")
        if not 1 <= port <= 65535:
            raise ServeError(f"FLOPS_SERVE_PORT: expected a TCP port, got {port}")
        return cls(name=name, alias=alias, version=version, model_dir=model_dir,
                   cache=Path(env.get("FLOPS_SERVE_CACHE", "models")), poll=number("FLOPS_SERVE_POLL_SECONDS", "15",
                                                                                  float),
                   host=env.get("FLOPS_SERVE_HOST", "127.0.0.1"), port=port,
                   max_body=number("FLOPS_SERVE_MAX_BODY_BYTES", str(DEFAULT_MAX_BODY)), registry=registry)


def fetch_and_load(settings: Settings, version: str) -> Served:
    assert settings.registry is not None
    folder = settings.registry.fetch(settings.name, version, settings.cache / f"{settings.name}-v{version}")
    return load(folder, settings.name, version, settings.alias,
                f"{settings.registry.tracking_uri} models:/{settings.name}/{version}")


def first_model(settings: Settings) -> Served:
    if settings.model_dir is not None:  # baked: FLOPS_SERVE_MODEL_NAME and FLOPS_SERVE_VERSION only describe it
        return load(settings.model_dir, settings.name, settings.version or "", None, str(settings.model_dir))
    assert settings.registry is not None
    version = settings.version or settings.registry.version_of(settings.name, settings.alias or "champion")
    return fetch_and_load(settings, version)


def follow_alias(settings: Settings, guard: ScoringGuard, stop: threading.Event) -> None:
    """Every ``settings.poll`` seconds: if the alias points elsewhere, load that version and swap it in.

    A refused login ends the following (the version loaded is still served): the password was re-keyed by another
    start, and asking again every poll would only trip the tracking server's login throttle for this user and this
    address (tracking/logins.py). A 429 is waited out (its Retry-After) before the next poll."""
    while not stop.wait(settings.poll):
        try:
            version = settings.registry.version_of(settings.name, settings.alias)
            if version == guard.served.version:
                continue
            log.info("alias %s of %s moved to version %s; loading it", settings.alias, settings.name, version)
            guard.served = fetch_and_load(settings, version)
            log.info("serving %s version %s", settings.name, version)
        except FetchError as exc:  # keep serving the old version
            log.error("alias %s of %s: reload failed, still serving version %s: %s", settings.alias, settings.name,
                      guard.served.version, exc)
            if exc.status == 401:
                log.error("alias %s of %s: no longer followed (the login was refused: re-keyed by another start?); "
                          "restart the server to follow it again", settings.alias, settings.name)
                return
            if exc.retry_after:
                stop.wait(exc.retry_after)
        except Exception as exc:  # keep serving the old version
            log.error("alias %s of %s: reload failed, still serving version %s: %s", settings.alias, settings.name,
                      guard.served.version, exc)


def main() -> int:
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s", stream=sys.stderr)
    try:
        pem_env.export_tracking_ca()  # Oakestra with tracking.tls: FLOPS_TRACKING_CA_B64 as the CA file to verify
        settings = Settings.from_environment(dict(os.environ))
        # The port is taken before the model is fetched and loaded: no one else takes it meanwhile.
        listener = socket.socket(socket.AF_INET6 if ":" in settings.host else socket.AF_INET, socket.SOCK_STREAM)
        listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            listener.bind((settings.host, settings.port))
        except OSError as exc:
            raise ServeError(f"FLOPS_SERVE_HOST/FLOPS_SERVE_PORT: cannot listen on {settings.host}:{settings.port} "
                             f"({exc.strerror})") from None
        served = first_model(settings)
    except (ServeError, FetchError, pem_env.PemError) as exc:
        print(f"error: {exc}", file=sys.stderr, flush=True)
        return 2
    import uvicorn

    guard = ScoringGuard(served, settings.max_body)
    stop = threading.Event()
    if settings.registry is not None and settings.alias and settings.poll > 0:
        threading.Thread(target=follow_alias, args=(settings, guard, stop), daemon=True,
                         name="follow-alias").start()
    log.info("serving %s version %s (%s) on %s:%s", served.name, served.version, served.source, settings.host,
             settings.port)
    server = uvicorn.Server(uvicorn.Config(guard, host=settings.host, port=settings.port, lifespan="off",
                                           log_level="info", access_log=False))
    server.run(sockets=[listener])
    stop.set()
    return 0


if __name__ == "__main__":
    sys.exit(main())
