"""The tracking server's guards: which artifact locations pass, and what secrets look like once cleaned."""

from __future__ import annotations

import asyncio
import json
import logging
import sys

import pytest
from flops_mlops.tracking import app as tracking_app
from flops_mlops.tracking import locations

SECRETS = ["s3cr3t/pass+word", "admin-secret-123"]


@pytest.mark.parametrize("location, allowed", [
    ("mlflow-artifacts:/1", True),
    ("mlflow-artifacts:/project/7/models", True),
    ("", False),
    ("file:///var/lib/mysql", False),
    ("ftp://flops_globex:pw@127.0.0.1:2121/artifacts", False),
    ("http://169.254.169.254/latest", False),
    ("relative/path", False),
    ("mlflow-artifacts://evil.example/1", False),  # a host sends clients elsewhere
    ("mlflow-artifacts:/../../etc", False),
    ("mlflow-artifacts:/1/%2e%2e/x", False),
    ("mlflow-artifacts:/1/../x", False),
    ("MLFLOW-ARTIFACTS:/1", False),
])
def test_only_the_proxied_root_is_an_artifact_location(location, allowed):
    assert locations.is_proxied_location(location) is allowed


@pytest.mark.parametrize("source, allowed", [
    ("models:/m-0123abcd", True),
    ("runs:/0123abcd/model", True),
    ("mlflow-artifacts:/1/models/m-1/artifacts", True),
    ("file:///etc", False),
    ("ftp://user:pw@host/x", False),
    ("models:/../x", False),
    ("http://example.org/model", False),
])
def test_model_version_sources_must_be_in_the_store(source, allowed):
    assert locations.is_allowed_model_source(source) is allowed


def test_secrets_come_from_keys_and_from_inside_store_uris():
    env = {"MLFLOW_AUTH_ADMIN_PASSWORD": "admin-secret-123", "MLFLOW_FLASK_SERVER_SECRET_KEY": "key-123",
           "_MLFLOW_SERVER_ARTIFACT_DESTINATION": "ftp://flops_acme:s3cr3t%2Fpass%2Bword@ftp:21/artifacts",
           "_MLFLOW_SERVER_FILE_STORE": "sqlite:////tmp/x.db"}
    found = tracking_app.secrets_from_environment(env)
    assert {"admin-secret-123", "key-123", "s3cr3t/pass+word", "s3cr3t%2Fpass%2Bword"} <= set(found)


def test_cleaning_removes_secrets_plain_quoted_and_any_uri_password():
    clean = tracking_app.make_redactor(SECRETS)
    text = ("failed: ftp://flops_acme:s3cr3t%2Fpass%2Bword@127.0.0.1:2121/artifacts admin-secret-123 "
            "and mysql+pymysql://u:unknown-pw@db:3306/x")
    cleaned = clean(text)
    assert "s3cr3t" not in cleaned and "admin-secret-123" not in cleaned and "unknown-pw" not in cleaned
    assert "ftp://flops_acme:***@127.0.0.1:2121/artifacts" in cleaned
    assert "mysql+pymysql://u:***@db:3306/x" in cleaned


def test_log_handlers_and_std_streams_write_cleaned_lines(monkeypatch, tmp_path):
    log = tmp_path / "server.log"
    logger = logging.getLogger("flops-test-redaction")
    with open(log, "w", encoding="utf-8") as target:
        handler = logging.StreamHandler(target)
        logger.addHandler(handler)
        monkeypatch.setattr("sys.stdout", sys.stdout)  # restored afterwards: the call replaces both
        monkeypatch.setattr("sys.stderr", sys.stderr)
        try:
            tracking_app.redact_process_output(tracking_app.make_redactor(SECRETS))
            logger.error("could not reach ftp://u:%s@host/", "s3cr3t/pass+word")
            handler.flush()
        finally:
            logger.removeHandler(handler)
    text = log.read_text(encoding="utf-8")
    assert "s3cr3t" not in text and "ftp://u:***@host/" in text
    assert isinstance(sys.stderr, tracking_app.RedactingStream)


def _call(app, path="/"):
    sent = []

    async def receive():
        return {"type": "http.request", "body": b"", "more_body": False}

    async def send(message):
        sent.append(message)

    asyncio.run(app({"type": "http", "path": path, "method": "GET", "headers": []}, receive, send))
    return sent


def _app(status: int, body: bytes):
    async def app(scope, receive, send):
        await send({"type": "http.response.start", "status": status,
                    "headers": [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode()),
                                (b"x-debug", b"admin-secret-123")]})
        await send({"type": "http.response.body", "body": body[:10], "more_body": True})
        await send({"type": "http.response.body", "body": body[10:]})
    return app


def test_error_answers_are_cleaned_with_a_fitting_length():
    body = json.dumps({"message": "ftp://flops_acme:s3cr3t%2Fpass%2Bword@h/x failed"}).encode()
    sent = _call(tracking_app.RedactErrorAnswers(_app(500, body), tracking_app.make_redactor(SECRETS)))
    start, out = sent[0], sent[-1]["body"]
    assert start["status"] == 500 and b"s3cr3t" not in out and b"ftp://flops_acme:***@h/x" in out
    headers = dict(start["headers"])
    assert headers[b"content-length"] == str(len(out)).encode() and headers[b"x-debug"] == b"***"


def test_successful_answers_stream_through_unchanged():
    body = b'{"runs": []}' * 5
    sent = _call(tracking_app.RedactErrorAnswers(_app(200, body), tracking_app.make_redactor(SECRETS)))
    assert [m.get("more_body", False) for m in sent[1:]] == [True, False]
    assert b"".join(m["body"] for m in sent[1:]) == body
