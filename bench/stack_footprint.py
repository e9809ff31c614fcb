"""Benchmark: what one tenant's stack costs to start and to keep running, tuned versus MLflow's defaults.

For each profile it brings up a private one-tenant embedded stack (SQLite + embedded FTP, free ports, a
temporary folder) with `flops-mlops up --detach`, and records the wall time until the tracking server answers
/health, then the memory of each service's whole process tree (resident set, and the peak VmHWM of each
process, summed), then takes it down. Profiles:
  tuned      tracking.workers 1, tracking.job_execution false (what configs/*.yaml ship)
  defaults   tracking.workers 4, tracking.job_execution true (MLflow's own defaults)
Writes bench/results/stack_footprint.json.

    .venv/bin/python bench/stack_footprint.py [--repeats 2] [--profiles tuned defaults]
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import psutil
import yaml

sys.path.insert(0, str(Path(__file__).resolve().parent))
from fl_tracking_overhead import CLI, ROOT, free_port, machine, service_account, write_report  # noqa: E402

PROFILES = {"tuned": {"workers": 1, "job_execution": False}, "defaults": {"workers": 4, "job_execution": True}}


def tree_memory(pid: int) -> dict[str, float]:
    """Resident and peak (VmHWM) memory of a process and all its descendants, in MiB."""
    root = psutil.Process(pid)
    procs = [root, *root.children(recursive=True)]
    rss = peak = 0
    for proc in procs:
        try:
            rss += proc.memory_info().rss
            for line in Path(f"/proc/{proc.pid}/status").read_text().splitlines():
                if line.startswith("VmHWM:"):
                    peak += int(line.split()[1]) * 1024
        except (psutil.Error, FileNotFoundError):
            continue
    return {"processes": len(procs), "rss_mib": rss / 2**20, "peak_mib": peak / 2**20}


def measure(profile: str, folder: Path) -> dict:
    config = {"name": "bench", "state_dir": str(folder / "state"), "secrets_file": str(folder / "secrets.env"),
              "artifact_store": {"kind": "embedded", "port": free_port(), "passive_ports": [free_port()] * 2},
              "tracking": {**PROFILES[profile], "startup_timeout": 600, **service_account(folder)},
              "tenants": [{"id": "bench", "port": free_port()}]}
    config_path = folder / "stack.yaml"
    config_path.write_text(yaml.safe_dump(config), encoding="utf-8")

    def cli(*args: str) -> subprocess.CompletedProcess:
        return subprocess.run([*CLI, "--config", str(config_path), *args], cwd=ROOT, capture_output=True,
                              text=True, check=True)

    cli("secrets", "init")
    try:
        started = time.monotonic()
        cli("up", "--detach")
        up_s = time.monotonic() - started
        time.sleep(5)  # let worker and job-runner processes finish starting before reading memory
        status = json.loads(cli("status", "--json").stdout)
        memory = {s["name"]: tree_memory(s["pid"]) for s in status["services"] if s["pid"]}
    finally:
        subprocess.run([*CLI, "--config", str(config_path), "down", "--purge"], cwd=ROOT, capture_output=True)
    return {"up_to_healthy_s": up_s, "memory": memory}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--profiles", nargs="+", choices=list(PROFILES), default=list(PROFILES))
    parser.add_argument("--out", default=str(ROOT / "bench" / "results" / "stack_footprint.json"))
    args = parser.parse_args()
    results: dict[str, list[dict]] = {p: [] for p in args.profiles}
    for repeat in range(args.repeats):
        for profile in args.profiles:
            with tempfile.TemporaryDirectory(prefix="flops-bench-") as tmp:
                result = measure(profile, Path(tmp))
            results[profile].append(result)
            tracker = result["memory"]["tracking-bench"]
            print(f"repeat {repeat + 1}/{args.repeats} {profile:>8}: healthy after {result['up_to_healthy_s']:5.1f} s, "
                  f"tracking server {tracker['processes']} processes, {tracker['rss_mib']:6.0f} MiB resident, "
                  f"{tracker['peak_mib']:6.0f} MiB peak", flush=True)
    summary = {}
    for profile, runs in results.items():
        summary[profile] = {
            "median_up_to_healthy_s": statistics.median(r["up_to_healthy_s"] for r in runs),
            "median_tracking_rss_mib": statistics.median(r["memory"]["tracking-bench"]["rss_mib"] for r in runs),
            "median_tracking_peak_mib": statistics.median(r["memory"]["tracking-bench"]["peak_mib"] for r in runs),
            "median_ftp_rss_mib": statistics.median(r["memory"]["artifact-store"]["rss_mib"] for r in runs),
        }
        s = summary[profile]
        print(f"{profile:>8}: up in {s['median_up_to_healthy_s']:.1f} s (median); tracking server "
              f"{s['median_tracking_rss_mib']:.0f} MiB resident, {s['median_tracking_peak_mib']:.0f} MiB peak; "
              f"embedded FTP {s['median_ftp_rss_mib']:.0f} MiB")
    report = {"benchmark": "stack_footprint", "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
              "machine": machine(), "profiles": PROFILES, "repeats": args.repeats, "summary": summary,
              "runs": results}
    write_report(report, Path(args.out))
    return 0


if __name__ == "__main__":
    sys.exit(main())
