"""Logins in the backend store (issue 24): a tenant's users and grants live in MariaDB (<database>_auth), so two
instances of its tracking server agree at once, a killed instance's replacement loses nothing, and an earlier
release's SQLite auth database is moved in once by `up`."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pymysql
import pytest
import requests
from conftest import free_port
from flops_mlops.tracking.auth_store import INITIAL_REVISION, MOVED_SUFFIX
from flops_mlops.tracking.server import auth_db_path, is_healthy, server_argv, server_env
from flops_mlops.tracking.users import AuthAdmin

pytestmark = pytest.mark.services

PASSWORD, NEW_PASSWORD = "alice-first-password", "alice-second-password"


def auth_db(stack, tenant: str = "acme"):
    config = stack.load()
    b = config.backend_store
    return pymysql.connect(host=b.host, port=b.port, user=f"mlflow_{tenant}",
                           password=stack.secrets().db_password(tenant), database=f"mlflow_{tenant}_auth")


def query(stack, sql: str, args=()) -> list[tuple]:
    with auth_db(stack) as conn, conn.cursor() as cur:
        cur.execute(sql, args)
        return list(cur.fetchall())


class Instance:
    """One more instance of the tenant's tracking server: same stores, same environment, its own port."""

    def __init__(self, stack, folder: Path, tenant: str = "acme"):
        config = stack.load()
        self.tenant = config.tenants[0]
        self.port = free_port()
        argv = server_argv(config, self.tenant)
        argv[argv.index("--port") + 1] = str(self.port)
        argv[argv.index("--allowed-hosts") + 1] += f",127.0.0.1:{self.port}"
        home = folder / f"instance-{self.port}"
        home.mkdir()
        env = {**server_env(config, self.tenant, stack.secrets(), auth_db_path(config, self.tenant)),
               "HOME": str(home)}
        self.log = home / "server.log"
        with open(self.log, "wb") as log:
            self.process = subprocess.Popen(argv, env=env, cwd=home, stdout=log, stderr=subprocess.STDOUT)
        self.uri = f"http://127.0.0.1:{self.port}"

    def wait(self, timeout: float = 240) -> None:
        deadline = time.monotonic() + timeout
        while not is_healthy(self.uri):
            assert self.process.poll() is None, self.log.read_text()[-3000:]
            assert time.monotonic() < deadline, f"instance on {self.port} not healthy"
            time.sleep(1)

    def stop(self) -> None:
        if self.process.poll() is None:
            os.kill(self.process.pid, signal.SIGTERM)
            try:
                self.process.wait(30)
            except subprocess.TimeoutExpired:
                os.kill(self.process.pid, signal.SIGKILL)
                self.process.wait(10)


def status_as(uri: str, user: str, password: str, experiment: str) -> int:
    return requests.get(f"{uri}/api/2.0/mlflow/experiments/get", params={"experiment_id": experiment},
                        auth=(user, password), timeout=30).status_code


def tracking_pid(stack) -> int:
    import json

    services = json.loads(stack.cli("status", "--json", check=True).stdout)["services"]
    return next(s["pid"] for s in services if s["name"].startswith("tracking-"))


def test_two_instances_share_users_and_grants_and_a_replacement_loses_nothing(make_stack, tmp_path):
    stack = make_stack("native")
    stack.up()
    config = stack.load()
    tenant = config.tenants[0]
    first = f"http://127.0.0.1:{config.tracking_port(tenant)}"
    assert not auth_db_path(config, tenant).exists()  # nothing of the login beside the server
    # MLflow's schema at its head, the initial revision created by us with distinct foreign key names.
    names = {row[0] for row in query(stack, "SELECT CONSTRAINT_NAME FROM information_schema.TABLE_CONSTRAINTS "
                                            "WHERE CONSTRAINT_SCHEMA = DATABASE() AND CONSTRAINT_TYPE = 'FOREIGN KEY'")}
    assert {"fk_experiment_permissions_user_id", "fk_registered_model_permissions_user_id"} <= names
    from alembic.script import ScriptDirectory
    from mlflow.server.auth.db.utils import _get_alembic_config

    head = ScriptDirectory.from_config(_get_alembic_config("sqlite://")).get_current_head()
    assert query(stack, "SELECT version_num FROM alembic_version_auth") == [(head,)]
    assert head != INITIAL_REVISION

    second = Instance(stack, tmp_path)
    try:
        second.wait()
        admin_a, admin_b = AuthAdmin(first, stack.admin()[1]), AuthAdmin(second.uri, stack.admin()[1])
        experiment = admin_a.experiment_id("shared", create=True)
        # A user added through one instance logs in through the other at once; a grant likewise.
        admin_a.add_user("alice", PASSWORD)
        assert status_as(second.uri, "alice", PASSWORD, experiment) == 403
        admin_a.grant("alice", "experiment", experiment, "READ")
        assert status_as(second.uri, "alice", PASSWORD, experiment) == 200
        assert status_as(first, "alice", PASSWORD, experiment) == 200  # both remember the login now
        admin_b.revoke("alice", "experiment", experiment)
        assert status_as(first, "alice", PASSWORD, experiment) == 403
        admin_b.grant("alice", "experiment", experiment, "READ")
        # A password changed through one instance: the other refuses the old one at once, remembered or not.
        admin_b.set_password("alice", NEW_PASSWORD)
        assert status_as(first, "alice", PASSWORD, experiment) == 401
        assert status_as(first, "alice", NEW_PASSWORD, experiment) == 200

        # The first instance is killed (no goodbye); a new one on another port has every user and grant.
        os.kill(tracking_pid(stack), signal.SIGKILL)
        second.stop()
        third = Instance(stack, tmp_path)
        try:
            third.wait()
            assert status_as(third.uri, "alice", NEW_PASSWORD, experiment) == 200
            assert status_as(third.uri, "alice", PASSWORD, experiment) == 401
            # A user deleted through one instance is refused by another at once.
            fourth = Instance(stack, tmp_path)
            try:
                fourth.wait()
                assert status_as(fourth.uri, "alice", NEW_PASSWORD, experiment) == 200
                AuthAdmin(third.uri, stack.admin()[1]).remove_user("alice")
                assert status_as(fourth.uri, "alice", NEW_PASSWORD, experiment) == 401
            finally:
                fourth.stop()
        finally:
            third.stop()
    finally:
        second.stop()


