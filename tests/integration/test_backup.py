"""Backup, restore and gc of a tenant's data on real stacks (docs/backup.md).

The restore drill, on the embedded (SQLite + embedded FTP) and the native stack (MariaDB + vsftpd): a real FL
round and a user with a grant, `backup`, `down --purge`, `up`, `restore`; then everything reads back the same
(runs with params, metrics and their history, tags, experiments, registered models, versions and aliases, logged
models, users and grants, every artifact byte), `serve` serves the same champion, and `round` goes on with the
same project. A damaged archive changes nothing. A backup taken while a round logs names only model versions
whose files it holds. `gc` removes a deleted run's and a deleted model version's files and nothing else.
"""

from __future__ import annotations

import io
import json
import re
import sqlite3
import stat
import subprocess
import tarfile
import time
from pathlib import Path

import conftest
import pytest
from backup_checks import ftp_hashes, tenant_snapshot
from conftest import free_port
from serving_checks import assert_serves, served_version
from tracking_checks import log_example, logged_in

pytestmark = pytest.mark.timeout(1500)

QUIET = {"MLFLOW_HTTP_REQUEST_MAX_RETRIES": "1", "FLWR_TELEMETRY_ENABLED": "0", "MLFLOW_DISABLE_TELEMETRY": "true"}


def run_round(stack: conftest.TestStack, project: str, rounds: int = 2, env: dict | None = None) -> dict:
    done = stack.cli("round", "--tenant", "acme", "--project", project, "--rounds", str(rounds), "--learners", "2",
                     "--json", env={**QUIET, **(env or {})}, timeout=600)
    assert done.returncode == 0, done.stderr
    return json.loads(done.stdout)


def tracking_uri(stack: conftest.TestStack) -> str:
    config = stack.load()
    return config.tracking_uri(config.tenant("acme"))


def ftp_files(stack: conftest.TestStack) -> dict[str, str]:
    """sha256 of every file in the tenant's FTP folder, by its path there."""
    config = stack.load()
    store = config.artifact_store
    return ftp_hashes(store.host, store.port, config.tenant("acme").ftp_user, stack.secrets().ftp_password("acme"))


def snapshot(stack: conftest.TestStack) -> dict:
    """Everything a tenant holds, as the admin reads it through its tracking server, and its FTP files."""
    return tenant_snapshot(tracking_uri(stack), stack.admin()[1], ftp_files(stack))


def assert_champion_serves(stack: conftest.TestStack, project: str, version: str) -> None:
    """`serve` of the project's champion serves ``version``, as pyfunc predicts; then it is stopped."""
    port = free_port()
    stack.cli("serve", "--tenant", "acme", "--project", project, "--port", str(port), "--detach", check=True)
    url = f"http://127.0.0.1:{port}"
    assert served_version(url) == version
    __import__("mlflow").set_tracking_uri(tracking_uri(stack))
    assert_serves(url, f"models:/{project}@champion")
    stack.cli("serve", "--tenant", "acme", "--project", project, "--stop", check=True)


def backup(stack: conftest.TestStack, out: Path) -> Path:
    done = stack.cli("backup", "--tenant", "acme", "--out", str(out), check=True)
    return Path(done.stdout.strip().splitlines()[-1])


