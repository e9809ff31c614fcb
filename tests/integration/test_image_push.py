"""`flops-mlops push-image` against a real registry (Debian's docker-registry, HTTPS by a test CA, htpasswd logins):
a small two-platform image index from our OCI writer, as a layout folder and as an archive, read back through the
registry's API; a second push uploads nothing again; a wrong password, an untrusted certificate and a bad reference
are refused with what went wrong; the password is in no process's command line while it pushes.
(tests/integration/test_model_oci.py pushes the real model-server image the same way.)"""

from __future__ import annotations

import subprocess
import time
from pathlib import Path

import pytest
import yaml
from conftest import CLI, ROOT
from flops_mlops.images import oci
from flops_mlops.images.platforms import PLATFORMS
from registry_checks import add_login, assert_pushed, running_registry

TAG = "m:1"


@pytest.fixture(scope="module")
def registry(tmp_path_factory):
    with running_registry(tmp_path_factory.mktemp("registry")) as registry:
        yield registry


@pytest.fixture(scope="module")
def layout(tmp_path_factory) -> Path:
    """A two-platform index: a base layer of 12 MB (enough to report progress) and a small top layer."""
    root = tmp_path_factory.mktemp("image")
    base, top = root / "base", root / "top"
    (base / "opt").mkdir(parents=True)
    (base / "opt" / "data.bin").write_bytes(bytes(range(256)) * 4 + __import__("os").urandom(12_000_000))
    (top / "srv").mkdir(parents=True)
    (top / "srv" / "model.txt").write_text("a model\n")
    images = [oci.PlatformImage(PLATFORMS[name], [base, top], {"User": "model"}, ["base", "top"])
              for name in ("linux/amd64", "linux/arm64")]
    oci.write(root / "layout", images, TAG, 1700000000)
    oci.write(root / "layout.tar", images, TAG, 1700000000)
    return root / "layout"


def config(folder: Path, password: str | None) -> Path:
    """A configuration whose secrets file holds the registry's login (``password``; none if None)."""
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / "stack.yaml"
    path.write_text(yaml.safe_dump({"name": "push", "state_dir": str(folder / "state"),
                                    "secrets_file": str(folder / "secrets.env"), "tenants": [{"id": "acme"}]}))
    if password is not None:
        add_login(folder / "secrets.env", password)
    return path


def push(stack: Path, *args: str) -> tuple[subprocess.CompletedProcess, set[str]]:
    """Run push-image; also returns every command line seen on this machine while it ran."""
    process = subprocess.Popen([*CLI, "--config", str(stack), "push-image", *args], cwd=ROOT, text=True,
                               stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    seen: set[str] = set()
    while process.poll() is None:
        for cmdline in Path("/proc").glob("[0-9]*/cmdline"):
            try:
                seen.add(cmdline.read_bytes().replace(b"\0", b" ").decode("utf-8", "replace"))
            except OSError:
                pass
        time.sleep(0.05)
    out, err = process.communicate()
    return subprocess.CompletedProcess(process.args, process.returncode, out, err), seen


def test_pushed_index_reads_back_with_the_layouts_digests(registry, layout, tmp_path):
    stack = config(tmp_path, registry.password)
    done, seen = push(stack, str(layout), f"{registry.host}/flops/m:1", "--registry-ca", str(registry.ca))
    assert done.returncode == 0, done.stderr + done.stdout
    assert sorted(assert_pushed(registry, layout, "flops/m", "1")) == ["amd64", "arm64"]
    # The reference to pin in images.<name>: the index by digest, which the registry serves as the tag does.
    pinned = done.stdout.strip().splitlines()[-1].removeprefix("by digest: ")
    assert pinned.startswith(f"{registry.host}/flops/m@sha256:")
    assert_pushed(registry, layout, "flops/m", pinned.partition("@")[2])
    assert "MB (100%)" in done.stdout  # the 12 MB layer's progress
    assert not [line for line in seen if registry.password in line]
    assert registry.password not in done.stdout + done.stderr

    again, _ = push(stack, str(layout.with_suffix(".tar")), f"{registry.host}/flops/m:2", "--registry-ca",
                    str(registry.ca))
    assert again.returncode == 0, again.stderr + again.stdout
    assert "uploading" not in again.stdout and "already there" in again.stdout
    assert_pushed(registry, layout, "flops/m", "2")


def test_a_wrong_password_is_refused_naming_the_status_and_the_keys(registry, layout, tmp_path):
    done, _ = push(config(tmp_path, "not-the-password"), str(layout), f"{registry.host}/flops/m:3",
                   "--registry-ca", str(registry.ca))
    assert done.returncode == 1
    assert "HTTP 401" in done.stderr and "UNAUTHORIZED" in done.stderr and "FLOPS_REGISTRY_PASSWORD" in done.stderr
    assert "not-the-password" not in done.stderr


def test_no_login_is_refused_asking_for_one(registry, layout, tmp_path):
    done, _ = push(config(tmp_path, None), str(layout), f"{registry.host}/flops/m:3", "--registry-ca",
                   str(registry.ca))
    assert done.returncode == 1 and "set FLOPS_REGISTRY_USER and FLOPS_REGISTRY_PASSWORD" in done.stderr


def test_a_registry_the_system_does_not_trust_is_refused(registry, layout, tmp_path):
    done, _ = push(config(tmp_path, registry.password), str(layout), f"{registry.host}/flops/m:3")
    assert done.returncode == 1 and "not trusted" in done.stderr and "--registry-ca" in done.stderr


@pytest.mark.parametrize("args, named", [
    (["{layout}", "flops/m:1"], "'flops/m:1'"),
    (["{layout}", "{host}/flops/m"], "/flops/m'"),
    (["{layout}", "{host}/flops/m:1", "--registry-ca", "/nonexistent.crt"], "'/nonexistent.crt'"),
    (["/nonexistent-layout", "{host}/flops/m:1"], "'/nonexistent-layout'"),
], ids=["no registry host", "no tag", "missing CA file", "missing layout"])
def test_bad_arguments_exit_2_naming_the_value(registry, layout, tmp_path, args, named):
    filled = [a.format(layout=layout, host=registry.host) for a in args]
    done, _ = push(config(tmp_path, registry.password), *filled)
    assert done.returncode == 2 and named in done.stderr, done.stderr
