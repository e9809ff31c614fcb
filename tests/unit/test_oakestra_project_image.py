"""An FL project with its own ML repository on Oakestra: its SLA names the project's image,
<registry>/flops-mlops/fl-<project>:<tag>, the tag being the repository's commit (a git URL) or a hash of its
files (a folder), and mounts each learner's own data folder.

The golden file tests/unit/golden/oakestra-ml-repo/cifar.json is what configs/oakestra.yaml plus the project of
``with_ml_repo_project`` renders (FLOps' PyTorch example repository at a fixed commit: no clone needed); reviewed
by hand. FLOPS_UPDATE_GOLDEN=1 rewrites it (and fails).
"""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import pytest
from conftest import ROOT, compare_with_golden, run_cli
from flops_mlops.configuration import loading as config_module
from flops_mlops.configuration.schema import ConfigError
from flops_mlops.fl.ml_repo import content_hash
from flops_mlops.oakestra import sla
from test_oakestra_render import env, services, write_config

GOLDEN = Path(__file__).parent / "golden" / "oakestra-ml-repo"
FLOPS_PYTORCH_REPO = "https://github.com/Malyuk-A/flops_ml_repo_cifar10_pytorch.git"
COMMIT = "304595b2f8e833b63a3c4cdba8ae5d57b946ab47"
DATA = "/mnt/oakestra/hostpath/flops-mlops/data/cifar"


def with_ml_repo_project(ml_repo: str = FLOPS_PYTORCH_REPO, revision: str | None = COMMIT, **more):
    def edit(data):
        project = {"name": "cifar", "tenant": "globex", "slot": 2, "learners": 2, "rounds": 3, "ml_repo": ml_repo,
                   "flavor": "pytorch", "min_learners": 1, "data_host_path": DATA, **more}
        if revision is not None:
            project["revision"] = revision
        data["oakestra"]["projects"].append(project)
    return edit


def project_services(config_path: Path, project: str = "cifar") -> dict[str, dict]:
    rendered = services(sla.render_all(config_module.load(config_path)))
    return {name.split("/", 1)[1]: service for name, service in rendered.items() if name.startswith(project + "/")}


def test_a_project_with_an_ml_repo_renders_the_golden_file(tmp_path):
    out = tmp_path / "out"
    done = run_cli("render", "--out", str(out), config=write_config(tmp_path, with_ml_repo_project()))
    assert done.returncode == 0, done.stderr
    compare_with_golden(GOLDEN, {"cifar.json": (out / "cifar.json").read_bytes()})


def test_every_actor_runs_the_image_tagged_by_the_commit_and_each_learner_mounts_its_own_data(tmp_path):
    actors = project_services(write_config(tmp_path, with_ml_repo_project()))
    assert sorted(actors) == ["aggregator", "learner0", "learner1"]
    assert {service["code"] for service in actors.values()} == {f"docker.io/flops-mlops/fl-cifar:{COMMIT[:12]}"}
    assert env(actors["aggregator"])["FLOPS_FLAVOR"] == "pytorch"
    assert env(actors["aggregator"])["FLOPS_MIN_LEARNERS"] == "1"
    assert "volumes" not in actors["aggregator"] and "FLOPS_DATA_DIR" not in env(actors["aggregator"])
    for i in (0, 1):
        learner = actors[f"learner{i}"]
        assert env(learner)["FLOPS_DATA_DIR"] == "/srv/fl/data"
        assert [(v["mount_path"], v["config"]["host_path"]) for v in learner["volumes"]] == [
            ("/srv/fl/data", f"{DATA}/learner-{i}")]
    # The other project, without ml_repo, keeps images.fl_actor and gets no data folder.
    mnist = project_services(write_config(tmp_path, with_ml_repo_project()), "mnist")
    assert {s["code"] for s in mnist.values()} == {"docker.io/flops-mlops/fl-actor:0.1.0"}
    assert not any("volumes" in s for s in mnist.values())


def test_a_folder_is_tagged_by_its_content_relative_to_the_config_and_an_edit_changes_the_image(tmp_path):
    repo = tmp_path / "repos" / "digits"
    shutil.copytree(ROOT / "examples" / "pytorch", repo)
    path = write_config(tmp_path, with_ml_repo_project("repos/digits", None))  # relative to the config's folder
    image = project_services(path)["aggregator"]["code"]
    assert image == f"docker.io/flops-mlops/fl-cifar:c{content_hash(repo)[:12]}"
    (repo / "model_manager.py").write_text((repo / "model_manager.py").read_text() + "\n# changed\n")
    changed = project_services(path)["aggregator"]["code"]
    assert changed != image and changed == f"docker.io/flops-mlops/fl-cifar:c{content_hash(repo)[:12]}"


def test_a_git_repository_at_a_branch_is_cloned_offline_and_tagged_by_its_commit(tmp_path):
    origin = tmp_path / "origin"
    shutil.copytree(ROOT / "examples" / "sklearn", origin)
    git = ["git", "-C", str(origin), "-c", "user.name=t", "-c", "user.email=t@example.org"]
    for command in (["init", "--quiet", "--initial-branch", "main"], ["add", "."], ["commit", "--quiet", "-m", "x"]):
        subprocess.run([*git, *command], check=True, capture_output=True)
    commit = subprocess.run([*git, "rev-parse", "HEAD"], check=True, capture_output=True, text=True).stdout.strip()
    actors = project_services(write_config(tmp_path, with_ml_repo_project(origin.as_uri(), "main")))
    assert actors["learner1"]["code"] == f"docker.io/flops-mlops/fl-cifar:{commit[:12]}"


@pytest.mark.parametrize("ml_repo, revision, expected", [
    ("no/such/folder", None, "oakestra.projects[1].ml_repo: --ml-repo: "),
    (FLOPS_PYTORCH_REPO, "bad revision!", "is not a branch, tag or commit name"),
])
def test_a_bad_ml_repo_is_a_config_error_naming_the_project_key(tmp_path, ml_repo, revision, expected):
    path = write_config(tmp_path, with_ml_repo_project(ml_repo, revision))
    with pytest.raises(ConfigError, match="oakestra.projects\\[1\\].ml_repo"):
        sla.render_all(config_module.load(path))
    done = run_cli("render", "--out", str(tmp_path / "out"), config=path)
    assert done.returncode == 2 and expected in done.stderr, done.stderr
    assert not (tmp_path / "out").exists() or not any((tmp_path / "out").iterdir())
