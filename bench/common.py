"""What the benchmarks share: paths, free ports, the service account, and the record of the machine they ran on.

Every JSON a benchmark writes (``write_report``) records the machine: the CPU model from /proc/cpuinfo, cores,
memory, the OS, the versions that matter (Python, MLflow, Flower, scikit-learn; Docker and Compose when an engine
answers), and the load average when the benchmark started and when it ended: the machine may be shared, and the
load says how far to trust its times. `bench/report.py` renders each JSON into the report beside it.
"""

from __future__ import annotations

import json
import os
import platform
import socket
import subprocess
import sys
import time
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parent.parent
RESULTS = ROOT / "bench" / "results"
CLI = [sys.executable, "-m", "flops_mlops.cli"]


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def service_account(folder: Path) -> dict:
    """As root, tracking servers run as the flops-mlops account (`make account`): let it into ``folder``."""
    if os.geteuid() != 0:
        return {}
    folder.chmod(0o711)
    return {"os_user": "flops-mlops"}


def _command_output(argv: list[str]) -> str | None:
    try:
        done = subprocess.run(argv, capture_output=True, text=True, timeout=30)
    except (OSError, subprocess.TimeoutExpired):
        return None
    return done.stdout.strip() if done.returncode == 0 and done.stdout.strip() else None


def machine() -> dict:
    """The machine as the benchmark starts: call it first, before any work."""
    cpuinfo = Path("/proc/cpuinfo").read_text(encoding="utf-8").splitlines()
    cpu = next((line.split(":", 1)[1].strip() for line in cpuinfo if line.startswith("model name")),
               platform.processor())
    mem_kb = next(int(line.split()[1]) for line in Path("/proc/meminfo").read_text().splitlines()
                  if line.startswith("MemTotal"))
    versions = {"python": platform.python_version()}
    for package in ("mlflow", "flwr", "scikit-learn"):
        try:
            versions[package] = version(package)
        except PackageNotFoundError:
            pass
    for name, argv in (("docker", ["docker", "version", "--format", "{{.Server.Version}}"]),
                       ("docker compose", ["docker", "compose", "version", "--short"])):
        found = _command_output(argv)
        if found:
            versions[name] = found
    return {"cpu": cpu, "cores": os.cpu_count(), "memory_gb": round(mem_kb / 2**20, 1), "os": platform.platform(),
            "versions": versions, "load_average_at_start": [round(v, 2) for v in os.getloadavg()]}


def started_at() -> str:
    return time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime())


def write_report(report: dict, out: Path) -> None:
    """Write ``report`` (with "benchmark", "date" and "machine" from ``machine()``), adding the load average now."""
    for key in ("benchmark", "date", "machine"):
        if key not in report:
            raise ValueError(f"a benchmark report needs {key!r}")
    report["machine"]["load_average_at_end"] = [round(v, 2) for v in os.getloadavg()]
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(report, indent=2) + "\n", encoding="utf-8")
    print(f"wrote {out}; render its report with: .venv/bin/python bench/report.py")


FL_QUIET = {"FLWR_TELEMETRY_ENABLED": "0", "FLWR_DISABLE_UPDATE_CHECK": "1", "MLFLOW_DISABLE_TELEMETRY": "true",
            "MLFLOW_HTTP_REQUEST_MAX_RETRIES": "2"}


def start_embedded_stack(folder: Path, passive_ports: list[int]) -> Path:
    """A private one-tenant stack (tenant bench: SQLite + embedded FTP, free ports, state under ``folder``), up and
    detached; returns its configuration file. Stop it with ``stop_stack``."""
    config = {"name": "bench", "state_dir": str(folder / "state"), "secrets_file": str(folder / "secrets.env"),
              "artifact_store": {"kind": "embedded", "port": free_port(), "passive_ports": passive_ports},
              "tracking": {"workers": 1, **service_account(folder)},
              "tenants": [{"id": "bench", "port": free_port()}]}
    path = folder / "stack.yaml"
    path.write_text(yaml.safe_dump(config), encoding="utf-8")
    for command in (["secrets", "init"], ["up", "--detach"]):
        subprocess.run([*CLI, "--config", str(path), *command], check=True, cwd=ROOT, capture_output=True, text=True)
    return path


def stop_stack(path: Path) -> None:
    subprocess.run([*CLI, "--config", str(path), "down", "--purge"], cwd=ROOT, capture_output=True)
