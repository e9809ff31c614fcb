"""An MLflow upgrade with data (docs/backup.md): a native stack (MariaDB + vsftpd) created and used with an older
MLflow, then brought up with the pinned one. `up` backs the tenant up before the schema upgrade, everything reads
back the same, and the champion serves. A schema that a newer MLflow wrote is refused; the older MLflow restores
the archive `up` took (the roll-back). An archive the older MLflow takes restores into a purged stack of the
pinned one (a restore into a newer MLflow).

The older MLflow is a real release from the package index (OLD: its three wheels, on PYTHONPATH in front of the
venv's, every other package shared): the stack's own code runs on it, as a deployment of that time would.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import tarfile
import tempfile
from pathlib import Path

import conftest
import pytest
from test_backup import assert_champion_serves, run_round, snapshot
from tracking_checks import logged_in

pytestmark = pytest.mark.timeout(1500)

OLD = "3.16.1"  # the release before the pinned 3.17.2; its tracking schema is two migrations behind


@pytest.fixture(scope="module")
def old_mlflow():
    """PYTHONPATH that puts MLflow OLD in front of the pinned one (readable by the tenants' accounts)."""
    folder = Path(tempfile.mkdtemp(prefix="flops-mlflow-old-"))
    folder.chmod(0o755)
    done = subprocess.run([sys.executable, "-m", "pip", "install", "--quiet", "--no-deps", "--target", str(folder),
                           f"mlflow=={OLD}", f"mlflow-skinny=={OLD}", f"mlflow-tracing=={OLD}"],
                          capture_output=True, text=True, timeout=600)
    if done.returncode != 0:
        shutil.rmtree(folder, ignore_errors=True)
        conftest.missing_service(f"MLflow {OLD} could not be installed from the package index: {done.stderr[-500:]}")
    for path in folder.rglob("*"):
        path.chmod(0o755 if path.is_dir() else 0o644)
    yield {"PYTHONPATH": str(folder)}
    shutil.rmtree(folder, ignore_errors=True)


def status(stack: conftest.TestStack, env: dict | None = None) -> dict:
    return json.loads(stack.cli("status", "--json", check=True, env=env).stdout)["tenants"][0]


def backups(stack: conftest.TestStack) -> list[Path]:
    return sorted((stack.load().state_dir / "backups").glob("*.tar*"))


def test_up_backs_up_then_upgrades_and_everything_reads_back(make_stack, old_mlflow, tmp_path):
    from flops_mlops.tracking import schema

    stack = make_stack("native")
    old = stack.cli("up", "--detach", env=old_mlflow)
    assert old.returncode == 0, old.stderr
    before_status = status(stack, old_mlflow)
    assert before_status["mlflow_version"] == OLD
    assert before_status["schema_revision"] != schema.heads()["tracking"]
    with logged_in(stack.admin()):
        first = run_round(stack, "Demo", env=old_mlflow)
        (tmp_path / "alice.pw").write_text("alice-has-a-long-password\n")
        stack.cli("user", "add", "--tenant", "acme", "--name", "alice", "--password-file",
                  str(tmp_path / "alice.pw"), check=True, env=old_mlflow)
        stack.cli("user", "grant", "--tenant", "acme", "--name", "alice", "--project", "Demo", check=True,
                  env=old_mlflow)
        before = snapshot(stack)
        assert before["runs"] and before["files"] and len(before["users"]) >= 3
        stack.down()
        assert backups(stack) == []

        upgraded = stack.up()  # the pinned MLflow
        assert "will upgrade its schema" in upgraded.stderr and "backing the tenant up first" in upgraded.stderr
        [archive] = backups(stack)
        assert f"restore --tenant acme --force {archive}" in upgraded.stderr  # the roll-back, spelled out
        with tarfile.open(archive) as tar:
            manifest = json.loads(tar.extractfile("manifest.json").read())
        # taken by the pinned MLflow, of the data as the older one left it
        assert manifest["schema_revision"] == before_status["schema_revision"]

        after_status = status(stack)
        assert after_status["mlflow_version"] == schema.mlflow_version() != OLD
        assert after_status["schema_revision"] == schema.heads()["tracking"]
        after = snapshot(stack)
        for key in before:
            assert after[key] == before[key], key

        assert_champion_serves(stack, "Demo", first["model_version"])

        # Nothing left to upgrade: the next start takes no backup.
        stack.down()
        again = stack.up()
        assert "backing the tenant up" not in again.stderr and backups(stack) == [archive]

        # Back to the older MLflow: it does not know the schema the pinned one wrote, and `up` says so.
        stack.down()
        refused = stack.cli("up", "--detach", env=old_mlflow)
        assert refused.returncode == 2, refused.stderr
        assert "does not know (a newer MLflow wrote it)" in refused.stderr and "restore a backup" in refused.stderr
        assert os.path.exists(archive)

        # The roll-back, while the stores run: the older MLflow restores the archive `up` took (restore stops the
        # tenant's tracking server, replaces its data and starts it again), and runs on it.
        stack.up()
        rolled = stack.cli("restore", "--tenant", "acme", "--force", str(archive), env=old_mlflow)
        assert rolled.returncode == 0, rolled.stderr
        rolled_back = status(stack, old_mlflow)
        assert rolled_back["healthy"] and rolled_back["schema_revision"] == before_status["schema_revision"]

        # Restore into a newer MLflow: an archive the older MLflow takes goes into a purged stack of the pinned one,
        # whose server brings the schema up to date; everything reads back, and the champion serves.
        taken = stack.cli("backup", "--tenant", "acme", "--out", str(tmp_path / "old-backups"), env=old_mlflow)
        assert taken.returncode == 0, taken.stderr
        old_archive = Path(taken.stdout.strip().splitlines()[-1])
        with tarfile.open(old_archive) as tar:
            assert json.loads(tar.extractfile("manifest.json").read())["mlflow_version"] == OLD
        stack.down("--purge")
        stack.up()
        restored = stack.cli("restore", "--tenant", "acme", str(old_archive))
        assert restored.returncode == 0, restored.stderr
        assert status(stack)["schema_revision"] == schema.heads()["tracking"]
        newer = snapshot(stack)
        for key in before:
            assert newer[key] == before[key], key
        assert_champion_serves(stack, "Demo", first["model_version"])
