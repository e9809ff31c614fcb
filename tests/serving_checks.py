"""What a served model must do, however it is deployed (embedded `serve`, compose's `serve` profile), written once.

The caller is logged in to the tenant's tracking server as someone who may read the model (``logged_in``).
"""

from __future__ import annotations

import contextlib
import json
import time
from pathlib import Path

import numpy as np
import requests

FEATURES = 64  # the scikit-learn example's digits (8x8 pixels): what `round` trains without --ml-repo
BAD_PAYLOADS = {
    "wrong columns": ("application/json", json.dumps({"dataframe_split": {"columns": ["a", "b", "c"],
                                                                          "data": [[1.0, 2.0, 3.0]]}})),
    "wrong types": ("application/json", json.dumps({"inputs": [["x"] * 8]})),
    "empty body": ("application/json", ""),
    "not JSON": ("application/json", "{inputs: oops"),
    "JSON list": ("application/json", "[1, 2, 3]"),
    "no content type": ("", json.dumps({"inputs": [[0.0] * FEATURES]})),
    "unsupported content type": ("image/png", "x"),
    "10 MB body": ("application/json", json.dumps({"inputs": [[0.123456789] * 8] * 110_000})),
}


def served_version(url: str) -> str:
    return requests.get(f"{url}/model", timeout=10).json()["version"]


def assert_serves(url: str, model_uri: str) -> None:
    """POST the model's logged input example: the predictions equal pyfunc's on the same rows."""
    import mlflow
    from mlflow.models import Model

    local = mlflow.artifacts.download_artifacts(model_uri)
    serving_input = (Path(local) / "serving_input_example.json").read_text(encoding="utf-8")
    rows = Model.load(local).load_input_example(local)
    expected = mlflow.pyfunc.load_model(model_uri).predict(rows)
    answer = requests.post(f"{url}/invocations", data=serving_input, timeout=30,
                           headers={"Content-Type": "application/json"})
    assert answer.status_code == 200, answer.text
    assert np.array_equal(np.asarray(answer.json()["predictions"]), np.asarray(expected))
    assert len(expected) == len(rows) > 1


def assert_bad_payloads_refused(url: str) -> None:
    """Each bad request gets a 4xx in MLflow's error shape; the server answers a good request after each."""
    good = json.dumps({"inputs": [[0.5] * FEATURES]})
    for what, (content_type, body) in BAD_PAYLOADS.items():
        headers = {"Content-Type": content_type} if content_type else {}
        answer = requests.post(f"{url}/invocations", data=body.encode(), headers=headers, timeout=60)
        assert 400 <= answer.status_code < 500, f"{what}: {answer.status_code} {answer.text[:300]}"
        error = answer.json()
        assert isinstance(error["error_code"], str) and error["error_code"], what
        assert isinstance(error["message"], str) and error["message"], what
        assert "stack_trace" not in error, what
        after = requests.post(f"{url}/invocations", data=good, headers={"Content-Type": "application/json"},
                              timeout=30)
        assert after.status_code == 200 and len(after.json()["predictions"]) == 1, f"after {what}: {after.text}"
    assert requests.get(f"{url}/ping", timeout=10).status_code == 200


def wait_for_version(url: str, version: str, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while served_version(url) != version:
        assert time.monotonic() < deadline, f"{url} still serves version {served_version(url)}, not {version}"
        time.sleep(0.5)


@contextlib.contextmanager
def serving_stack(folder: Path):
    """A one-tenant (acme) embedded stack in ``folder``, up, with MLflow's client logged in as its admin; purged
    after."""
    import conftest
    from tracking_checks import logged_in

    stack = conftest.TestStack.create("local", folder, ["acme"])
    stack.up()
    try:
        with logged_in(stack.admin()):
            yield stack
    finally:
        stack.cli("down", "--purge")
