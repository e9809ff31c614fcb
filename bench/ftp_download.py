"""Benchmark: a model download through the tracking server (proxied) against a raw ftplib download of the same files.

For each FTP store (embedded pyftpdlib, and vsftpd when run as root with vsftpd installed) it brings up a private
one-tenant stack (SQLite metadata, free ports, a temporary folder) with `flops-mlops up --detach` and logs, through
the tracking server, each model of --models:
  sklearn      the test suite's small scikit-learn model (7 files), as before
  pytorch      the PyTorch example's champion: `flops-mlops round --ml-repo examples/pytorch` (one round, two
               learners, in the environment `round` builds or reuses), logged by the FL aggregator with
               mlflow.pytorch and registered as models:/torch@champion
Then, for each model, it times, after one warm-up each:
  proxied      mlflow.artifacts.download_artifacts(models:/m-...) through the tracking server (our FTP repository),
               the server holding logged-in FTP connections from the download before
  proxied cold the same right after `flops-mlops restart --tenant` (the server holds no FTP connection; the
               restart is not timed)
  archive      the model server's fetch (serving/fetch.Registry.fetch, as a user with READ on the model only): one
               request to the tracking server's archive route (tracking/model_archive.py), one tar of every file
  one metadata request   one logged-in API call without FTP (experiments/get): the fixed cost of each HTTP request
  raw ftplib   one login, NLST/CWD walk of the same folder, RETR of each file
  ours direct  our FTPRepository.download_artifacts in this process (no HTTP), for reference
  mlflow's     MLflow's own FTPArtifactRepository.download_artifacts in this process (what the server used before)
and counts the FTP logins of each from the store's own log (pyftpdlib "logged in.", vsftpd "OK LOGIN").
Each model's size (bytes, files) is that of the raw download. All models are downloaded by their logged model's URI
(models:/m-<id>), so their request counts compare; the archive way fetches the same model as a registered version (the
scikit-learn model is registered for it as benchsklearn). Last, per model, a profile of the proxied download: the
tenant server's app (runner.create_app, same environment and stores) built in a child process with its parts timed
(our ASGI guards, MLflow's login check, password checks, user lookups, our Flask hooks, MLflow's artifact views, FTP,
SQL statements), served by uvicorn in a thread and downloaded from by MLflow's client in that process.
Writes bench/results/ftp_download.json.

    .venv/bin/python bench/ftp_download.py [--repeats 10] [--stores embedded vsftpd] [--models sklearn pytorch]
"""

from __future__ import annotations

import argparse
import ftplib
import json
import os
import posixpath
import random
import shutil
import socket
import ssl
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import requests
import yaml

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests"))
from common import CLI, ROOT, free_port, machine, service_account, started_at, write_report  # noqa: E402
from tracking_checks import Logged, log_example, logged_in  # noqa: E402

os.environ.setdefault("MLFLOW_DISABLE_TELEMETRY", "true")


def free_port_range(size: int) -> tuple[int, int]:
    """A run of ``size`` consecutive free ports (the FTP passive range: parallel downloads need several)."""
    for _ in range(200):
        start = random.randrange(20000, 60000 - size)
        try:
            for port in range(start, start + size):
                with socket.socket() as sock:
                    sock.bind(("127.0.0.1", port))
        except OSError:
            continue
        return start, start + size - 1
    raise RuntimeError("no free port range")


def logins(state_dir: Path, kind: str) -> int:
    logs = state_dir / "logs"
    path, marker = ((logs / "vsftpd-transfers.log", "OK LOGIN") if kind == "vsftpd"
                    else (logs / "artifact-store.log", "logged in."))
    return path.read_text(errors="replace").count(marker) if path.exists() else 0


def raw_download(host: str, port: int, user: str, password: str, folder: str, out: Path,
                 ca_pem: str | None = None) -> int:
    """The same files with one ftplib login; returns how many files. With ``ca_pem`` over explicit FTPS (AUTH TLS,
    then PROT P: data connections encrypted too), verifying the store against that CA, as our FTP repository does."""
    files = 0
    context = ssl.create_default_context(cadata=ca_pem) if ca_pem else None
    with (ftplib.FTP_TLS(context=context) if context else ftplib.FTP()) as ftp:
        ftp.connect(host, port, timeout=30)
        ftp.login(user, password)  # FTP_TLS: AUTH TLS first
        if context:
            ftp.prot_p()

        def walk(remote: str, local: Path) -> None:
            nonlocal files
            local.mkdir(parents=True, exist_ok=True)
            for entry in ftp.nlst(remote):
                full = posixpath.join(remote, posixpath.basename(entry))
                try:
                    ftp.cwd(full)
                except ftplib.error_perm:
                    with open(local / posixpath.basename(entry), "wb") as handle:
                        ftp.retrbinary(f"RETR {full}", handle.write)
                    files += 1
                    continue
                walk(full, local / posixpath.basename(entry))

        walk(folder, out)
    return files


