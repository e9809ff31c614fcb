"""Our FTP artifact repository (stores/ftp_repository.py) against real FTP servers: the embedded one (pyftpdlib)
and vsftpd, started by `flops-mlops up`; then the tracking server using it (logins per request, `mlflow gc`,
FTPS, and a hung store that does not hang the server).

Logins are counted in the FTP server's own log: pyftpdlib writes "USER '<user>' logged in.", vsftpd "OK LOGIN".
"""

from __future__ import annotations

import ftplib
import json
import os
import posixpath
import signal
import stat
import subprocess
import sys
import threading
import time
from pathlib import Path

import mlflow
import pytest
import requests
from conftest import free_port
from flops_mlops.configuration import certificates
from flops_mlops.stores import ftp_client
from flops_mlops.tracking.server import artifacts_destination, backend_store_uri
from mlflow.exceptions import MlflowException
from tracking_checks import ftp_listing, log_example, logged_in

pytestmark = pytest.mark.services


def logins(stack) -> int:
    """How many FTP logins the stack's artifact store has accepted so far (from its log)."""
    config = stack.load()
    logs = config.state_dir / "logs"
    if config.artifact_store.kind == "vsftpd":
        path, marker = logs / "vsftpd-transfers.log", "OK LOGIN"
    else:
        path, marker = logs / "artifact-store.log", "logged in."
    return path.read_text(errors="replace").count(marker) if path.exists() else 0


def repository(stack, tenant: str = "acme", **settings):
    """The repository a tracking server of ``stack`` builds from its artifacts destination (via MLflow's registry)."""
    from mlflow.store.artifact.artifact_repository_registry import get_artifact_repository

    config = stack.load()
    env = ftp_client.environment(config)
    env.update(settings)
    saved = {key: os.environ.get(key) for key in env}
    os.environ.update(env)
    try:
        return get_artifact_repository(artifacts_destination(config, config.tenant(tenant), stack.secrets()))
    finally:
        for key, value in saved.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value


def descendants(pid: int) -> list[int]:
    """The processes below ``pid`` (children, grandchildren, ...), from /proc."""
    children: dict[int, list[int]] = {}
    for stat_file in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat_file.read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue  # ended meanwhile
        children.setdefault(int(fields[1]), []).append(int(stat_file.parent.name))
    found, todo = [], [pid]
    while todo:
        for child in children.get(todo.pop(), []):
            found.append(child)
            todo.append(child)
    return found


def local_tree(folder: Path) -> dict[str, bytes]:
    files = {"MLmodel": b"flavors: {}\n", "model/weights.bin": os.urandom(300_000), "model/deep/notes.txt": b"hi\n",
             "requirements.txt": b"numpy\n"}
    for name, data in files.items():
        (folder / name).parent.mkdir(parents=True, exist_ok=True)
        (folder / name).write_bytes(data)
    return files


def read_tree(folder: Path) -> dict[str, bytes]:
    return {p.relative_to(folder).as_posix(): p.read_bytes() for p in folder.rglob("*") if p.is_file()}