@pytest.mark.parametrize("kind", ["local", "native"])
def test_restore_drill_brings_back_everything_and_the_project_goes_on(make_stack, tmp_path, kind):
    stack = make_stack(kind)
    stack.up()
    with logged_in(stack.admin()):
        first = run_round(stack, "Demo")
        (tmp_path / "alice.pw").write_text("alice-has-a-long-password\n")
        stack.cli("user", "add", "--tenant", "acme", "--name", "alice", "--password-file",
                  str(tmp_path / "alice.pw"), check=True)
        stack.cli("user", "grant", "--tenant", "acme", "--name", "alice", "--project", "Demo", check=True)
        before = snapshot(stack)
        assert before["runs"] and before["files"] and len(before["users"]) >= 3  # admin, fl-Demo, alice

        done = stack.cli("backup", "--tenant", "acme", "--out", str(tmp_path / "backups"), check=True)
        archive = Path(done.stdout.strip())
        assert stat.S_IMODE(archive.stat().st_mode) == 0o600
        assert "artifacts:" in done.stderr and "files" in done.stderr  # progress
        with tarfile.open(archive) as tar:
            names = tar.getnames()
            manifest = json.loads(tar.extractfile("manifest.json").read())
        assert names[0] == "manifest.json"
        auth = "db/auth.sql" if kind == "native" else "db/auth.sqlite"  # native: MariaDB's <database>_auth
        assert names.index(auth) < min(i for i, n in enumerate(names) if n.startswith("artifacts/"))
        assert manifest["tenant"] == "acme" and manifest["mlflow_version"] == __import__("mlflow").__version__
        assert re.fullmatch(r"[0-9a-f]{12}", manifest["schema_revision"])
        archived = {f["path"] for f in manifest["files"]}
        assert {f"artifacts{p.removeprefix('/artifacts')}" for p in before["files"]} <= archived

        stack.down("--purge")
        stack.up()
        status = stack.cli("status", "--json", check=True)
        assert json.loads(status.stdout)["tenants"][0]["schema_revision"] == manifest["schema_revision"]
        restored = stack.cli("restore", "--tenant", "acme", str(archive))
        assert restored.returncode == 0, restored.stderr
        after = snapshot(stack)
        for key in before:
            assert after[key] == before[key], key

        # A second restore without --force is refused: the tenant has data now. Nothing changes.
        again = stack.cli("restore", "--tenant", "acme", str(archive))
        assert again.returncode == 2 and "already has data" in again.stderr and "--force" in again.stderr
        # A damaged archive: refused before anything changes, even with --force.
        damaged = tmp_path / "damaged.tar"
        data = bytearray(archive.read_bytes())
        data[-20000] ^= 0xFF  # inside the last member's bytes (tar ends with two 512-byte zero blocks and padding)
        damaged.write_bytes(bytes(data))
        bad = stack.cli("restore", "--tenant", "acme", str(damaged), "--force")
        assert bad.returncode == 2 and ("checksum mismatch" in bad.stderr or "cannot read" in bad.stderr), bad.stderr
        assert "nothing was changed" in bad.stderr
        assert snapshot(stack)["files"] == before["files"]

        # The same champion is served, and the project goes on.
        assert_champion_serves(stack, "Demo", first["model_version"])
        second = run_round(stack, "Demo", rounds=1)
        assert second["experiment_id"] == first["experiment_id"]
        assert int(second["model_version"]) == int(first["model_version"]) + 1


def archived_files(archive: Path) -> tuple[dict, set[str]]:
    """An archive's manifest and the paths of the artifacts it holds (as paths in the tenant's FTP folder)."""
    with tarfile.open(archive) as tar:
        manifest = json.loads(tar.extractfile("manifest.json").read())
        files = {"/" + n for n in tar.getnames() if n.startswith("artifacts/") and tar.getmember(n).isfile()}
    return manifest, files


def test_backup_all_writes_one_archive_per_tenant_with_its_own_data_only(make_stack, tmp_path):
    stack = make_stack("local", tenants=["acme", "beta"])
    stack.up()
    config = stack.load()
    logged = {t: log_example(config.tracking_uri(config.tenant(t)), experiment=f"{t}-only", login=stack.admin(t))
              for t in ("acme", "beta")}

    done = stack.cli("backup", "--all", "--out", str(tmp_path / "backups"))
    assert done.returncode == 0, done.stderr
    archives = [Path(line) for line in done.stdout.split()]
    assert len(archives) == 2 and len(set(archives)) == 2
    assert "tenant acme:" in done.stderr and "tenant beta:" in done.stderr  # progress, per tenant
    by_tenant = {}
    for archive in archives:
        assert stat.S_IMODE(archive.stat().st_mode) == 0o600
        manifest, files = archived_files(archive)
        by_tenant[manifest["tenant"]] = (archive, files)
    assert set(by_tenant) == {"acme", "beta"}
    for tenant, other in (("acme", "beta"), ("beta", "acme")):
        archive, files = by_tenant[tenant]
        own, foreign = logged[tenant].model_id, logged[other].model_id
        assert any(own in path for path in files), f"{tenant}: its model's files are missing"
        assert not any(foreign in path for path in files), f"{tenant}'s archive holds {other}'s model"

    # One tenant's archive is not another's: restoring beta's as acme is refused, and nothing changes.
    wrong = stack.cli("restore", "--tenant", "acme", "--force", str(by_tenant["beta"][0]))
    assert wrong.returncode == 2 and "beta" in wrong.stderr and "nothing was changed" in wrong.stderr, wrong.stderr
    assert any(logged["acme"].model_id in path for path in ftp_files(stack))


