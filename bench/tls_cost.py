"""Benchmark: what TLS costs FL tracking and the champion's download, on the native stack in clear and encrypted.

Every hop encrypted means HTTPS to the tracking server, FTPS to vsftpd and TLS to MySQL.

For each TLS setting, "off" (tracking.tls, artifact_store.tls and backend_store.tls all false) then "on" (all three
true), it brings up a private one-tenant native stack (vsftpd, managed MariaDB/MySQL, free ports, a temporary
folder; as root, vsftpd needs it) with `flops-mlops up --detach`, then measures, and tears it down with
`down --purge`:
  FL tracking overhead, REPEATS times, taking turns (the default scikit-learn example, 2 learners, ROUNDS rounds):
    round CLI   `flops-mlops round --tenant bench --project Tls --json`: wall time of the whole command, and the
                per-round times its JSON gives (the aggregator's wall time of each round)
    tracked     the same project run in this process (fl.runner.run_project, as `round` runs it) with tracking on:
                a run per round, the best model logged and registered, over the stack's hops
    untracked   the same with tracking off (`round` has no such flag; only the best model kept on disk)
  and the overhead ratio tracked / untracked (medians of wall time), the same code path with and without tracking;
  proxied download of the last champion of `round` (models:/Tls/<version>), DOWNLOADS times each after one warm-up:
    mlflow client   mlflow.artifacts.download_artifacts(models:/Tls/<version>) through the tracking server (our FTP
                    repository there), as the tenant's admin, trusting our CA (MLFLOW_TRACKING_SERVER_CERT_PATH)
    archive         the model server's one-request fetch: serving.fetch.Registry(..., verify=CA).fetch as a user with
                    READ on the model only (tracking.users.ensure_serving_user)
    raw FTP         the same files straight from the store with one ftplib login (FTP_TLS with PROT P when on;
                    bench/ftp_download.py's raw_download), for reference
Medians, with every time kept. Writes bench/results/tls_cost.json; bench/report.py renders it, per measure: TLS off,
TLS on and the on/off ratio.

    .venv/bin/python bench/tls_cost.py [--repeats 3] [--rounds 3] [--downloads 10] [--out FILE]
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import yaml

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests"))
from common import (CLI, FL_QUIET, RESULTS, ROOT, free_port, machine, service_account, started_at,  # noqa: E402
                    write_report)
from fl_tracking_overhead import children_cpu_seconds  # noqa: E402
from ftp_download import free_port_range, raw_download  # noqa: E402
from tracking_checks import logged_in  # noqa: E402

PROJECT, LEARNERS, TENANT = "Tls", 2, "bench"
FL_WAYS = ("round_cli", "tracked", "untracked")
DOWNLOAD_WAYS = ("mlflow_client", "archive", "raw_ftp")


def stack_file(folder: Path, tls: bool) -> Path:
    """A native one-tenant stack (vsftpd, managed MySQL) with the three TLS keys set to ``tls``, secrets made."""
    data = {"name": "bench-tls", "state_dir": str(folder / "state"), "secrets_file": str(folder / "secrets.env"),
            "artifact_store": {"kind": "vsftpd", "host": "127.0.0.1", "port": free_port(),
                               "passive_ports": list(free_port_range(8)), "pasv_address": "127.0.0.1", "tls": tls},
            "backend_store": {"kind": "mysql", "managed": True, "host": "127.0.0.1", "port": free_port(), "tls": tls},
            "tracking": {"host": "127.0.0.1", "public_host": "127.0.0.1", "workers": 1, "startup_timeout": 600,
                         "tls": tls, **service_account(folder)},
            "tenants": [{"id": TENANT, "port": free_port()}]}
    path = folder / "stack.yaml"
    path.write_text(yaml.safe_dump(data), encoding="utf-8")
    return path


def summary_of(times: list[float]) -> dict:
    return {"median_s": statistics.median(times), "min_s": min(times), "max_s": max(times), "times_s": times}


def fl_runs(config, cli, folder: Path, repeats: int, rounds: int) -> dict:
    """`round` through the CLI, and run_project tracked and untracked in this process, taking turns."""
    from flops_mlops.fl.command import project_login
    from flops_mlops.fl.runner import run_project
    from flops_mlops.fl.settings import FLSettings

    tenant = config.tenant(TENANT)
    runs: dict[str, list[dict]] = {way: [] for way in FL_WAYS}
    last_version = None
    for repeat in range(repeats):
        started = time.monotonic()
        done = cli("round", "--tenant", TENANT, "--project", PROJECT, "--rounds", str(rounds),
                   "--learners", str(LEARNERS), "--json", timeout=900)
        wall = time.monotonic() - started
        summary = json.loads(done.stdout)
        last_version = str(summary["model_version"])
        runs["round_cli"].append({"wall_s": wall, "round_times_s": round_times(summary.get("rounds")),
                                  "model_version": last_version})
        for way in ("tracked", "untracked"):
            project = f"{PROJECT}{way.capitalize()}{repeat}"
            settings = FLSettings(project=project, tracking_uri=config.tracking_uri(tenant) if way == "tracked"
                                  else "off", rounds=rounds, learners=LEARNERS, seed=42, timeout=900,
                                  model_dir=folder / project / "model").check("aggregator")
            login = project_login(config, tenant, project) if way == "tracked" else {}
            cpu_before, started = children_cpu_seconds(), time.monotonic()
            summary = run_project(settings, folder / project, env=login)
            runs[way].append({"wall_s": time.monotonic() - started, "cpu_s": children_cpu_seconds() - cpu_before,
                              "round_times_s": round_times(summary.get("rounds"))})
        print(f"  repeat {repeat + 1}/{repeats}: " + ", ".join(f"{way} {runs[way][-1]['wall_s']:.2f} s"
                                                              for way in FL_WAYS), flush=True)
    results = {way: {**summary_of([r["wall_s"] for r in runs[way]]),
                     "median_round_s": median_round(runs[way]), "runs": runs[way]} for way in FL_WAYS}
    results["overhead_ratio"] = results["tracked"]["median_s"] / results["untracked"]["median_s"]
    results["champion_version"] = last_version
    return results


def round_times(rounds) -> list[float]:
    """The aggregator's wall time of each round, from a summary's "rounds" (a list of round events)."""
    return [r["wall_time"] for r in rounds or [] if isinstance(r, dict) and "wall_time" in r]


def median_round(runs: list[dict]) -> float | None:
    times = [t for r in runs for t in r["round_times_s"]]
    return statistics.median(times) if times else None


def downloads(config, secrets, version: str, folder: Path, count: int) -> dict:
    """The champion's files fetched each way, ``count`` times after a warm-up."""
    import mlflow
    from flops_mlops.configuration.certificates import ca_pem
    from flops_mlops.serving.fetch import Registry
    from flops_mlops.tracking.server import client_env, client_verify
    from flops_mlops.tracking.users import AuthAdmin, ensure_serving_user

    tenant, store = config.tenant(TENANT), config.artifact_store
    uri, verify = config.tracking_uri(tenant), client_verify(config)
    login = ("admin", secrets.admin_password(TENANT))
    os.environ.pop("MLFLOW_TRACKING_SERVER_CERT_PATH", None)  # left by the stack before
    os.environ.update(client_env(config))
    mlflow.set_tracking_uri(uri)
    with logged_in(login):
        source = mlflow.MlflowClient().get_model_version_download_uri(PROJECT, version)
    # mlflow-artifacts:/<experiment>/models/<model id>/artifacts -> the FTP user's /artifacts/... folder
    remote = "/artifacts/" + source.split(":", 1)[1].lstrip("/")
    reader = os.urandom(16).hex()  # a user with READ on the model only, as the model servers fetch
    registry = Registry(uri, ensure_serving_user(AuthAdmin(uri, login[1], verify=verify), PROJECT, reader), reader,
                        verify=verify)
    ftp_ca = ca_pem(config) if store.tls else None

    def mlflow_client(out: Path) -> None:
        with logged_in(login):
            mlflow.artifacts.download_artifacts(f"models:/{PROJECT}/{version}", dst_path=str(out))

    ways = {"mlflow_client": mlflow_client,
            "archive": lambda out: registry.fetch(PROJECT, version, out / "model"),
            "raw_ftp": lambda out: raw_download(store.host, store.port, tenant.ftp_user,
                                                secrets.ftp_password(TENANT), remote, out, ca_pem=ftp_ca)}
    results: dict = {"model_uri": f"models:/{PROJECT}/{version}"}
    for name, way in ways.items():
        times = []
        for attempt in range(count + 1):
            out = folder / f"download-{name}-{attempt}"
            out.mkdir()
            started = time.perf_counter()
            way(out)
            elapsed = time.perf_counter() - started
            if attempt:  # the first is a warm-up (imports, first connections)
                times.append(elapsed)
            elif name == "raw_ftp":  # the model's size: what a raw download brings
                paths = [p for p in out.rglob("*") if p.is_file()]
                results.update(files=len(paths), bytes=sum(p.stat().st_size for p in paths))
            shutil.rmtree(out)
        results[name] = summary_of(times)
    return results