def write_sqlite_auth_db(path: Path, admin_password: str) -> dict:
    """An auth database as an earlier release left it beside the server (MLflow's own SQLite schema), with a
    user, grants of both kinds and the admin; its rows, per table."""
    code = f"""
import json, sqlite3, sys
from mlflow.server.auth.sqlalchemy_store import SqlAlchemyStore
store = SqlAlchemyStore()
store.init_db("sqlite:///{path}")
store.create_user("admin", sys.argv[1], is_admin=True)
store.create_user("bob", "bob-password-of-before")
store.create_experiment_permission("7", "bob", "EDIT")
store.create_registered_model_permission("bobs-model", "bob", "READ")
conn = sqlite3.connect("{path}")
tables = [r[0] for r in conn.execute("SELECT name FROM sqlite_master WHERE type = 'table'")]
print(json.dumps({{t: sorted(map(list, conn.execute(f"SELECT * FROM {{t}}"))) for t in tables
                  if t != "alembic_version_auth"}}, default=str))
"""
    import json

    out = subprocess.run([sys.executable, "-c", code, admin_password], capture_output=True, text=True, check=True,
                         timeout=300)
    return json.loads(out.stdout.strip().splitlines()[-1])


def test_up_moves_an_earlier_sqlite_auth_database_into_mariadb_once(make_stack):
    stack = make_stack("native")
    config = stack.load()
    tenant = config.tenants[0]
    old = auth_db_path(config, tenant)
    old.parent.mkdir(parents=True, mode=0o700)
    before = write_sqlite_auth_db(old, stack.admin()[1])
    # MLflow 3.17 keeps grants as roles (migration e5f6a7b8c9d0): whichever tables hold them, all must come over.
    assert len(before["users"]) == 2 and sum(len(rows) for table, rows in before.items() if table != "users") >= 2
    stack.up()
    kept = old.with_name(old.name + MOVED_SUFFIX)
    assert not old.exists() and kept.exists()  # renamed, not deleted
    with auth_db(stack) as conn, conn.cursor() as cur:
        for table, rows in before.items():
            cur.execute(f"SELECT * FROM `{table}`")  # table names from MLflow's own SQLite schema
            assert sorted(map(list, ((str(v) if not isinstance(v, (int, str)) else v for v in row)
                                     for row in cur.fetchall()))) == [
                [v if isinstance(v, (int, str)) else str(v) for v in row] for row in rows], table
    uri = f"http://127.0.0.1:{config.tracking_port(tenant)}"
    # bob's password hash came over: bob logs in with his old password, and sees what he was granted.
    for password, expected in (("bob-password-of-before", 200), ("not-bobs-password", 401)):
        assert requests.get(f"{uri}/api/2.0/mlflow/experiments/search", params={"max_results": 1},
                            auth=("bob", password), timeout=30).status_code == expected
    # Once: a second `up` finds no file to move and keeps MariaDB's users.
    stack.down()
    stack.up()
    assert kept.exists() and not old.exists()
    assert query(stack, "SELECT COUNT(*) FROM users WHERE username = 'bob'") == [(1,)]



def test_restoring_an_archive_with_an_sqlite_auth_database_moves_its_users_into_mariadb(make_stack, tmp_path):
    """An archive of a release that kept the logins in SQLite (db/auth.sqlite, with a MySQL tracking database):
    the restore empties mlflow_<tenant>_auth, the restarted server moves the file's users in."""
    import shutil

    from flops_mlops.backup import archive

    stack = make_stack("native")
    stack.up()
    done = stack.cli("backup", "--tenant", "acme", "--out", str(tmp_path / "backups"), check=True)
    checked = archive.extract_checked(Path(done.stdout.strip().splitlines()[-1]), tmp_path / "extracted")
    staging = tmp_path / "old" / "staging"
    shutil.copytree(checked.folder, staging)
    (staging / "manifest.json").unlink(missing_ok=True)
    (staging / archive.AUTH_SQL).unlink()  # as an earlier release wrote it: the users in a SQLite file
    write_sqlite_auth_db(staging / archive.AUTH_SQLITE, stack.admin()[1])
    manifest = {k: v for k, v in checked.manifest.items() if k != "files"}
    old = archive.write(staging, manifest, tmp_path / "old" / "flops-backup-acme-old.tar")

    restored = stack.cli("restore", "--tenant", "acme", "--force", str(old))
    assert restored.returncode == 0, restored.stderr
    config = stack.load()
    kept = auth_db_path(config, config.tenants[0])
    assert not kept.exists() and kept.with_name(kept.name + MOVED_SUFFIX).exists()
    uri = f"http://127.0.0.1:{config.tracking_port(config.tenants[0])}"
    for user, password, expected in (("bob", "bob-password-of-before", 200), ("bob", "wrong-password-x", 401),
                                     ("admin", stack.admin()[1], 200)):
        assert requests.get(f"{uri}/api/2.0/mlflow/experiments/search", params={"max_results": 1},
                            auth=(user, password), timeout=30).status_code == expected, user
