"""The images `build-image` builds without Docker hold what their Dockerfile targets hold: the venv leaves out what
the Dockerfile uninstalls, the accounts have the same uids, and the entry points are the same."""

from __future__ import annotations

import json
import re

import pytest
from conftest import ROOT, run_cli
from flops_mlops.images.catalog import NOT_FOR_FL, NOT_FOR_SERVING, NOT_FOR_TRACKING, RECIPES

DOCKERFILE = (ROOT / "deploy" / "images" / "python" / "Dockerfile").read_text(encoding="utf-8")


def stage(name: str, dockerfile: str = DOCKERFILE) -> str:
    """The instructions of one build stage (from its FROM to the next)."""
    text = re.split(r"^FROM ", dockerfile, flags=re.MULTILINE)
    (body,) = [part for part in text if re.match(rf"\S+ AS {re.escape(name)}\n", part)]
    return body.replace("\\\n", " ")


def uninstalled(name: str) -> set[str]:
    (names,) = re.findall(r"pip uninstall --yes --quiet ([^&]+)&&", stage(name))
    return set(names.split())


def test_each_venv_leaves_out_what_its_dockerfile_stage_uninstalls():
    assert uninstalled("venv-server") == NOT_FOR_TRACKING
    assert uninstalled("venv-fl") == NOT_FOR_FL
    assert uninstalled("venv-fl") | uninstalled("venv-serve") == NOT_FOR_SERVING


@pytest.mark.parametrize("name", ["tracking-server", "fl-actor", "model-server"])
def test_accounts_and_entry_points_are_the_dockerfiles(name):
    recipe, body = RECIPES[name], stage(name)
    (account,) = recipe.accounts
    assert re.search(rf"useradd --system --uid {account.uid} .*--home-dir {account.home} .* {account.name}\b", body)
    assert f"USER {account.name}" in body and recipe.config["User"] == account.name
    entry = re.search(r"^ENTRYPOINT (.+)$", body, flags=re.MULTILINE)
    if entry:
        assert json.loads(entry.group(1)) == recipe.config["Entrypoint"]
    else:
        assert json.loads(re.search(r"^CMD (.+)$", body, flags=re.MULTILINE).group(1)) == recipe.config["Cmd"]


def test_the_artifact_store_has_the_dockerfiles_packages_and_entry_point():
    dockerfile = (ROOT / "deploy" / "images" / "artifact-store" / "Dockerfile").read_text(encoding="utf-8")
    (packages,) = re.findall(r"apt-get install -y --no-install-recommends ([^\\&]+)", dockerfile)
    assert set(packages.split()) == set(RECIPES["artifact-store"].packages)
    entry = re.search(r"^ENTRYPOINT (.+)$", dockerfile, flags=re.MULTILINE).group(1)
    assert json.loads(entry) == RECIPES["artifact-store"].config["Entrypoint"]


@pytest.mark.parametrize("argv, named", [
    (["build-image", "registry"], "'registry'"),
    (["build-image", "tracking-server", "--out", "/nonexistent-folder/t.tar"], "'/nonexistent-folder/t.tar'"),
    (["build-image", "tracking-server", "--out", "t.tar", "--platform", "linux/s390x"], "'linux/s390x'"),
    (["build-image", "tracking-server", "--out", "t.tar", "--tag", "tracking"], "'tracking'"),
], ids=["unknown image", "missing folder", "unknown platform", "tag without version"])
def test_bad_arguments_exit_2_naming_the_value(argv, named):
    done = run_cli(*argv)
    assert done.returncode == 2 and named in done.stderr, done.stderr


def test_an_fl_projects_recipe_holds_what_its_dockerfile_holds(tmp_path):
    from flops_mlops.fl.project_image import REPO_IN_IMAGE, project_recipe

    dockerfile = (ROOT / "deploy" / "images" / "fl-project" / "Dockerfile").read_text(encoding="utf-8")
    final = re.split(r"^FROM ", dockerfile, flags=re.MULTILINE)[-1].replace("\\\n", " ")
    recipe = project_recipe("Digits", "abc123", tmp_path / "r.txt", tmp_path / "c.txt", tmp_path)
    for account in recipe.accounts:
        assert re.search(rf"useradd --system --uid {account.uid} .*--home-dir {account.home} .*{account.name}\b",
                         final), account
    assert f"USER {recipe.config['User']}" in final and f"WORKDIR {recipe.config['WorkingDir']}" in final
    assert json.loads(re.search(r"^CMD (.+)$", final, flags=re.MULTILINE).group(1)) == recipe.config["Cmd"]
    assert f"COPY repo/ {REPO_IN_IMAGE}/" in final
    env = dict(line.split("=", 1) for line in recipe.config["Env"])
    for key in ("PATH", "PYTHONUNBUFFERED", "MLFLOW_DISABLE_TELEMETRY", "DO_NOT_TRACK", "FLOPS_ML_REPO"):
        assert re.search(rf"\b{key}={re.escape(env[key])}\s", final), key
    assert env["FLOPS_ML_REPO_TAG"] == "abc123" and recipe.config["Labels"]["io.flops.ml-repo-tag"] == "abc123"
    assert recipe.pip_requirements == ("-r", str(tmp_path / "r.txt")) and recipe.constraints == tmp_path / "c.txt"


@pytest.mark.parametrize("argv, named", [
    (["build-fl-image", "--project", "p", "--out", "/nonexistent-folder/p.tar"], "'/nonexistent-folder/p.tar'"),
    (["build-fl-image", "--project", "p", "--out", "p.tar", "--platform", "linux/riscv64"], "'linux/riscv64'"),
    (["build-fl-image", "--project", "p", "--out", "p.tar", "--compose-env", ".env"], "--compose-env"),
], ids=["missing folder", "unknown platform", "compose env without docker"])
def test_build_fl_image_without_docker_refuses_bad_arguments_with_exit_2(argv, named):
    done = run_cli(*argv)
    assert done.returncode == 2 and named in done.stderr, done.stderr
