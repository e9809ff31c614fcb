"""`build-model-image --out`: no Docker daemon, one OCI image index for linux/amd64 and linux/arm64. The test trains
and registers a scikit-learn champion (an FL round), builds the index, unpacks the arm64 image with umoci and runs
its server under qemu-user-static (binfmt_misc): /invocations answers what pyfunc predicts. A second build of the
same model gives the same index digest. The index, pushed to a real registry (push-image), reads back with the
layout's digests for both platforms."""

from __future__ import annotations

import tarfile
import time

import pytest
from conftest import free_port
from oci_checks import (
    blob,
    ensure_arm64_emulation,
    image_index,
    machine,
    need_builder,
    path_without_docker,
    platform_configs,
    running,
    unpack,
)
from registry_checks import add_login, assert_pushed, running_registry
from serving_checks import assert_serves, serving_stack

pytestmark = pytest.mark.timeout(1800)
QUIET = {"MLFLOW_HTTP_REQUEST_MAX_RETRIES": "1", "FLWR_TELEMETRY_ENABLED": "0", "MLFLOW_DISABLE_TELEMETRY": "true"}
TAG = "shop:1"


@pytest.fixture(scope="module")
def stack(tmp_path_factory):
    need_builder()
    with serving_stack(tmp_path_factory.mktemp("oci")) as stack:
        yield stack


@pytest.fixture(scope="module")
def without_docker(tmp_path_factory) -> str:
    return path_without_docker(tmp_path_factory)


@pytest.fixture(scope="module")
def built(stack, tmp_path_factory, without_docker):
    """Project Shop trained once; its champion built as an OCI layout folder for both platforms, no docker."""
    import mlflow

    config = stack.load()
    mlflow.set_tracking_uri(config.tracking_uri(config.tenant("acme")))
    done = stack.cli("round", "--tenant", "acme", "--project", "Shop", "--rounds", "2", "--learners", "2",
                     "--seed", "3", "--json", env=QUIET, timeout=300)
    assert done.returncode == 0, done.stderr
    out = tmp_path_factory.mktemp("images") / "shop"
    started = time.monotonic()
    done = stack.cli("build-model-image", "--tenant", "acme", "--project", "Shop", "--tag", TAG, "--out",
                     str(out), env={"PATH": without_docker}, timeout=1500)
    assert done.returncode == 0, done.stderr + done.stdout
    print(f"built in {time.monotonic() - started:.0f} s")
    return out


def test_one_index_with_a_manifest_per_platform(built):
    platforms = platform_configs(built, TAG)
    assert sorted(platforms) == ["amd64", "arm64"]
    for architecture, config in platforms.items():
        assert config["architecture"] == architecture and config["config"]["User"] == "model"
        assert "FLOPS_SERVE_MODEL_NAME=Shop" in config["config"]["Env"]
        assert not [e for e in config["config"]["Env"] if "PASSWORD" in e]


def test_arm64_image_serves_predictions_under_qemu(stack, built, tmp_path):
    """The arm64 image, unpacked by umoci (from a copy holding that platform's manifest only), runs its entry point
    as its user under qemu: /invocations answers what pyfunc predicts."""
    import mlflow

    ensure_arm64_emulation()
    bundle = unpack(built, TAG, "arm64", tmp_path)
    assert machine(bundle) == "aarch64"
    port = free_port()
    with running(bundle, {"FLOPS_SERVE_PORT": str(port)}, tmp_path / "server.log",
                 f"http://127.0.0.1:{port}/ping") as process:
        assert process["user"]["uid"] == 10003
        version = mlflow.MlflowClient().get_model_version_by_alias("Shop", "champion").version
        assert_serves(f"http://127.0.0.1:{port}", f"models:/Shop/{version}")


def manifest_of(layout, architecture: str) -> str:
    """The digest of ``architecture``'s image manifest in the layout's image index."""
    index = blob(layout, image_index(layout, TAG)["digest"])
    return next(m["digest"] for m in index["manifests"] if m["platform"]["architecture"] == architecture)


def test_same_model_gives_the_same_digest(stack, built, tmp_path, without_docker):
    """A second build of the same version, this time an OCI archive of linux/amd64 alone: its amd64 manifest is
    the first build's, byte for byte (same digest), so every layer and the config are too. One platform is built
    again, not both: arm64 goes through the same code, under emulation, at twice the time."""
    archive = tmp_path / "shop.tar"
    done = stack.cli("build-model-image", "--tenant", "acme", "--project", "Shop", "--tag", TAG, "--out",
                     str(archive), "--platform", "linux/amd64", env={"PATH": without_docker}, timeout=1500)
    assert done.returncode == 0, done.stderr + done.stdout
    second = tmp_path / "second"
    with tarfile.open(archive) as tar:
        tar.extractall(second)
    assert manifest_of(second, "amd64") == manifest_of(built, "amd64")
    assert image_index(second, TAG)["digest"] in done.stdout


def test_pushed_to_a_registry_with_both_platforms(stack, built, tmp_path):
    """push-image sends the built index to a registry (HTTPS, htpasswd login from the secrets file): the tag
    resolves to the layout's index digest, each platform's manifest, config and layers have the layout's digests."""
    with running_registry(tmp_path / "registry") as registry:
        add_login(stack.load().secrets_file, registry.password)
        done = stack.cli("push-image", str(built), f"{registry.host}/flops-mlops/shop:1", "--registry-ca",
                         str(registry.ca), timeout=600)
        assert done.returncode == 0, done.stderr + done.stdout
        assert sorted(assert_pushed(registry, built, "flops-mlops/shop", "1")) == ["amd64", "arm64"]
        assert image_index(built, TAG)["digest"] in done.stdout


@pytest.mark.parametrize("extra, named", [
    (["--platform", "linux/s390x"], "'linux/s390x'"),
    (["--platform", "linux/arm64,linux/arm64"], "'linux/arm64,linux/arm64'"),
    (["--out", "/nonexistent-folder/shop.tar"], "'/nonexistent-folder/shop.tar'"),
    (["--out", "shop.tar", "--base", "debian:bookworm"], "'debian:bookworm'"),
    (["--out", "shop.tar", "--push", "flops-mlops/shop:1"], "'flops-mlops/shop:1'"),
    (["--push", "registry.example/shop:1"], "only with --out"),
], ids=["unknown platform", "platform twice", "missing folder", "base with out", "push without registry",
        "push without out"])
def test_bad_arguments_exit_2_naming_the_value(stack, extra, named):
    done = stack.cli("build-model-image", "--tenant", "acme", "--project", "Shop", *extra)
    assert done.returncode == 2 and named in done.stderr, done.stderr
