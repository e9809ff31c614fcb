"""The stack run natively (embedded default and real MariaDB + vsftpd), driven through the real CLI."""

from __future__ import annotations

import ftplib
import json
import re
import sqlite3
from pathlib import Path

import mlflow
import psutil
import pymysql
import pytest
from flops_mlops.stores.vsftpd import pam_service_name
from flops_mlops.tracking.server import sqlite_path
from tracking_checks import (
    TENANT_AUTH_PLUGIN,
    assert_the_tested_mariadb,
    auth_plugins,
    backend_store_facts,
    load_and_predict,
    log_example,
    logged_in,
    model_files_on_ftp,
    mysql_counts,
)

pytestmark = pytest.mark.services


def status(stack) -> dict:
    result = stack.cli("status", "--json", check=True)
    return json.loads(result.stdout)


def stack_pids(stack) -> list[int]:
    return [s["pid"] for s in status(stack)["services"] if s["pid"]]


@pytest.mark.parametrize("kind", ["local", "native"])
def test_two_tenants_log_to_their_own_stores_and_see_only_their_own(make_stack, kind):
    stack = make_stack(kind, tenants=["acme", "globex"])
    started = stack.up()
    # `up` says which service it waits for, with the seconds since that service started, and when it is ready.
    for service in ("tracking server acme", "tracking server globex", "artifact store"):
        assert re.search(rf"^waiting for {service} \(.+\): \d+ s", started.stderr, re.MULTILINE), started.stderr
        assert re.search(rf"^{service} \(.+\): ready after \d+\.\d s", started.stderr, re.MULTILINE)
    config, secrets = stack.load(), stack.secrets()
    acme, globex = config.tenant("acme"), config.tenant("globex")
    store = config.artifact_store

    logged = log_example(config.tracking_uri(acme), experiment="acme-project", login=stack.admin("acme"))
    assert list(load_and_predict(config.tracking_uri(acme), logged.model_uri, login=stack.admin("acme"))) == [1, 0]

    # The model travelled through the tracking server to acme's FTP folder ...
    files = model_files_on_ftp(store.host, store.port, acme.ftp_user, secrets.ftp_password("acme"), logged)
    assert {"MLmodel", "requirements.txt", "input_example.json"} <= set(files)
    # ... and not to the tracking server's local disk.
    workdir = config.state_dir / "tracking" / "acme"
    assert not [p for p in workdir.rglob("*") if p.is_file()]

    # The metadata rows are in acme's own database.
    if kind == "native":
        b = config.backend_store
        counts = mysql_counts(b.host, b.port, acme.db_user, secrets.db_password("acme"), acme.database, logged)
        assert counts == {"runs": 1, "params": 2, "metrics": 2, "logged_models": 1}
        # Debian's MariaDB, as in our backend-store image: the same collation and auth plugin.
        assert_the_tested_mariadb(backend_store_facts(b.host, b.port, (acme.db_user, secrets.db_password("acme")),
                                                      acme.database))
        assert auth_plugins(acme.db_user, unix_socket=str(config.state_dir / "mysql" / "mysqld.sock"), user="root",
                            password=secrets.mysql_admin_password) == {TENANT_AUTH_PLUGIN}
    else:
        with sqlite3.connect(sqlite_path(config, acme)) as db:
            assert db.execute("SELECT COUNT(*) FROM runs WHERE run_uuid = ?", (logged.run_id,)).fetchone() == (1,)

    # Isolation: globex's tracking server knows nothing of acme's experiment, even to its admin ...
    with logged_in(stack.admin("globex")):
        client = mlflow.MlflowClient(config.tracking_uri(globex))
        assert "acme-project" not in [e.name for e in client.search_experiments()]
    # ... acme's admin password does not open globex's server ...
    with logged_in(stack.admin("acme")), pytest.raises(mlflow.exceptions.MlflowException, match="401|authenticat"):
        mlflow.MlflowClient(config.tracking_uri(globex)).search_experiments()
    # ... globex's FTP user cannot reach acme's folder (chrooted to its own) ...
    with ftplib.FTP() as ftp:
        ftp.connect(store.host, store.port, timeout=10)
        ftp.login(globex.ftp_user, secrets.ftp_password("globex"))
        assert ftp.pwd() == "/"
        assert acme.ftp_user not in ftp.nlst("/")
        for path in (f"/../{acme.ftp_user}/artifacts", f"../{acme.ftp_user}"):
            try:
                listing = ftp.nlst(path)
            except ftplib.error_perm:
                listing = []
            assert not any(str(logged.experiment_id) in entry for entry in listing)
    # ... and acme's FTP password does not open globex's account.
    with ftplib.FTP() as ftp, pytest.raises(ftplib.error_perm):
        ftp.connect(store.host, store.port, timeout=10)
        ftp.login(globex.ftp_user, secrets.ftp_password("acme"))
    if kind == "native":
        b = config.backend_store
        with pymysql.connect(host=b.host, port=b.port, user=acme.db_user,
                             password=secrets.db_password("acme")) as conn, conn.cursor() as cur:
            cur.execute("SHOW DATABASES")
            shown = {row[0] for row in cur.fetchall()}
            # Its own two databases (tracking, and its server's users and grants), none of globex's.
            assert {acme.database, f"{acme.database}_auth"} <= shown
            assert not {globex.database, f"{globex.database}_auth"} & shown
            with pytest.raises(pymysql.err.OperationalError) as denied:
                cur.execute(f"SELECT COUNT(*) FROM `{globex.database}`.runs")
            assert denied.value.args[0] in (1044, 1142)  # access denied
        # No way in without a password: not as root, not anonymously.
        for user in ("root", "", acme.db_user):
            with pytest.raises(pymysql.err.OperationalError) as refused:
                pymysql.connect(host=b.host, port=b.port, user=user, password="", connect_timeout=5)
            assert refused.value.args[0] == 1045


