"""What the tests of images built without Docker share (test_model_oci, test_stack_images_oci): the builder's
tools, a PATH without docker, arm64 emulation, unpacking one platform of an OCI image index with umoci, and running
an unpacked image's entry point as its user with chroot (under qemu-user-static for a foreign platform)."""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import subprocess
import time
from pathlib import Path

import conftest
import requests

BINFMT = "/proc/sys/fs/binfmt_misc"


def need_builder() -> None:
    for command in ("mmdebstrap", "umoci", "arch-test", "chroot"):
        if shutil.which(command) is None:
            conftest.missing_service(f"no {command} (apt-get install mmdebstrap umoci arch-test qemu-user-static)")
    if os.geteuid() != 0:
        conftest.missing_service("building and running root filesystems needs root")


def path_without_docker(tmp_path_factory) -> str:
    """PATH on which no docker command is found: a folder that holds one is replaced by a folder of links to
    everything else in it. The build must not need docker."""
    folders = []
    for folder in os.environ["PATH"].split(os.pathsep):
        if not os.path.exists(os.path.join(folder, "docker")):
            folders.append(folder)
            continue
        links = tmp_path_factory.mktemp("path")
        for name in os.listdir(folder):
            if not name.startswith("docker"):
                os.symlink(os.path.join(folder, name), links / name)
        folders.append(str(links))
    path = os.pathsep.join(folders)
    assert shutil.which("docker", path=path) is None and shutil.which("mmdebstrap", path=path)
    return path


def ensure_arm64_emulation() -> None:
    if not os.path.exists(f"{BINFMT}/register"):
        subprocess.run(["mount", "-t", "binfmt_misc", "binfmt_misc", BINFMT], check=True)
    if not os.path.exists(f"{BINFMT}/qemu-aarch64"):
        subprocess.run(["update-binfmts", "--enable", "qemu-aarch64"], check=False)
    if not os.path.exists(f"{BINFMT}/qemu-aarch64"):
        conftest.missing_service("no qemu-aarch64 in binfmt_misc (apt-get install qemu-user-static binfmt-support)")


def image_index(layout: Path, tag: str) -> dict:
    top = json.loads((layout / "index.json").read_text())
    (reference,) = top["manifests"]
    assert reference["annotations"]["org.opencontainers.image.ref.name"] == tag
    return reference


def blob(layout: Path, digest: str) -> dict:
    return json.loads((layout / "blobs" / "sha256" / digest.removeprefix("sha256:")).read_text())


def platform_configs(layout: Path, tag: str) -> dict[str, dict]:
    """architecture -> that platform's image config (the OCI config blob)."""
    index = blob(layout, image_index(layout, tag)["digest"])
    return {m["platform"]["architecture"]: blob(layout, blob(layout, m["digest"])["config"]["digest"])
            for m in index["manifests"]}


def unpack(layout: Path, tag: str, architecture: str, tmp_path: Path) -> Path:
    """umoci unpacks one manifest: a layout whose index.json names this platform's manifest (the blobs shared)."""
    single = tmp_path / f"layout-{architecture}"
    single.mkdir()
    (single / "oci-layout").write_text((layout / "oci-layout").read_text())
    (single / "blobs").symlink_to(layout / "blobs")
    index = blob(layout, image_index(layout, tag)["digest"])
    (manifest,) = [m for m in index["manifests"] if m["platform"]["architecture"] == architecture]
    manifest = {**manifest, "annotations": {"org.opencontainers.image.ref.name": architecture}}
    (single / "index.json").write_text(json.dumps({"schemaVersion": 2, "manifests": [manifest]}))
    bundle = tmp_path / f"bundle-{architecture}"
    done = subprocess.run(["umoci", "unpack", "--image", f"{single}:{architecture}", str(bundle)],
                          capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    return bundle


def machine(bundle: Path) -> str:
    """uname -m as the unpacked image's own python sees it."""
    return subprocess.run([shutil.which("chroot"), str(bundle / "rootfs"), "/usr/bin/python3", "-c",
                           "import platform; print(platform.machine())"], capture_output=True,
                          text=True).stdout.strip()


@contextlib.contextmanager
def running(bundle: Path, env: dict[str, str], log: Path, url: str, timeout: float = 600):
    """The unpacked image's entry point, as its user, its environment updated by ``env``, until ``url`` answers
    200 (a failure quotes the log); stopped by its pid after."""
    process = json.loads((bundle / "config.json").read_text())["process"]
    environment = dict(line.split("=", 1) for line in process["env"])
    environment.update(env)
    with open(log, "w") as output:
        server = subprocess.Popen([shutil.which("chroot"),
                                   f"--userspec={process['user']['uid']}:{process['user']['gid']}",
                                   str(bundle / "rootfs"), *process["args"]], env=environment, cwd="/",
                                  stdout=output, stderr=subprocess.STDOUT)
        try:
            deadline = time.monotonic() + timeout
            while True:
                assert server.poll() is None, log.read_text()[-3000:]
                try:
                    if requests.get(url, timeout=5).status_code == 200:
                        break
                except requests.ConnectionError:
                    pass
                assert time.monotonic() < deadline, log.read_text()[-3000:]
                time.sleep(2)
            yield process
        finally:
            server.terminate()
            server.wait(timeout=60)