def log_pytorch_champion(cli, uri: str, login: tuple[str, str]):
    """The PyTorch example's champion, trained and logged by a real FL round (the aggregator logs it with
    mlflow.pytorch and registers it), as a Logged like log_example's, and its registered (name, version)."""
    import mlflow

    cli("round", "--tenant", "bench", "--project", "torch", "--rounds", "1", "--learners", "2",
        "--ml-repo", str(ROOT / "examples" / "pytorch"), "--flavor", "pytorch")
    mlflow.set_tracking_uri(uri)
    with logged_in(login):
        client = mlflow.MlflowClient()
        version = client.get_model_version_by_alias("torch", "champion")
        # mlflow-artifacts:/<experiment>/models/<model id>/artifacts
        experiment, _, model_id = client.get_model_version_download_uri("torch", version.version).split(
            ":", 1)[1].strip("/").split("/")[:3]
    return Logged(experiment, version.run_id, model_id, f"models:/{model_id}"), ("torch", version.version)


def register(uri: str, login: tuple[str, str], logged, name: str) -> tuple[str, str]:
    """``logged``'s model registered as a version of ``name``: (name, version)."""
    import mlflow

    mlflow.set_tracking_uri(uri)
    with logged_in(login):
        return name, str(mlflow.register_model(logged.model_uri, name).version)


def measure(kind: str, folder: Path, repeats: int, models: list[str]) -> dict:
    from flops_mlops.configuration import loading as config_module
    from flops_mlops.configuration.secrets import Secrets

    data = {"name": "bench", "state_dir": str(folder / "state"), "secrets_file": str(folder / "secrets.env"),
            "artifact_store": {"kind": kind, "port": free_port(), "passive_ports": list(free_port_range(40))},
            "tracking": {"startup_timeout": 600, **service_account(folder)},
            "tenants": [{"id": "bench", "port": free_port()}]}
    path = folder / "stack.yaml"
    path.write_text(yaml.safe_dump(data), encoding="utf-8")

    def cli(*args: str) -> None:
        subprocess.run([*CLI, "--config", str(path), *args], cwd=ROOT, capture_output=True, text=True, check=True)

    cli("secrets", "init")
    try:
        cli("up", "--detach")
        config = config_module.load(path)
        secrets = Secrets.load(config)
        login = ("admin", secrets.admin_password("bench"))
        uri = config.tracking_uri(config.tenant("bench"))
        results = {}
        for model in models:
            if model == "sklearn":
                logged = log_example(uri, experiment="bench", login=login)
                registered = register(uri, login, logged, "benchsklearn")
            else:
                logged, registered = log_pytorch_champion(cli, uri, login)
            results[model] = time_ways(config, secrets, cli, logged, registered, folder, repeats)
            print(f"{kind:>8} {model}: {results[model]['files']} files, {results[model]['bytes']:,} bytes", flush=True)
        for result in results.values():  # last: the profile's server runs as root, beside the tenant's own
            result["profile"] = profile(config, secrets, result["model_uri"], repeats)
        return results
    finally:
        subprocess.run([*CLI, "--config", str(path), "down", "--purge"], cwd=ROOT, capture_output=True)


