"""Benchmark: a model download through the tracking server (proxied) against a raw ftplib download of the same files.

For each FTP store (embedded pyftpdlib, and vsftpd when run as root with vsftpd installed) it brings up a private
one-tenant stack (SQLite metadata, free ports, a temporary folder) with `flops-mlops up --detach`, logs the test
suite's scikit-learn model (7 files) through the tracking server, then times, after one warm-up each:
  proxied      mlflow.artifacts.download_artifacts(models:/m-...) through the tracking server (our FTP repository),
               the server holding logged-in FTP connections from the download before
  proxied cold the same right after `flops-mlops restart --tenant` (the server holds no FTP connection; the
               restart is not timed)
  one metadata request   one logged-in API call without FTP (experiments/get): the fixed cost of each HTTP request
  raw ftplib   one login, NLST/CWD walk of the same folder, RETR of each file
  ours direct  our FTPRepository.download_artifacts in this process (no HTTP), for reference
  mlflow's     MLflow's own FTPArtifactRepository.download_artifacts in this process (what the server used before)
and counts the FTP logins of each from the store's own log (pyftpdlib "logged in.", vsftpd "OK LOGIN").
Writes bench/results/ftp_download.json.

    .venv/bin/python bench/ftp_download.py [--repeats 10] [--stores embedded vsftpd]
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
from tracking_checks import ftp_listing, log_example, logged_in  # noqa: E402

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


def raw_download(host: str, port: int, user: str, password: str, folder: str, out: Path) -> int:
    """The same files with one ftplib login; returns how many files."""
    files = 0
    with ftplib.FTP() as ftp:
        ftp.connect(host, port, timeout=30)
        ftp.login(user, password)

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


def measure(kind: str, folder: Path, repeats: int) -> dict:
    import mlflow
    from flops_mlops.configuration import loading as config_module
    from flops_mlops.configuration.secrets import Secrets
    from flops_mlops.stores import ftp_client
    from flops_mlops.tracking.server import artifacts_destination
    from mlflow.store.artifact.ftp_artifact_repo import FTPArtifactRepository

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
        tenant = config.tenant("bench")
        login = ("admin", secrets.admin_password("bench"))
        uri = config.tracking_uri(tenant)
        logged = log_example(uri, experiment="bench", login=login)
        remote = f"/artifacts/{logged.experiment_id}/models/{logged.model_id}/artifacts"
        store, password = config.artifact_store, secrets.ftp_password("bench")
        files = len(ftp_listing(store.host, store.port, tenant.ftp_user, password, remote))
        destination = artifacts_destination(config, tenant, secrets)
        relative = remote.removeprefix("/artifacts/")
        os.environ.update(ftp_client.environment(config))

        def proxied(out: Path) -> None:
            mlflow.set_tracking_uri(uri)
            with logged_in(login):
                mlflow.artifacts.download_artifacts(logged.model_uri, dst_path=str(out))

        def restart_server() -> None:
            cli("restart", "--tenant", "bench")

        def one_metadata_request(out: Path) -> None:
            """One logged-in API call without FTP: what each of the proxied download's HTTP requests costs anyway."""
            requests.get(f"{uri}/api/2.0/mlflow/experiments/get", params={"experiment_id": logged.experiment_id},
                         auth=login, timeout=60).raise_for_status()

        access_log = config.state_dir / "logs" / "tracking-bench.log"

        def artifact_requests() -> int:
            text = access_log.read_text(errors="replace") if access_log.exists() else ""
            return text.count("/api/2.0/mlflow-artifacts/artifacts")

        ways = {
            "proxied": proxied,
            "proxied_cold": proxied,
            "one_metadata_request": one_metadata_request,
            "raw_ftplib": lambda out: raw_download(store.host, store.port, tenant.ftp_user, password, remote, out),
            "ours_direct": lambda out: ftp_client.repository(destination).download_artifacts(relative, str(out)),
            "mlflow_direct": lambda out: FTPArtifactRepository(destination).download_artifacts(relative, str(out)),
        }
        results = {}
        for name, way in ways.items():
            times, counts, http = [], [], []
            for attempt in range(repeats + 1):
                out = folder / f"out-{name}-{attempt}"
                out.mkdir()
                if name == "proxied_cold":
                    restart_server()
                before, requests_before = logins(config.state_dir, kind), artifact_requests()
                started = time.perf_counter()
                way(out)
                elapsed = time.perf_counter() - started
                counts.append(logins(config.state_dir, kind) - before)
                http.append(artifact_requests() - requests_before)
                if attempt:  # the first is a warm-up (imports, first connections)
                    times.append(elapsed)
                shutil.rmtree(out)
            results[name] = {"median_s": statistics.median(times), "min_s": min(times), "max_s": max(times),
                             "logins": statistics.median(counts[1:]),
                             "artifact_http_requests": statistics.median(http[1:]), "times_s": times}
        return {"files": files, "ways": results}
    finally:
        subprocess.run([*CLI, "--config", str(path), "down", "--purge"], cwd=ROOT, capture_output=True)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=10)
    parser.add_argument("--stores", nargs="+", choices=["embedded", "vsftpd"], default=None)
    parser.add_argument("--out", default=str(ROOT / "bench" / "results" / "ftp_download.json"))
    args = parser.parse_args()
    machine_at_start, date = machine(), started_at()
    stores = args.stores or (["embedded", "vsftpd"] if os.geteuid() == 0 and shutil.which("vsftpd", path=
                             "/usr/sbin:/usr/bin:/sbin:/bin") else ["embedded"])
    summary = {}
    for kind in stores:
        with tempfile.TemporaryDirectory(prefix="flops-bench-") as tmp:
            result = measure(kind, Path(tmp), args.repeats)
        ways = result["ways"]
        raw = ways["raw_ftplib"]["median_s"]
        for name, r in ways.items():
            r["ratio_to_raw"] = r["median_s"] / raw
            print(f"{kind:>8} {name:>20}: {r['median_s'] * 1000:7.1f} ms median ({r['ratio_to_raw']:5.1f}x raw), "
                  f"{r['logins']:g} FTP logins, {r['artifact_http_requests']:g} artifact HTTP requests "
                  f"for {result['files']} files", flush=True)
        summary[kind] = result
    report = {"benchmark": "ftp_download", "date": date, "machine": machine_at_start, "repeats": args.repeats,
              "results": summary}
    write_report(report, Path(args.out))
    return 0


if __name__ == "__main__":
    sys.exit(main())