@pytest.mark.parametrize("kind", ["local", "native"])
def test_down_stops_everything_and_up_again_finds_the_data(make_stack, kind):
    stack = make_stack(kind)
    stack.up()
    pids = stack_pids(stack)
    assert len(pids) == (3 if kind == "native" else 2)  # stores + one tracking server
    children = [c.pid for pid in pids for c in psutil.Process(pid).children(recursive=True)]
    config = stack.load()
    uri = config.tracking_uri(config.tenant("acme"))
    logged = log_example(uri, experiment="kept", login=stack.admin())

    stack.down()
    assert not [pid for pid in pids + children if psutil.pid_exists(pid)
                and psutil.Process(pid).status() != psutil.STATUS_ZOMBIE]
    assert all(not s["running"] for s in status(stack)["services"])

    stack.up()
    with logged_in(stack.admin()):
        run = mlflow.MlflowClient(uri).get_run(logged.run_id)
    assert run.data.metrics["accuracy"] > 0.9
    assert list(load_and_predict(uri, logged.model_uri, login=stack.admin())) == [1, 0]

    stack.down("--purge")
    assert not config.state_dir.exists()
    assert not (Path("/etc/pam.d") / pam_service_name(config)).exists()


def test_status_json_names_state_dir_and_masks_passwords(make_stack):
    stack = make_stack("local", tenants=["acme"])
    stack.up()
    report = status(stack)
    config, secrets = stack.load(), stack.secrets()
    assert report["state_dir"] == str(config.state_dir)
    (tenant,) = report["tenants"]
    assert tenant["id"] == "acme" and tenant["healthy"]
    assert tenant["tracking_uri"] == config.tracking_uri(config.tenant("acme"))
    assert tenant["backend_store"].startswith("sqlite:///")
    assert tenant["artifact_destination"].startswith("ftp://flops_acme:***@")
    assert secrets.ftp_password("acme") not in json.dumps(report)


def test_no_password_in_process_arguments_or_logs(make_stack):
    stack = make_stack("native", tenants=["acme"])
    stack.up()
    config, secrets = stack.load(), stack.secrets()
    log_example(config.tracking_uri(config.tenant("acme")), login=stack.admin())
    passwords = list(secrets.values.values())
    for proc in psutil.process_iter(["cmdline"]):
        cmdline = " ".join(proc.info["cmdline"] or [])
        assert not any(p in cmdline for p in passwords), cmdline
    for log in (config.state_dir / "logs").iterdir():
        text = log.read_text(errors="replace")
        assert not any(p in text for p in passwords), log


def test_up_creates_a_state_dir_that_does_not_exist_yet(make_stack, tmp_path):
    """As on a fresh machine (`make demo`): the state dir and the folders above it are made by `up`."""
    import tempfile

    outer = Path(tempfile.mkdtemp(prefix="flops-test-fresh-"))
    outer.chmod(0o711)
    try:
        stack = make_stack("local", state_dir=str(outer / "new" / "state"))
        stack.up()
        report = status(stack)
        assert report["tenants"][0]["healthy"]
        stack.down("--purge")
    finally:
        import shutil

        shutil.rmtree(outer, ignore_errors=True)


@pytest.mark.parametrize("kind", ["local", "native"])
def test_a_tracking_server_is_one_process_without_secrets_in_its_arguments(make_stack, kind):
    """No `mlflow server` parent and no uvicorn child: the recorded pid serves, alone, and stops on SIGTERM."""
    from flops_mlops.processes import ManagedProcess

    stack = make_stack(kind, tenants=["acme"])
    stack.up()
    config, secrets = stack.load(), stack.secrets()
    acme = config.tenant("acme")
    server = ManagedProcess("tracking-acme", config.state_dir)
    proc = server.recorded()
    assert proc is not None
    assert proc.children(recursive=True) == []
    assert proc.cmdline()[1:3] == ["-m", "flops_mlops.tracking.runner"]
    assert not any(p in " ".join(proc.cmdline()) for p in secrets.values.values())

    # That one process does all of it: login, metadata, a model through the artifact proxy and back.
    uri = config.tracking_uri(acme)
    with logged_in(None), pytest.raises(mlflow.exceptions.MlflowException, match="401|authenticat"):
        mlflow.MlflowClient(uri).search_experiments()
    logged = log_example(uri, experiment="one-process", login=stack.admin())
    assert list(load_and_predict(uri, logged.model_uri, login=stack.admin())) == [1, 0]
    assert proc.children(recursive=True) == []
    # What MLflow imports only when installed, and a server never uses, stayed out of it.
    maps = Path(f"/proc/{proc.pid}/maps").read_text()
    assert "/scipy/" not in maps and "/pyarrow/" not in maps

    stack.down()
    assert not psutil.pid_exists(proc.pid) or proc.status() == psutil.STATUS_ZOMBIE
    assert "Finished server process" in server.log_file.read_text(errors="replace")  # stopped gracefully