def time_ways(config, secrets, cli, logged, registered: tuple[str, str], folder: Path, repeats: int) -> dict:
    """Each way of downloading the logged model ``logged`` (registered as ``registered``: name, version),
    ``repeats`` times after a warm-up."""
    import mlflow
    from flops_mlops.serving.fetch import Registry
    from flops_mlops.stores import ftp_client
    from flops_mlops.tracking.server import artifacts_destination
    from flops_mlops.tracking.users import AuthAdmin, ensure_serving_user
    from mlflow.store.artifact.ftp_artifact_repo import FTPArtifactRepository

    kind, tenant = config.artifact_store.kind, config.tenant("bench")
    login = ("admin", secrets.admin_password("bench"))
    uri = config.tracking_uri(tenant)
    remote = f"/artifacts/{logged.experiment_id}/models/{logged.model_id}/artifacts"
    store, password = config.artifact_store, secrets.ftp_password("bench")
    destination = artifacts_destination(config, tenant, secrets)
    relative = remote.removeprefix("/artifacts/")
    os.environ.update(ftp_client.environment(config))

    def proxied(out: Path) -> None:
        mlflow.set_tracking_uri(uri)
        with logged_in(login):
            mlflow.artifacts.download_artifacts(logged.model_uri, dst_path=str(out))

    def one_metadata_request(out: Path) -> None:
        """One logged-in API call without FTP: what each of the proxied download's HTTP requests costs anyway."""
        requests.get(f"{uri}/api/2.0/mlflow/experiments/get", params={"experiment_id": logged.experiment_id},
                     auth=login, timeout=60).raise_for_status()

    reader = os.urandom(16).hex()  # a user with READ on the model only, as the model servers fetch
    registry = Registry(uri, ensure_serving_user(AuthAdmin(uri, login[1]), registered[0], reader), reader)

    def archive(out: Path) -> None:
        registry.fetch(*registered, out / "model")

    access_log = config.state_dir / "logs" / "tracking-bench.log"

    def artifact_requests() -> int:
        text = access_log.read_text(errors="replace") if access_log.exists() else ""
        return text.count("/api/2.0/mlflow-artifacts/artifacts") + text.count("/flops/model-versions/archive")

    ways = {
        "proxied": proxied,
        "proxied_cold": proxied,
        "archive": archive,
        "one_metadata_request": one_metadata_request,
        "raw_ftplib": lambda out: raw_download(store.host, store.port, tenant.ftp_user, password, remote, out),
        "ours_direct": lambda out: ftp_client.repository(destination).download_artifacts(relative, str(out)),
        "mlflow_direct": lambda out: FTPArtifactRepository(destination).download_artifacts(relative, str(out)),
    }
    results, files, size = {}, 0, 0
    for name, way in ways.items():
        times, counts, http = [], [], []
        for attempt in range(repeats + 1):
            out = folder / f"out-{name}-{attempt}"
            out.mkdir()
            if name == "proxied_cold":
                cli("restart", "--tenant", "bench")  # not timed: the server then holds no FTP connection
            before, requests_before = logins(config.state_dir, kind), artifact_requests()
            started = time.perf_counter()
            way(out)
            elapsed = time.perf_counter() - started
            counts.append(logins(config.state_dir, kind) - before)
            http.append(artifact_requests() - requests_before)
            if attempt:  # the first is a warm-up (imports, first connections)
                times.append(elapsed)
            if name == "raw_ftplib" and not attempt:  # the model's size: what a raw download brings
                paths = [p for p in out.rglob("*") if p.is_file()]
                files, size = len(paths), sum(p.stat().st_size for p in paths)
            shutil.rmtree(out)
        results[name] = {"median_s": statistics.median(times), "min_s": min(times), "max_s": max(times),
                         "logins": statistics.median(counts[1:]),
                         "artifact_http_requests": statistics.median(http[1:]), "times_s": times}
    raw = results["raw_ftplib"]["median_s"]
    for r in results.values():
        r["ratio_to_raw"] = r["median_s"] / raw
    return {"model_uri": logged.model_uri, "files": files, "bytes": size, "ways": results}


# --- where a proxied download spends its time: the server's app, instrumented, in a child process -----------

# What the profile times in the server, per proxied download (sums over its requests); report.py's PROFILE_PARTS
# says what each is.
PARTS = ("app", "mlflow_app", "login_check", "password_check", "user_lookup", "our_hooks", "handler", "ftp", "sql")


