"""The storage quota (artifact_store.quota), on the embedded and the native (vsftpd) stack: uploads fill a tenant's
store to just under its quota; the next one is refused with a 507 that names the quota and the usage, before a
byte is stored, whether its length is announced or it comes chunked; `status` shows the usage."""

from __future__ import annotations

import conftest
import pytest
import requests

pytestmark = [pytest.mark.services, pytest.mark.timeout(900)]

TENANT = "acme"
QUOTA = 1_000_000  # artifact_store.quota: 1MB


@pytest.fixture(scope="module", params=["local", "native"])
def stack(request, tmp_path_factory):
    stack = conftest.TestStack.create(request.param, tmp_path_factory.mktemp(f"quota-{request.param}"), [TENANT],
                                      artifact_store={"quota": "1MB"})
    stack.up()
    try:
        yield stack
    finally:
        stack.cli("down", "--purge")


def upload_url(uri: str, admin) -> str:
    """The artifact proxy's address of a new run's artifact folder."""
    api = f"{uri}/api/2.0/mlflow"
    experiment = requests.post(f"{api}/experiments/create", json={"name": "quota"}, auth=admin, timeout=60)
    assert experiment.status_code == 200, experiment.text
    run = requests.post(f"{api}/runs/create", json={"experiment_id": experiment.json()["experiment_id"]},
                        auth=admin, timeout=60).json()["run"]["info"]
    location = run["artifact_uri"].removeprefix("mlflow-artifacts:/")
    return f"{uri}/api/2.0/mlflow-artifacts/artifacts/{location}"


def test_an_upload_past_the_quota_is_refused_with_the_quota_and_the_usage(stack):
    config = stack.load()
    uri, admin = config.tracking_uri(config.tenant(TENANT)), stack.admin(TENANT)
    folder = upload_url(uri, admin)
    for name, size in (("a.bin", 600_000), ("b.bin", 390_000)):  # 990 KB: just under the quota
        answer = requests.put(f"{folder}/{name}", data=b"x" * size, auth=admin, timeout=60)
        assert answer.status_code == 200, answer.text

    announced = requests.put(f"{folder}/c.bin", data=b"x" * 20_000, auth=admin, timeout=60)
    assert announced.status_code == 507, announced.text
    message = announced.json()["message"]
    assert "quota of 1 MB" in message and "990 KB used" in message, message

    chunked = requests.put(f"{folder}/d.bin", data=(b"x" * 10_000 for _ in range(2)), auth=admin, timeout=60)
    assert chunked.status_code == 507 and "quota of 1 MB" in chunked.json()["message"], chunked.text

    listing = requests.get(f"{uri}/api/2.0/mlflow-artifacts/artifacts",
                           params={"path": folder.split("/artifacts/", 1)[1]}, auth=admin, timeout=60)
    names = sorted(f["path"] for f in listing.json().get("files", []))
    assert names == ["a.bin", "b.bin"], names  # nothing of the refused uploads reached the store

    small = requests.put(f"{folder}/e.bin", data=b"x" * 10_000, auth=admin, timeout=60)  # exactly the quota
    assert small.status_code == 200, small.text

    status = stack.cli("status", check=True).stdout
    assert "storage:        1 MB used of quota 1 MB (100%)" in status, status


def test_a_bad_quota_is_refused_naming_the_key(stack, tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_text(stack.config_path.read_text().replace("quota: 1MB", "quota: lots"), encoding="utf-8")
    result = conftest.run_cli("config", "check", config=bad)
    assert result.returncode == 2
    assert f"{bad}: artifact_store.quota: expected a size such as 10GB" in result.stderr, result.stderr