def measure(tls: bool, folder: Path, args) -> dict:
    from flops_mlops.configuration.loading import load
    from flops_mlops.configuration.secrets import Secrets

    path = stack_file(folder, tls)

    def cli(*command: str, timeout: float = 1200) -> subprocess.CompletedProcess:
        done = subprocess.run([*CLI, "--config", str(path), *command], cwd=ROOT, capture_output=True, text=True,
                              timeout=timeout)
        if done.returncode:
            raise RuntimeError(f"flops-mlops {' '.join(command)} failed ({done.returncode}):\n{done.stderr[-3000:]}")
        return done

    cli("secrets", "init")
    try:
        started = time.monotonic()
        cli("up", "--detach")
        up_s = time.monotonic() - started
        config = load(path)
        uri = config.tracking_uri(config.tenant(TENANT))
        print(f"TLS {'on' if tls else 'off'}: stack up in {up_s:.1f} s, tracking at {uri}", flush=True)
        fl = fl_runs(config, cli, folder, args.repeats, args.rounds)
        download = downloads(config, Secrets.load(config), fl["champion_version"], folder, args.downloads)
        return {"tls": {"tracking": config.tracking.tls, "artifact_store": config.artifact_store.tls,
                        "backend_store": config.backend_store.tls},
                "tracking_uri_scheme": uri.split(":", 1)[0], "up_s": up_s, "fl": fl, "download": download}
    finally:
        subprocess.run([*CLI, "--config", str(path), "down", "--purge"], cwd=ROOT, capture_output=True)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter,
                                     epilog=__doc__.split("\n", 2)[2])
    parser.add_argument("--repeats", type=int, default=3, help="FL runs of each way per TLS setting (default 3)")
    parser.add_argument("--rounds", type=int, default=3, help="rounds of each FL run (default 3)")
    parser.add_argument("--downloads", type=int, default=10,
                        help="downloads of each way per TLS setting, after one warm-up (default 10)")
    parser.add_argument("--out", default=str(RESULTS / "tls_cost.json"))
    args = parser.parse_args()
    if os.geteuid() != 0 or not shutil.which("vsftpd", path="/usr/sbin:/usr/bin:/sbin:/bin"):
        raise SystemExit("the native stack needs root and vsftpd (and MariaDB or MySQL): run as root")
    os.environ.update(FL_QUIET)
    machine_at_start, date = machine(), started_at()
    settings = {}
    for name, tls in (("off", False), ("on", True)):
        with tempfile.TemporaryDirectory(prefix="flops-bench-tls-") as tmp:
            settings[name] = measure(tls, Path(tmp), args)
    ratios = {"fl": {way: settings["on"]["fl"][way]["median_s"] / settings["off"]["fl"][way]["median_s"]
                     for way in FL_WAYS},
              "download": {way: settings["on"]["download"][way]["median_s"] /
                           settings["off"]["download"][way]["median_s"] for way in DOWNLOAD_WAYS}}
    ratios["fl"]["overhead_ratio"] = settings["on"]["fl"]["overhead_ratio"] / settings["off"]["fl"]["overhead_ratio"]
    for way in FL_WAYS:
        print(f"{way:>14}: {settings['off']['fl'][way]['median_s']:7.2f} s off, "
              f"{settings['on']['fl'][way]['median_s']:7.2f} s on -> {ratios['fl'][way]:.3f}x")
    print(f"{'tracked/untr.':>14}: {settings['off']['fl']['overhead_ratio']:7.3f} off, "
          f"{settings['on']['fl']['overhead_ratio']:7.3f} on")
    for way in DOWNLOAD_WAYS:
        print(f"{way:>14}: {settings['off']['download'][way]['median_s'] * 1000:7.1f} ms off, "
              f"{settings['on']['download'][way]['median_s'] * 1000:7.1f} ms on -> {ratios['download'][way]:.3f}x")
    report = {"benchmark": "tls_cost", "date": date, "machine": machine_at_start, "repeats": args.repeats,
              "rounds": args.rounds, "learners": LEARNERS, "downloads": args.downloads,
              "ml_repo": "the default scikit-learn example", "settings": settings, "ratios_on_off": ratios}
    write_report(report, Path(args.out))
    return 0


if __name__ == "__main__":
    sys.exit(main())
