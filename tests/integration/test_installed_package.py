"""flops-mlops as a user installs it: a wheel built from this checkout, installed into a fresh venv outside it,
run from an empty folder that holds only a configuration file (and the secrets file `secrets init` writes there).

The wheel is built once for this module (pip wheel with build isolation: setuptools from the package index or the
local cache). Its third-party dependencies (MLflow, pyinfra, ...) are not installed a second time: a .pth file in
the fresh venv adds the test venv's site-packages to its path. That folder does not hold flops_mlops itself (the
checkout's editable install is a path in a .pth file there, and Python reads .pth files only in site folders,
not in folders added this way); the first test checks that the CLI imports flops_mlops from the fresh venv.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import sysconfig
from pathlib import Path

import pytest
import yaml
from conftest import ROOT

GOLDEN = ROOT / "tests" / "unit" / "golden" / "oakestra"
# What building the wheel reads (pyproject.toml, setup.py and MANIFEST.in name the rest).
SOURCES = ["pyproject.toml", "setup.py", "MANIFEST.in", "README.md", "sla_templates", "deploy/flops_mlops",
           "deploy/pyinfra", "deploy/images/constraints.txt", "deploy/images/fl-project", "examples"]


def run(argv: list, cwd: Path, env: dict | None = None, timeout: float = 300) -> subprocess.CompletedProcess:
    clean = {k: v for k, v in os.environ.items() if not k.startswith(("FLOPS_", "PYTHONPATH"))}
    return subprocess.run([str(a) for a in argv], cwd=cwd, capture_output=True, text=True, timeout=timeout,
                          env={**clean, **(env or {})})


@pytest.fixture(scope="module")
def installed(tmp_path_factory):
    """(the installed `flops-mlops` command, an empty folder with stack.yaml only, the venv's python)."""
    base = tmp_path_factory.mktemp("installed")
    source = base / "source"
    for relative in SOURCES:
        origin, target = ROOT / relative, source / relative
        target.parent.mkdir(parents=True, exist_ok=True)
        if origin.is_dir():
            shutil.copytree(origin, target, ignore=shutil.ignore_patterns("__pycache__", "*.pyc", "*.egg-info"))
        else:
            shutil.copy2(origin, target)
    built = run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--quiet", "-w", base / "dist", source], base)
    assert built.returncode == 0, built.stderr
    wheel = next((base / "dist").glob("flops_mlops-*.whl"))
    venv = base / "venv"
    assert run([sys.executable, "-m", "venv", "--without-pip", venv], base).returncode == 0
    python = venv / "bin" / "python"
    done = run([sys.executable, "-m", "pip", "--python", python, "install", "--no-deps", "--quiet", wheel], base)
    assert done.returncode == 0, done.stderr
    site = Path(run([python, "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"], base).stdout.strip())
    (site / "test-dependencies.pth").write_text(sysconfig.get_paths()["purelib"] + "\n")
    folder = base / "work"
    folder.mkdir()
    data = yaml.safe_load((ROOT / "configs" / "oakestra.yaml").read_text())
    data["state_dir"], data["secrets_file"] = "state", "secrets.env"
    (folder / "stack.yaml").write_text(yaml.safe_dump(data, sort_keys=False))
    return venv / "bin" / "flops-mlops", folder, python


def test_the_cli_runs_the_installed_package_with_its_templates_and_deploys(installed):
    command, folder, python = installed
    where = run([python, "-c", "import flops_mlops.bundled as b; print(b.__file__); "
                               "print(b.folder('sla_templates')); print(b.folder('pyinfra'))"], folder)
    module, templates, deploys = where.stdout.split()
    venv = command.parent.parent
    for path in (module, templates, deploys):
        assert Path(path).is_relative_to(venv), path
    assert command.is_file()


def test_the_installed_package_trains_its_bundled_example_by_default(installed):
    """`round` without --ml-repo: the scikit-learn example inside the wheel, with FLOps' flops_utils beside it,
    passes the contract check as learner 0 (its own share of the digits)."""
    command, folder, python = installed
    where = run([python, "-c", "from flops_mlops.fl.ml_repo import repository_folder; print(repository_folder(''))"],
                folder)
    example = Path(where.stdout.strip())
    assert example.is_relative_to(command.parent.parent) and (example / "model_manager.py").is_file(), example
    checked = run([python, "-m", "flops_mlops.fl.contract", "--ml-repo", example, "--json"], folder,
                  env={"FLOPS_LEARNER_INDEX": "0", "FLOPS_LEARNERS": "2"})
    assert checked.returncode == 0, checked.stderr[-3000:]
    result = json.loads(checked.stdout.splitlines()[-1])
    assert result["violations"] == [] and result["flavor"] == "sklearn" and result["parameters"] == 650


def test_render_from_an_empty_folder_writes_what_the_checkout_renders(installed):
    command, folder, _ = installed
    result = run([command, "--config", "stack.yaml", "render", "--out", "out"], folder)
    assert result.returncode == 0, result.stderr
    written = sorted(p.name for p in (folder / "out").iterdir())
    assert written == sorted(p.name for p in GOLDEN.iterdir())
    for name in written:
        assert (folder / "out" / name).read_bytes() == (GOLDEN / name).read_bytes(), name


def test_templates_option_still_overrides_the_packaged_templates(installed):
    command, folder, python = installed
    packaged = Path(run([python, "-c", "import flops_mlops.bundled as b; print(b.folder('sla_templates'))"],
                        folder).stdout.strip())
    mine = folder / "my-templates"
    shutil.copytree(packaged, mine)
    template = mine / "tracking.json.j2"
    template.write_text(template.read_text().replace("MLflow tracking servers, one per tenant", "ours"))
    result = run([command, "--config", "stack.yaml", "render", "--out", "mine", "--templates", mine], folder)
    assert result.returncode == 0, result.stderr
    assert '"application_desc": "ours"' in (folder / "mine" / "tracking.json").read_text()
    assert (folder / "mine" / "stores.json").read_bytes() == (GOLDEN / "stores.json").read_bytes()


def test_push_help_and_provision_dry_with_a_shipped_inventory(installed, tmp_path):
    command, folder, _ = installed
    shown = run([command, "push", "--help"], folder)
    assert shown.returncode == 0 and "--orchestrator URL" in shown.stdout and "--templates DIR" in shown.stdout
    # The shipped Oakestra file as it is (tracking.tls on: pyinfra's docker hosts serve HTTPS too).
    (folder / "provision.yaml").write_text((folder / "stack.yaml").read_text())
    assert run([command, "--config", "provision.yaml", "secrets", "init"], folder).returncode == 0
    root = tmp_path / "sandbox"
    plan = run([command, "--config", "provision.yaml", "provision", "--inventory", "sandbox", "--dry"], folder,
               env={"FLOPS_SANDBOX_ROOT": str(root)})
    assert plan.returncode == 0, plan.stdout[-3000:] + plan.stderr[-3000:]
    output = plan.stdout + plan.stderr
    # Docker mode from an installed package: the compose project without build sections (nothing to copy).
    assert "FLOps docker host (Docker Engine + Compose) | Rendered compose.yaml" in output, output[-3000:]
    assert "| Copy " not in output
    assert not root.exists()  # a plan changes nothing
    unknown = run([command, "--config", "provision.yaml", "provision", "--inventory", "nowhere", "--dry"], folder)
    assert unknown.returncode == 2 and "--inventory: nowhere: no such file, nor an inventory shipped" in unknown.stderr
