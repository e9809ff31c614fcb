"""`build-image tracking-server --platform linux/arm64`: our tracking server image built with no docker command,
unpacked by umoci and run under qemu-user-static as its user against a real native MariaDB and vsftpd (the stores
a compose or Oakestra node would give it by environment): /health answers, the tenant's admin logs in, and a run
logged through it lands in the stores (its artifact on FTP, read back through the server)."""

from __future__ import annotations

import os
import time

import conftest
import pytest
import requests
from conftest import free_port, need_native_services
from oci_checks import (
    ensure_arm64_emulation,
    machine,
    need_builder,
    path_without_docker,
    platform_configs,
    running,
    unpack,
)

pytestmark = [pytest.mark.services, pytest.mark.timeout(2400)]
TAG = "flops-mlops/tracking-server:0.1.0"


@pytest.fixture(scope="module")
def stores(tmp_path_factory):
    """A native one-tenant stack (acme) on MariaDB and vsftpd; plain MySQL and FTP, as the image's environment
    speaks today (tracking/container.py)."""
    need_native_services()
    need_builder()
    stack = conftest.TestStack.create("native", tmp_path_factory.mktemp("stores"), ["acme"], backend_store={"tls": False})
    stack.up()
    try:
        yield stack
    finally:
        stack.cli("down", "--purge")


@pytest.fixture(scope="module")
def built(stores, tmp_path_factory):
    out = tmp_path_factory.mktemp("images") / "tracking"
    started = time.monotonic()
    done = stores.cli("build-image", "tracking-server", "--platform", "linux/arm64", "--out", str(out),
                      env={"PATH": path_without_docker(tmp_path_factory)}, timeout=2000)
    assert done.returncode == 0, done.stderr + done.stdout
    print(f"built in {time.monotonic() - started:.0f} s")
    assert f"built {TAG} (sha256:" in done.stdout
    return out


def test_the_arm64_tracking_server_serves_a_tenant_under_qemu(stores, built, tmp_path):
    (config,) = platform_configs(built, TAG).values()
    assert config["architecture"] == "arm64" and config["config"]["User"] == "mlflow"
    ensure_arm64_emulation()
    bundle = unpack(built, TAG, "arm64", tmp_path)
    assert machine(bundle) == "aarch64"
    stack, secrets = stores.load(), stores.secrets()
    port = free_port()
    env = {"FLOPS_TENANT": "acme", "FLOPS_PORT": str(port), "FLOPS_PUBLIC_PORT": str(port),
           "FLOPS_DB_HOST": "127.0.0.1", "FLOPS_DB_PORT": str(stack.backend_store.port),
           "FLOPS_DB_PASSWORD": secrets.db_password("acme"), "FLOPS_FTP_HOST": "127.0.0.1",
           "FLOPS_FTP_PORT": str(stack.artifact_store.port), "FLOPS_FTP_PASSWORD": secrets.ftp_password("acme"),
           "FLOPS_ADMIN_PASSWORD": secrets.admin_password("acme"), "FLOPS_SECRET_KEY": secrets.secret_key("acme")}
    url = f"http://127.0.0.1:{port}"
    with running(bundle, env, tmp_path / "server.log", f"{url}/health", timeout=900) as process:
        assert process["user"]["uid"] == 10001
        login = stores.admin("acme")
        assert requests.get(f"{url}/api/2.0/mlflow/experiments/search", params={"max_results": 1},
                            timeout=60).status_code == 401
        created = requests.post(f"{url}/api/2.0/mlflow/experiments/create", json={"name": "on-arm64"},
                                auth=login, timeout=120)
        assert created.status_code == 200, created.text
        run = requests.post(f"{url}/api/2.0/mlflow/runs/create", auth=login, timeout=120, json={
            "experiment_id": created.json()["experiment_id"]}).json()["run"]["info"]
        path = f"{run['experiment_id']}/{run['run_id']}/artifacts/note.txt"
        put = requests.put(f"{url}/api/2.0/mlflow-artifacts/artifacts/{path}", data=b"from arm64",
                           auth=login, timeout=120)
        assert put.status_code == 200, put.text
        got = requests.get(f"{url}/api/2.0/mlflow-artifacts/artifacts/{path}", auth=login, timeout=120)
        assert got.content == b"from arm64"
    # The same run through the native server on the same stores: one tenant, two servers, one truth.
    native = stack.tracking_uri(stack.tenant("acme"))
    seen = requests.get(f"{native}/api/2.0/mlflow/runs/get", params={"run_id": run["run_id"]}, auth=login,
                        timeout=60)
    assert seen.status_code == 200 and seen.json()["run"]["info"]["experiment_id"] == run["experiment_id"]


def test_a_build_stopped_midway_leaves_no_process_and_no_mount_behind(tmp_path):
    """SIGTERM to `build-image` while mmdebstrap works (as `timeout` or a CI job's cancel sends it): the command
    stops, and with it mmdebstrap and what it started (apt, dpkg), and nothing stays mounted from its work folder."""
    import signal
    import subprocess

    import psutil

    need_builder()
    cli = subprocess.Popen([*conftest.CLI, "build-image", "artifact-store", "--platform", "linux/amd64", "--out",
                            str(tmp_path / "image")], cwd=conftest.ROOT, stdout=subprocess.PIPE,
                           stderr=subprocess.PIPE, text=True, start_new_session=True)
    try:
        deadline, builders = time.monotonic() + 300, []
        while time.monotonic() < deadline and cli.poll() is None:
            builders = [p for p in psutil.Process(cli.pid).children(recursive=True) if p.name() == "mmdebstrap"]
            if builders:
                break
            time.sleep(0.2)
        assert builders, "mmdebstrap never started"
        time.sleep(5)  # well into its work: apt and dpkg running under it
        started = psutil.Process(cli.pid).children(recursive=True)
        assert len(started) > 1, [p.name() for p in started]
        cli.send_signal(signal.SIGTERM)
        _, stderr = cli.communicate(timeout=120)
        assert cli.returncode != 0, stderr
        _, alive = psutil.wait_procs(started, timeout=60)
        assert alive == [], [(p.pid, p.name()) for p in alive]
        with open("/proc/mounts", encoding="utf-8") as mounts:
            assert [line for line in mounts if "flops-artifact-store-oci-" in line] == []
    finally:
        if cli.poll() is None:
            os.killpg(cli.pid, signal.SIGKILL)
