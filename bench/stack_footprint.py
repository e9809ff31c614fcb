"""Benchmark: what one tenant's tracking server costs to start and to keep running, in three shapes.

Shapes (the same stores, login app and environment; only the process that serves differs):
  defaults     `mlflow server` with MLflow's defaults: 4 uvicorn workers, job runner on
  two-process  `mlflow server --workers 1`, job runner off: the CLI process supervising one uvicorn child
               (what flops-mlops ran until the single-process runner)
  runner       python -m flops_mlops.tracking.runner: one process (what flops-mlops runs now)

For each shape and repeat it brings up a private one-tenant embedded stack (SQLite + embedded FTP, free ports, a
temporary folder) with `flops-mlops up --detach` (which upgrades the schema), replaces the tenant's tracking
server by the shape's process (same environment, same account), and records:
  - the time from starting that process to /health answering 200 (the schema is already up to date);
  - the memory of its whole process tree (resident, and the summed peak VmHWM), idle 5 s after /health;
  - the same after a 3-round FL project with 2 learners logged through it (runs, metrics, the best model).
Writes bench/results/stack_footprint.json; the tracking-server and fl-actor image sizes are added when a Docker
engine answers.

    .venv/bin/python bench/stack_footprint.py [--repeats 2] [--shapes defaults two-process runner]
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import psutil
import requests
import yaml

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import CLI, ROOT, free_port, machine, service_account, started_at, write_report  # noqa: E402

SHAPES = {"defaults": {"workers": 4, "job_execution": True},
          "two-process": {"workers": 1, "job_execution": False},
          "runner": {"workers": 1, "job_execution": False}}
TENANT = "bench"


def tree_memory(pid: int) -> dict:
    """Resident and peak (VmHWM) memory of a process and all its descendants, in MiB, and which processes."""
    root = psutil.Process(pid)
    procs = [root, *root.children(recursive=True)]
    rss = peak = 0
    names = []
    for proc in procs:
        try:
            rss += proc.memory_info().rss
            names.append(" ".join(proc.cmdline()[1:4]))
            for line in Path(f"/proc/{proc.pid}/status").read_text().splitlines():
                if line.startswith("VmHWM:"):
                    peak += int(line.split()[1]) * 1024
        except (psutil.Error, FileNotFoundError):
            continue
    return {"processes": len(procs), "rss_mib": rss / 2**20, "peak_mib": peak / 2**20, "commands": names}


def shape_argv(shape: str, config, tenant) -> list[str]:
    from flops_mlops.tracking.server import mlflow_server_argv, server_argv

    return server_argv(config, tenant) if shape == "runner" else mlflow_server_argv(config, tenant)


def start_shape(shape: str, config_path: Path) -> tuple[int, float]:
    """Replace the tenant's tracking server by ``shape``; return its pid and the seconds until /health is 200."""
    from flops_mlops.configuration.loading import load
    from flops_mlops.configuration.secrets import Secrets
    from flops_mlops.processes import ManagedProcess
    from flops_mlops.configuration.accounts import tenant_account
    from flops_mlops.tracking.server import TrackingServer, auth_db_path, server_env

    config = load(config_path)
    tenant = config.tenant(TENANT)
    server = TrackingServer(config, tenant)
    server.stop()
    workdir = config.state_dir / "tracking" / tenant.id
    env = {**server_env(config, tenant, Secrets.load(config), auth_db_path(config, tenant)), "HOME": str(workdir)}
    argv = shape_argv(shape, config, tenant)
    started = time.monotonic()
    pid = ManagedProcess(server.process.name, config.state_dir).start(argv, env=env, cwd=workdir,
                                                                      account=tenant_account(config, tenant))
    while time.monotonic() - started < 600:
        try:
            if requests.get(f"{server.local_uri}/health", timeout=2).status_code == 200:
                return pid, time.monotonic() - started
        except requests.RequestException:
            pass
        if not psutil.pid_exists(pid):
            raise RuntimeError(f"{shape}: the server exited; see {server.process.log_file}")
        time.sleep(0.05)
    raise RuntimeError(f"{shape}: not healthy after 600 s")


def fl_project(config_path: Path, folder: Path, project: str) -> float:
    """A 3-round FL project with 2 learners, tracked through the tenant's server; returns its wall time."""
    from flops_mlops.configuration.loading import load
    from flops_mlops.fl.command import project_login
    from flops_mlops.fl.runner import run_project
    from flops_mlops.fl.settings import FLSettings

    config = load(config_path)
    tenant = config.tenant(TENANT)
    settings = FLSettings(project=project, tracking_uri=config.tracking_uri(tenant), rounds=3, learners=2, seed=42,
                          timeout=600, model_dir=folder / project / "model").check("aggregator")
    started = time.monotonic()
    run_project(settings, folder / project, env=project_login(config, tenant, project))
    return time.monotonic() - started


