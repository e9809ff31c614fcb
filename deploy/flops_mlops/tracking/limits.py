"""What one client may cost a tracking server: header bytes, body bytes and connections.

The Oakestra SLA gives a tracking server 384 MB; a flood must be refused early enough that the server stays within
it, and the memory must come back. uvicorn's default HTTP parser (httptools) keeps a request's headers however
large they are: four clients sending 32 MB of headers at once took a server from 343 to 616 MiB. So:

- **Headers:** the server parses HTTP with h11, which refuses a request whose line and headers exceed
  MAX_HEADER_BYTES (the connection is answered 400 and closed, before more is read);
- **Connections:** at most MAX_CONNECTIONS open at once (more are answered 503), BACKLOG waiting to be accepted;
- **Bodies:** every route but the artifact uploads takes at most MAX_BODY_BYTES (413 beyond it, whether the
  length is announced or the body is chunked): MLflow reads those bodies into memory. The uploads stream to a
  temporary file and on to the store.

runner.py passes uvicorn_settings() to uvicorn; `mlflow server` (tracking.job_execution) gets the same as
--uvicorn-opts (uvicorn_options()). app.py puts BodyLimit in front of MLflow's app.
"""

from __future__ import annotations

import json
import re

MAX_HEADER_BYTES = 64 * 1024  # request line and headers (a browser's are a few KB)
MAX_CONNECTIONS = 512  # open connections (idle kept ones too) and requests in progress; under the usual 1024 open files
BACKLOG = 128  # connections waiting to be accepted
MAX_BODY_BYTES = 16 * 1024 * 1024  # any body but an artifact upload (MLflow's largest batch is about 2 MB)
# Routes whose body is an artifact: PUT of the artifact proxy, the UI's upload-artifact (MLflow caps it at 10 MB).
UPLOAD = re.compile(r"^/(ajax-)?api/2\.0/mlflow-artifacts/artifacts/.+$")
UI_UPLOAD = "/ajax-api/2.0/mlflow/upload-artifact"


def uvicorn_settings() -> dict:
    """uvicorn.run keyword arguments that bound what clients may cost."""
    return {"http": "h11", "h11_max_incomplete_event_size": MAX_HEADER_BYTES,
            "limit_concurrency": MAX_CONNECTIONS, "backlog": BACKLOG}


def uvicorn_options() -> str:
    """The same as uvicorn command-line options (`mlflow server --uvicorn-opts`)."""
    return (f"--http h11 --h11-max-incomplete-event-size {MAX_HEADER_BYTES} --limit-concurrency {MAX_CONNECTIONS} "
            f"--backlog {BACKLOG}")


def is_upload(method: str, path: str) -> bool:
    return (method == "PUT" and bool(UPLOAD.match(path))) or (method == "POST" and path == UI_UPLOAD)


def too_large(limit: int) -> tuple[dict, bytes]:
    body = json.dumps({"error_code": "INVALID_PARAMETER_VALUE",
                       "message": f"the request body is larger than this route takes ({limit // 2**20} MB at most; "
                                  "artifacts go through the artifact upload routes)"}).encode()
    start = {"type": "http.response.start", "status": 413,
             "headers": [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode()),
                         (b"connection", b"close")]}
    return start, body


def content_length(headers: list[tuple[bytes, bytes]]) -> int | None:
    for name, value in headers:
        if name.lower() == b"content-length":
            try:
                return int(value)
            except ValueError:
                return None
    return None


class BodyLimit:
    """ASGI wrapper: bodies of every route but the artifact uploads are at most ``limit`` bytes (413 beyond)."""

    def __init__(self, app, limit: int = MAX_BODY_BYTES):
        self.app = app
        self.limit = limit

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http" or is_upload(scope.get("method", ""), scope.get("path", "")):
            return await self.app(scope, receive, send)
        announced = content_length(scope.get("headers", []))
        if announced is not None and announced > self.limit:
            return await self.refuse(send)
        seen = 0
        refused = False
        started = False

        async def counting_receive():
            nonlocal seen, refused
            if refused:
                return {"type": "http.disconnect"}
            message = await receive()
            if message["type"] == "http.request":
                seen += len(message.get("body", b""))
                if seen > self.limit:  # a chunked body that keeps coming: the app sees the client leave
                    refused = True
                    return {"type": "http.disconnect"}
            return message

        async def guarded_send(message):
            nonlocal started
            if refused:
                return  # the app's answer to a cut body is replaced by ours
            started = started or message["type"] == "http.response.start"
            await send(message)

        try:
            await self.app(scope, counting_receive, guarded_send)
        except Exception:
            if not refused:
                raise
        if refused and not started:
            await self.refuse(send)

    async def refuse(self, send) -> None:
        start, body = too_large(self.limit)
        await send(start)
        await send({"type": "http.response.body", "body": body})