def profile_child(model_uri: str, downloads: int) -> dict:
    """In a child process whose environment is the tenant server's: build its app (runner.create_app), time its
    parts, serve it with uvicorn on a free port in a thread, and download ``model_uri`` through it."""
    import threading

    import mlflow
    import uvicorn
    from flops_mlops.stores.ftp_repository import FTPRepository
    from flops_mlops.tracking import runner
    from flops_mlops.tracking.limits import uvicorn_settings
    from sqlalchemy import event
    from sqlalchemy.engine import Engine

    app = runner.create_app()
    from mlflow.server import app as flask_app
    from mlflow.server import auth

    lock, totals = threading.Lock(), {}

    def add(part: str, seconds: float) -> None:
        with lock:
            count, spent = totals.get(part, (0, 0.0))
            totals[part] = (count + 1, spent + seconds)

    def timed(part: str, function):
        def wrapper(*args, **kwargs):
            started = time.perf_counter()
            try:
                return function(*args, **kwargs)
            finally:
                add(part, time.perf_counter() - started)
        return wrapper

    for hooks in (flask_app.before_request_funcs, flask_app.after_request_funcs):
        for key, functions in hooks.items():
            hooks[key] = [timed("login_check" if f is auth._before_request else
                                "our_hooks" if f.__module__.startswith("flops_mlops") else "mlflow_hooks", f)
                          for f in functions]
    for name, view in list(flask_app.view_functions.items()):
        if "artifact" in name:
            flask_app.view_functions[name] = timed("handler", view)
    auth.store.authenticate_user = timed("password_check", auth.store.authenticate_user)
    auth.store.get_user = timed("user_lookup", auth.store.get_user)
    for method in ("list_artifacts", "download_artifacts"):
        setattr(FTPRepository, method, timed("ftp", getattr(FTPRepository, method)))
    starts = threading.local()
    event.listen(Engine, "before_cursor_execute", lambda *a, **k: setattr(starts, "sql", time.perf_counter()))
    event.listen(Engine, "after_cursor_execute", lambda *a, **k: add("sql", time.perf_counter() - starts.sql))

    def timed_asgi(part: str, inner):
        async def call(scope, receive, send):
            started = time.perf_counter()
            try:
                await inner(scope, receive, send)
            finally:
                if scope["type"] == "http":
                    add(part, time.perf_counter() - started)
        return call

    guard = app  # our ASGI guards wrap MLflow's app, each holding the next as .app
    while type(guard.app).__module__.startswith("flops_mlops"):
        guard = guard.app
    guard.app = timed_asgi("mlflow_app", guard.app)
    whole = timed_asgi("app", app)

    port = free_port()
    server = uvicorn.Server(uvicorn.Config(whole, host="127.0.0.1", port=port, log_level="warning",
                                           **uvicorn_settings()))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    uri = f"http://127.0.0.1:{port}"
    for _ in range(600):
        try:
            if requests.get(f"{uri}/health", timeout=5).ok:
                break
        except requests.ConnectionError:
            time.sleep(0.1)
    mlflow.set_tracking_uri(uri)
    runs = []
    try:
        for attempt in range(downloads + 1):
            with tempfile.TemporaryDirectory(prefix="flops-bench-profile-") as out:
                totals.clear()
                started = time.perf_counter()
                mlflow.artifacts.download_artifacts(model_uri, dst_path=out)
                elapsed = time.perf_counter() - started
            if attempt:  # the first is a warm-up
                runs.append({"client_s": elapsed, **{part: {"calls": c, "s": t} for part, (c, t) in totals.items()}})
    finally:
        server.should_exit = True
        thread.join(timeout=30)
    return {"downloads": downloads, "runs": runs,
            "median": {"client_s": statistics.median(r["client_s"] for r in runs),
                       **{part: {"calls": statistics.median(r.get(part, {}).get("calls", 0) for r in runs),
                                 "s": statistics.median(r.get(part, {}).get("s", 0.0) for r in runs)}
                          for part in (*PARTS, "mlflow_hooks")}}}


def profile(config, secrets, model_uri: str, downloads: int) -> dict:
    """profile_child in a child process with the tenant server's environment (secrets there, not in argv)."""
    from flops_mlops.tracking.runner import mlflow_environment
    from flops_mlops.tracking.server import auth_db_path, server_env

    tenant = config.tenant("bench")
    env = server_env(config, tenant, secrets, auth_db_path(config, tenant))
    env.update(mlflow_environment(env, []))
    env.update({"MLFLOW_TRACKING_USERNAME": "admin", "MLFLOW_TRACKING_PASSWORD": secrets.admin_password("bench"),
                "PYTHONPATH": str(ROOT / "deploy")})
    done = subprocess.run([sys.executable, __file__, "--profile-child", model_uri, "--repeats", str(downloads)],
                          env=env, cwd=ROOT, capture_output=True, text=True, timeout=1800)
    if done.returncode:
        raise RuntimeError(f"profile child failed: {done.stderr[-2000:]}")
    return json.loads(done.stdout.strip().splitlines()[-1])


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=10)
    parser.add_argument("--stores", nargs="+", choices=["embedded", "vsftpd"], default=None)
    parser.add_argument("--models", nargs="+", choices=["sklearn", "pytorch"], default=["sklearn", "pytorch"])
    parser.add_argument("--out", default=str(ROOT / "bench" / "results" / "ftp_download.json"))
    parser.add_argument("--profile-child", metavar="MODEL_URI", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.profile_child:
        print(json.dumps(profile_child(args.profile_child, args.repeats)))
        return 0
    machine_at_start, date = machine(), started_at()
    stores = args.stores or (["embedded", "vsftpd"] if os.geteuid() == 0 and shutil.which("vsftpd", path=
                             "/usr/sbin:/usr/bin:/sbin:/bin") else ["embedded"])
    summary = {}
    for kind in stores:
        with tempfile.TemporaryDirectory(prefix="flops-bench-") as tmp:
            summary[kind] = measure(kind, Path(tmp), args.repeats, args.models)
        for model, result in summary[kind].items():
            for name, r in result["ways"].items():
                print(f"{kind:>8} {model:>7} {name:>20}: {r['median_s'] * 1000:7.1f} ms median "
                      f"({r['ratio_to_raw']:5.2f}x raw), {r['logins']:g} FTP logins, "
                      f"{r['artifact_http_requests']:g} artifact HTTP requests for {result['files']} files", flush=True)
    report = {"benchmark": "ftp_download", "date": date, "machine": machine_at_start, "repeats": args.repeats,
              "models": args.models, "results": summary}
    write_report(report, Path(args.out))
    return 0


if __name__ == "__main__":
    sys.exit(main())
