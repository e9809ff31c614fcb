"""`build-fl-image --out`: an FL project's actor image with no docker command and no daemon, one OCI image index for
linux/amd64 and linux/arm64, built from the scikit-learn example repository. Each platform's image is unpacked
with umoci and runs FLOps' contract check on the repository it holds, learner 0 included (its share of the
digits, one fit and one evaluation), as the image's user; arm64 under qemu-user-static.
"""

from __future__ import annotations

import json
import shutil
import subprocess

import pytest
from conftest import ROOT, run_cli
from oci_checks import ensure_arm64_emulation, machine, need_builder, path_without_docker, platform_configs, unpack

pytestmark = pytest.mark.timeout(2400)
EXAMPLE = ROOT / "examples" / "sklearn"


@pytest.fixture(scope="module")
def built(tmp_path_factory):
    """The example's image for both platforms, written as an OCI layout folder; (layout, tag)."""
    from flops_mlops.fl.ml_repo import resolve
    from flops_mlops.fl.project_image import image_name

    need_builder()
    out = tmp_path_factory.mktemp("fl-image") / "digits"
    done = run_cli("build-fl-image", "--project", "Digits", "--ml-repo", str(EXAMPLE), "--out", str(out),
                   env={"PATH": path_without_docker(tmp_path_factory)}, timeout=2300)
    assert done.returncode == 0, done.stderr[-3000:] + done.stdout[-3000:]
    assert "the contract holds" in done.stdout and "linux/arm64: prepared" in done.stdout, done.stdout
    return out, image_name("Digits", resolve(str(EXAMPLE), None, tmp_path_factory.mktemp("clones")).tag)


def test_one_index_with_a_manifest_per_platform_named_by_the_repositorys_tag(built):
    layout, tag = built
    platforms = platform_configs(layout, tag)
    assert sorted(platforms) == ["amd64", "arm64"]
    repo_tag = tag.rsplit(":", 1)[1]
    for architecture, config in platforms.items():
        assert config["architecture"] == architecture and config["config"]["User"] == "fl"
        assert f"FLOPS_ML_REPO_TAG={repo_tag}" in config["config"]["Env"]
        assert config["config"]["Labels"]["io.flops.project"] == "Digits"


@pytest.mark.parametrize("architecture", ["amd64", "arm64"])
def test_each_platforms_image_trains_the_repository_it_holds(built, architecture, tmp_path):
    layout, tag = built
    if architecture == "arm64":
        ensure_arm64_emulation()
    bundle = unpack(layout, tag, architecture, tmp_path)
    assert machine(bundle) == {"amd64": "x86_64", "arm64": "aarch64"}[architecture]
    process = json.loads((bundle / "config.json").read_text())["process"]
    env = {**dict(line.split("=", 1) for line in process["env"]), "FLOPS_LEARNER_INDEX": "0", "FLOPS_LEARNERS": "2",
           "HOME": "/srv/fl"}
    done = subprocess.run([shutil.which("chroot"), f"--userspec={process['user']['uid']}:{process['user']['gid']}",
                           str(bundle / "rootfs"), "python", "-m", "flops_mlops.fl.contract", "--ml-repo",
                           env["FLOPS_ML_REPO"], "--json"], env=env, cwd="/", capture_output=True, text=True,
                          timeout=1200)
    assert done.returncode == 0, done.stderr[-3000:]
    report = json.loads(done.stdout.strip().splitlines()[-1])
    assert report["violations"] == [] and report["flavor"] == "sklearn" and report["train_examples"] > 0, report