def measure(shape: str, folder: Path) -> dict:
    config = {"name": "bench", "state_dir": str(folder / "state"), "secrets_file": str(folder / "secrets.env"),
              "artifact_store": {"kind": "embedded", "port": free_port(), "passive_ports": [free_port()] * 2},
              "tracking": {**SHAPES[shape], "startup_timeout": 600, **service_account(folder)},
              "tenants": [{"id": TENANT, "port": free_port()}]}
    config_path = folder / "stack.yaml"
    config_path.write_text(yaml.safe_dump(config), encoding="utf-8")

    def cli(*args: str) -> subprocess.CompletedProcess:
        return subprocess.run([*CLI, "--config", str(config_path), *args], cwd=ROOT, capture_output=True,
                              text=True, check=True)

    cli("secrets", "init")
    try:
        cli("up", "--detach")
        pid, healthy_s = start_shape(shape, config_path)
        time.sleep(5)  # let workers and job-runner processes finish starting before reading memory
        idle = tree_memory(pid)
        fl_s = fl_project(config_path, folder, f"Footprint{shape.replace('-', '').capitalize()}")
        time.sleep(2)
        after = tree_memory(pid)
        status = json.loads(cli("status", "--json").stdout)
        ftp = next(tree_memory(s["pid"]) for s in status["services"] if s["name"] == "artifact-store")
    finally:
        subprocess.run([*CLI, "--config", str(config_path), "down", "--purge"], cwd=ROOT, capture_output=True)
    return {"start_to_healthy_s": healthy_s, "idle": idle, "after_fl": after, "fl_project_s": fl_s,
            "ftp_rss_mib": ftp["rss_mib"]}


def image_sizes() -> dict[str, str]:
    """Sizes of our Python images as `docker image ls` shows them (empty without a Docker engine)."""
    try:
        done = subprocess.run(["docker", "image", "ls", "--format", "{{.Repository}}:{{.Tag}} {{.Size}}"],
                              capture_output=True, text=True, timeout=30)
    except (OSError, subprocess.TimeoutExpired):
        return {}
    return dict(line.split(" ", 1) for line in done.stdout.splitlines()
                if line.startswith(("flops-mlops/tracking-server:", "flops-mlops/fl-actor:")))


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--shapes", nargs="+", choices=list(SHAPES), default=list(SHAPES))
    parser.add_argument("--out", default=str(ROOT / "bench" / "results" / "stack_footprint.json"))
    args = parser.parse_args()
    os.environ.update({"FLWR_TELEMETRY_ENABLED": "0", "FLWR_DISABLE_UPDATE_CHECK": "1",
                       "MLFLOW_DISABLE_TELEMETRY": "true", "MLFLOW_HTTP_REQUEST_MAX_RETRIES": "2"})
    report = {"benchmark": "stack_footprint", "date": started_at(), "machine": machine(),
              "shapes": {s: SHAPES[s] for s in args.shapes}, "repeats": args.repeats}
    results: dict[str, list[dict]] = {s: [] for s in args.shapes}
    for repeat in range(args.repeats):
        for shape in args.shapes:
            with tempfile.TemporaryDirectory(prefix="flops-bench-") as tmp:
                result = measure(shape, Path(tmp))
            results[shape].append(result)
            print(f"repeat {repeat + 1}/{args.repeats} {shape:>11}: healthy {result['start_to_healthy_s']:5.1f} s "
                  f"after start; {result['idle']['processes']} processes, idle {result['idle']['rss_mib']:5.0f} "
                  f"MiB, after 3 FL rounds {result['after_fl']['rss_mib']:5.0f} MiB (peak "
                  f"{result['after_fl']['peak_mib']:5.0f} MiB)", flush=True)
    summary = {}
    for shape, runs in results.items():
        median = lambda f: statistics.median(f(r) for r in runs)  # noqa: E731
        summary[shape] = {
            "processes": runs[0]["idle"]["processes"],
            "median_start_to_healthy_s": median(lambda r: r["start_to_healthy_s"]),
            "median_idle_rss_mib": median(lambda r: r["idle"]["rss_mib"]),
            "median_after_fl_rss_mib": median(lambda r: r["after_fl"]["rss_mib"]),
            "median_after_fl_peak_mib": median(lambda r: r["after_fl"]["peak_mib"]),
            "median_fl_project_s": median(lambda r: r["fl_project_s"]),
        }
        s = summary[shape]
        print(f"{shape:>11}: {s['processes']} processes; healthy {s['median_start_to_healthy_s']:.1f} s after start; "
              f"idle {s['median_idle_rss_mib']:.0f} MiB; after 3 FL rounds {s['median_after_fl_rss_mib']:.0f} MiB "
              f"(peak {s['median_after_fl_peak_mib']:.0f} MiB)")
    report.update({"summary": summary, "images": image_sizes(), "runs": results})
    write_report(report, Path(args.out))
    return 0


if __name__ == "__main__":
    sys.exit(main())