@pytest.mark.parametrize("kind", ["local", "native"])
def test_log_list_download_delete_over_one_login(make_stack, kind, tmp_path):
    """Every call of a repository works over the connection its first call logged in with (kept in its pool)."""
    stack = make_stack(kind)
    stack.up()
    repo = repository(stack)
    assert type(repo).__name__ == "FTPRepository"
    source = tmp_path / "source"
    source.mkdir()
    files = local_tree(source)

    before = logins(stack)
    repo.log_artifacts(str(source), "exp/run1")
    assert logins(stack) - before == 1

    listing = {(f.path, f.is_dir, f.file_size) for f in repo.list_artifacts("exp/run1")}
    assert listing == {("exp/run1/MLmodel", False, len(files["MLmodel"])), ("exp/run1/model", True, None),
                       ("exp/run1/requirements.txt", False, len(files["requirements.txt"]))}
    assert repo.list_artifacts("exp/nothing-here") == []
    with pytest.raises(MlflowException, match="550"):  # refused, but the connection stays usable
        repo.download_artifacts("exp/run1/no-such-file", str(tmp_path))

    target = tmp_path / "download"
    target.mkdir()
    got = Path(repo.download_artifacts("exp/run1", str(target)))
    assert read_tree(got) == files  # four files in three folders

    single = tmp_path / "single"
    single.mkdir()
    assert Path(repo.download_artifacts("exp/run1/model/deep/notes.txt", str(single))).read_bytes() == b"hi\n"

    repo.log_artifact(str(source / "MLmodel"), "exp/run2")
    repo.delete_artifacts("exp/run1")
    assert [f.path for f in repo.list_artifacts("exp")] == ["exp/run2"]
    repo.delete_artifacts("exp/run1")  # gone already: nothing to do, no error
    repo.delete_artifacts("exp/run2/MLmodel")
    assert repo.list_artifacts("exp/run2") == []
    assert logins(stack) - before == 1  # all of the above: the one login of the first call

    # Calls at the same time share the pool's connections: never more than its size, each call its own.
    fresh, before = repository(stack), logins(stack)
    repo.log_artifacts(str(source), "exp/run3")
    results: list[dict[str, bytes]] = []

    def download(n: int) -> None:
        out = tmp_path / f"parallel-{n}"
        out.mkdir()
        results.append(read_tree(Path(fresh.download_artifacts("exp/run3", str(out)))))

    threads = [threading.Thread(target=download, args=(n,)) for n in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(120)
    assert results == [files] * 8
    assert 1 <= logins(stack) - before <= 4  # ftp_pool.POOL_SIZE


@pytest.mark.parametrize("kind", ["local", "native"])
def test_messages_never_hold_the_password(make_stack, kind, tmp_path, caplog):
    stack = make_stack(kind)
    stack.up()
    config, secrets = stack.load(), stack.secrets()
    password = secrets.ftp_password("acme")
    repo = repository(stack)
    caplog.set_level("DEBUG")
    messages = [repr(repo), repo.artifact_uri]

    with pytest.raises(MlflowException) as missing:
        repo.download_artifacts("no/such/file.txt", str(tmp_path))
    messages.append(str(missing.value))
    assert "flops_acme@" in str(missing.value) and "550" in str(missing.value)
    assert missing.value.get_http_status_code() == 404

    wrong = artifacts_destination(config, config.tenant("acme"), secrets).replace(password, password[::-1])
    from mlflow.store.artifact.artifact_repository_registry import get_artifact_repository

    with pytest.raises(MlflowException) as refused:
        get_artifact_repository(wrong).list_artifacts()
    messages.append(str(refused.value))
    assert "530" in str(refused.value)

    closed = wrong.replace(password[::-1], password).replace(f":{config.artifact_store.port}/", f":{free_port()}/")
    with pytest.raises(MlflowException) as unreachable:
        get_artifact_repository(closed).list_artifacts()
    assert "cannot connect" in str(unreachable.value)
    messages.append(str(unreachable.value))

    messages += [record.getMessage() for record in caplog.records]
    for text in messages:
        assert password not in text and password[::-1] not in text, text


def model_files(stack, logged) -> tuple[set[str], int]:
    """(files, number of folders) of the logged model on the FTP store, the model's root folder included."""
    config, secrets = stack.load(), stack.secrets()
    root = f"/artifacts/{logged.experiment_id}/models/{logged.model_id}/artifacts"
    files = ftp_listing(config.artifact_store.host, config.artifact_store.port, "flops_acme",
                        secrets.ftp_password("acme"), root)
    folders = {posixpath.dirname(f) for f in files} | {root}
    return {posixpath.relpath(f, root) for f in files}, len(folders)


@pytest.mark.parametrize("kind", ["local", "native"])
def test_the_tracking_server_reuses_its_ftp_login_across_requests(make_stack, kind, tmp_path):
    """A proxied model download is one HTTP request per listing and per file (MLflow's client fetches files in
    parallel); the server answers them over its pooled FTP connections: far fewer logins than requests, and none
    for a second download (MLflow's own FTP repository logs in twice per file)."""
    stack = make_stack(kind)
    stack.up()
    config = stack.load()
    uri = config.tracking_uri(config.tenant("acme"))
    logged = log_example(uri, experiment="downloads", login=stack.admin())
    files, folders = model_files(stack, logged)
    assert len(files) >= 5
    mlflow.set_tracking_uri(uri)
    access_log = config.state_dir / "logs" / "tracking-acme.log"

    def download(name: str) -> tuple[int, int]:
        """(artifact HTTP requests the server answered, FTP logins) of one model download."""
        seen = len(access_log.read_text(errors="replace").splitlines())
        before = logins(stack)
        (tmp_path / name).mkdir()
        with logged_in(stack.admin()):
            local = mlflow.artifacts.download_artifacts(logged.model_uri, dst_path=str(tmp_path / name))
        # (registered_model_meta is written by the client)
        assert {p.relative_to(local).as_posix() for p in Path(local).rglob("*") if p.is_file()} - files == {
            "registered_model_meta"}
        requests_ = [line for line in access_log.read_text(errors="replace").splitlines()[seen:]
                     if "/api/2.0/mlflow-artifacts/artifacts" in line]
        return len(requests_), logins(stack) - before

    requested, first = download("first")
    assert requested >= len(files) + folders
    assert 0 <= first <= 4 < requested  # at most ftp_pool.POOL_SIZE (0: logged in by log_example already)
    requested, again = download("again")
    assert requested >= len(files) + folders
    assert again == 0


def test_gc_removes_the_artifacts_of_deleted_runs(make_stack):
    stack = make_stack("native")
    stack.up()
    config, secrets = stack.load(), stack.secrets()
    acme = config.tenant("acme")
    uri = config.tracking_uri(acme)
    mlflow.set_tracking_uri(uri)
    with logged_in(stack.admin()):
        experiment = mlflow.set_experiment("collected").experiment_id
        runs = []
        for _ in range(2):
            with mlflow.start_run() as run:
                mlflow.log_text("some text", "notes/a.txt")
                mlflow.log_dict({"x": 1}, "b.json")
            runs.append(run)
        kept, dropped = runs
        mlflow.MlflowClient(uri).delete_run(dropped.info.run_id)

    def on_ftp(run) -> list[str]:
        folder = f"/artifacts/{experiment}/{run.info.run_id}"
        return ftp_listing(config.artifact_store.host, config.artifact_store.port, acme.ftp_user,
                           secrets.ftp_password("acme"), folder)

    assert len(on_ftp(dropped)) == 2
    env = {**os.environ, "MLFLOW_TRACKING_USERNAME": "admin", "MLFLOW_TRACKING_PASSWORD": secrets.admin_password("acme"),
           # gc opens the backend store given by --backend-store-uri or, without it, MLFLOW_TRACKING_URI (keeping
           # the database password out of argv); --tracking-uri then resolves mlflow-artifacts:/ for the deletes.
           "MLFLOW_TRACKING_URI": backend_store_uri(config, acme, secrets)}
    result = subprocess.run([sys.executable, "-m", "mlflow", "gc", "--tracking-uri", uri], env=env,
                            capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]
    assert dropped.info.run_id in result.stdout
    assert on_ftp(dropped) == []
    assert len(on_ftp(kept)) == 2
    assert secrets.ftp_password("acme") not in result.stdout + result.stderr


def test_ftps_store(make_stack, tmp_path):
    """artifact_store.tls: vsftpd speaks only TLS, with the deployment's certificate from `secrets init`."""
    stack = make_stack("native", artifact_store={"tls": True})
    config, secrets = stack.load(), stack.secrets()
    certificate, key = certificates.certificate_path(config), certificates.key_path(config)
    assert certificate.parent == config.secrets_file.parent
    assert stat.S_IMODE(key.stat().st_mode) == 0o600 and stat.S_IMODE(certificate.stat().st_mode) == 0o600
    stack.up()
    store, acme = config.artifact_store, config.tenant("acme")
    password = secrets.ftp_password("acme")

    # Plain FTP is refused a login.
    with ftplib.FTP() as ftp, pytest.raises(ftplib.error_perm, match="530"):
        ftp.connect(store.host, store.port, timeout=10)
        ftp.login(acme.ftp_user, password)

    # The tracking server stores and serves a model over FTPS.
    uri = config.tracking_uri(acme)
    logged = log_example(uri, experiment="tls", login=stack.admin())
    mlflow.set_tracking_uri(uri)
    with logged_in(stack.admin()):
        local = mlflow.artifacts.download_artifacts(logged.model_uri, dst_path=str(tmp_path))
    assert (Path(local) / "MLmodel").is_file()

    # Our repository checks the certificate: another one is refused, with a message free of the password.
    repo = repository(stack)
    assert [f.path for f in repo.list_artifacts()] == [logged.experiment_id]
    other = tmp_path / "other.crt"
    subprocess.run(["openssl", "req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1",
                    "-nodes", "-keyout", str(tmp_path / "other.key"), "-out", str(other), "-days", "2",
                    "-subj", "/CN=127.0.0.1", "-addext", "subjectAltName=IP:127.0.0.1"], check=True,
                   capture_output=True)
    stranger = repository(stack, FLOPS_FTP_CA_PEM=other.read_text())
    with pytest.raises(MlflowException, match="CERTIFICATE_VERIFY_FAILED") as refused:
        stranger.list_artifacts()
    assert password not in str(refused.value)


@pytest.mark.parametrize("kind", ["local", "native"])
def test_a_hung_store_fails_artifact_requests_in_time_and_nothing_else(make_stack, kind):
    """With the FTP server stopped (SIGSTOP), an artifact request fails within the connect timeout with a clear,
    password-free error, while /health and metadata calls of the same server keep answering."""
    timeout = 4
    stack = make_stack(kind, artifact_store={"connect_timeout": timeout, "data_timeout": timeout})
    stack.up()
    config, secrets = stack.load(), stack.secrets()
    uri = config.tracking_uri(config.tenant("acme"))
    logged = log_example(uri, experiment="hung", login=stack.admin())
    auth = stack.admin()
    artifact = (f"{uri}/api/2.0/mlflow-artifacts/artifacts/{logged.experiment_id}/models/{logged.model_id}"
                "/artifacts/MLmodel")
    assert requests.get(artifact, auth=auth, timeout=30).status_code == 200
    report = json.loads(stack.cli("status", "--json", check=True).stdout)
    (store,) = [s for s in report["services"] if s["name"] == "artifact-store"]

    answer: dict = {}

    def fetch() -> None:
        started = time.monotonic()
        response = requests.get(artifact, auth=auth, timeout=120)
        answer.update(status=response.status_code, body=response.text, seconds=time.monotonic() - started,
                      done=time.monotonic())

    # The whole server: vsftpd's session processes too (each in a session of its own; the tracking server's pooled
    # connection is one of them), as when the store's host hangs.
    hung_pids = [store["pid"], *descendants(store["pid"])]
    for pid in hung_pids:
        os.kill(pid, signal.SIGSTOP)
    try:
        hung = threading.Thread(target=fetch)
        hung.start()
        time.sleep(0.5)  # the request is in the server, waiting for the FTP server's greeting
        health = requests.get(f"{uri}/health", timeout=10)
        search = requests.post(f"{uri}/api/2.0/mlflow/experiments/search", json={"max_results": 10}, auth=auth,
                               timeout=10)
        answered = time.monotonic()
        hung.join(timeout + 60)
    finally:
        for pid in hung_pids:
            os.kill(pid, signal.SIGCONT)
    assert health.status_code == 200
    assert search.status_code == 200 and "hung" in [e["name"] for e in search.json()["experiments"]]
    assert answer, "the artifact request did not end"
    assert answered < answer["done"], answer  # they answered while the artifact request was still waiting
    assert answer["status"] == 503  # TEMPORARILY_UNAVAILABLE
    assert answer["seconds"] < timeout + 10
    assert f"no answer within {timeout} s (artifact_store.connect_timeout)" in answer["body"]
    assert secrets.ftp_password("acme") not in answer["body"]
    # The store is back: so are the artifacts.
    assert requests.get(artifact, auth=auth, timeout=30).status_code == 200