def test_restore_refuses_bad_input_and_changes_nothing(make_stack, tmp_path):
    stack = make_stack("local")
    missing = stack.cli("restore", "--tenant", "acme", str(tmp_path / "nothing.tar"))
    assert missing.returncode == 2 and "nothing.tar: no such archive" in missing.stderr
    not_ours = tmp_path / "other.tar"
    with tarfile.open(not_ours, "w") as tar:
        tar.addfile(tarfile.TarInfo("hello.txt"), io.BytesIO(b""))
    refused = stack.cli("restore", "--tenant", "acme", str(not_ours))
    assert refused.returncode == 2 and "not a flops-mlops backup" in refused.stderr
    unknown = stack.cli("restore", "--tenant", "nobody", str(not_ours))
    assert unknown.returncode == 2 and "no tenant 'nobody'" in unknown.stderr
    assert stack.cli("backup", "--tenant", "acme").returncode == 2  # --out is required
    assert stack.cli("gc", "--tenant", "acme", "--older-than", "a month").returncode == 2


def archived_versions_have_their_files(archive: Path) -> int:
    """Every model version the archive's tracking database names has its logged model's files (MLmodel and the
    model) in the archive; returns how many versions it names."""
    with tarfile.open(archive) as tar:
        names = set(tar.getnames())
        db = archive.with_suffix(".sqlite")
        db.write_bytes(tar.extractfile("db/tracking.sqlite").read())
    with sqlite3.connect(db) as conn:
        rows = conn.execute("SELECT v.name, v.version, m.artifact_location FROM model_versions v JOIN logged_models m "
                            "ON v.source = 'models:/' || m.model_id").fetchall()
    for name, version, location in rows:
        folder = "artifacts/" + location.removeprefix("mlflow-artifacts:/").strip("/")
        files = {n for n in names if n.startswith(folder + "/")}
        assert f"{folder}/MLmodel" in files and len(files) >= 3, f"{name} version {version}: {sorted(files)}"
    return len(rows)


def test_a_backup_taken_while_a_round_logs_names_only_versions_whose_files_it_holds(make_stack, tmp_path):
    stack = make_stack("local")
    stack.up()
    with logged_in(stack.admin()):
        run_round(stack, "Early")
        argv = [*conftest.CLI, "--config", str(stack.config_path), "round", "--tenant", "acme", "--project", "Busy",
                "--rounds", "4", "--learners", "2", "--json"]
        out = tmp_path / "backups"
        with subprocess.Popen(argv, cwd=conftest.ROOT, env={**__import__("os").environ, **QUIET},
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE) as busy:
            archives = []
            while busy.poll() is None:
                archives.append(backup(stack, out))
                time.sleep(0.5)
            _, err = busy.communicate()
        assert busy.returncode == 0, err.decode()[-2000:]
        archives.append(backup(stack, out))
        assert len(archives) >= 3, "no backup overlapped the round"
        counts = [archived_versions_have_their_files(a) for a in archives]
        assert counts[0] >= 1 and counts[-1] == 2  # Early's version from the start; Busy's at the end


@pytest.mark.parametrize("kind", ["local", "native"])
def test_gc_removes_deleted_runs_and_model_versions_files_and_nothing_else(make_stack, kind):
    import mlflow

    stack = make_stack(kind)
    stack.up()
    uri = tracking_uri(stack)
    with logged_in(stack.admin()):
        run_round(stack, "Kept")
        doomed_model = log_example(uri, experiment="gc")
        kept_model = log_example(uri, experiment="gc")
        mlflow.set_tracking_uri(uri)
        mlflow.register_model(doomed_model.model_uri, "Doomed")
        mlflow.register_model(kept_model.model_uri, "Doomed")  # version 2 stays
        with mlflow.start_run(experiment_id=doomed_model.experiment_id) as run:
            mlflow.log_text("notes", "notes/a.txt")
            mlflow.log_text("more", "notes/deeper/b.txt")
        client = mlflow.MlflowClient(uri)
        client.delete_run(run.info.run_id)
        client.delete_model_version("Doomed", "1")
        before = ftp_files(stack)
        exp = doomed_model.experiment_id
        doomed = {p for p in before if p.startswith((f"/artifacts/{exp}/{run.info.run_id}/",
                                                      f"/artifacts/{exp}/models/{doomed_model.model_id}/"))}
        assert len(doomed) >= 5  # two notes and the model's files

        done = stack.cli("gc", "--tenant", "acme")
        assert done.returncode == 0, done.stderr
        assert run.info.run_id in done.stdout and doomed_model.model_id in done.stdout
        assert ftp_files(stack) == {p: h for p, h in before.items() if p not in doomed}
        assert stack.cli("gc", "--tenant", "acme").returncode == 0  # again: nothing to do, no error
        assert mlflow.pyfunc.load_model("models:/Doomed/2") is not None
        assert client.get_model_version_by_alias("Kept", "champion").version == "1"
