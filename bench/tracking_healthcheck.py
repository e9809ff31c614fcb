"""Benchmark: what an idle tracking-server container costs, and how much of it is its healthcheck.

For each variant, the compose stack of compose.yaml (plus FLOPS_COMPOSE_OVERRIDE's override when set, e.g. for the
images of a machine without a registry; its own project name and free ports) comes up, is left idle for --settle
seconds, then measured for --seconds while nothing uses it: the CPU time the tracking-server container used (the
Docker API's cumulative cpu_usage, read through the engine's socket at both ends of the window) and `docker stats`
samples of its CPU %, as a user would look. Variants:

  shipped  the healthcheck compose.yaml ships (flops-tracking-healthcheck: sh and curl, every 10 s)
  none     no healthcheck at all: the server's own idle cost
  python   the healthcheck shipped before it: `python -m flops_mlops.tracking.container healthcheck` every 5 s, on
           --python-image, an image that still has that module (e.g. flops-mlops/tracking-server:0.1.0 built before
           issue 28); skipped, and said so in the JSON, when that image lacks it

Writes bench/results/tracking_healthcheck.json (bench/report.py renders it).

    .venv/bin/python bench/tracking_healthcheck.py [--seconds 120] [--settle 30] [--variants shipped none python]
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
import uuid
from pathlib import Path

import requests
import yaml
from common import CLI, ROOT, RESULTS, free_port, machine, started_at, write_report

PYTHON_CHECK = ["CMD", "python", "-m", "flops_mlops.tracking.container", "healthcheck"]
VARIANTS = ("shipped", "none", "python")


def compose_files(folder: Path, variant: str, python_image: str) -> list[str]:
    """-f arguments: compose.yaml, the machine's override if any, and the variant's own override."""
    files = ["-f", str(ROOT / "compose.yaml")]
    override = os.environ.get("FLOPS_COMPOSE_OVERRIDE", "").strip()
    if override:
        files += ["-f", str(ROOT / override)]
    tracking = {"none": {"healthcheck": {"test": ["NONE"]}},  # Docker's way to turn a healthcheck off
                "python": {"image": python_image, "healthcheck": {"test": PYTHON_CHECK, "interval": "5s"}}}
    if variant in tracking:
        path = folder / f"{variant}.yaml"
        path.write_text(yaml.safe_dump({"services": {"tracking-server": tracking[variant]}}), encoding="utf-8")
        files += ["-f", str(path)]
    return files


def cpu_seconds(container: str) -> float:
    """The container's cumulative CPU time, from the Docker API (what `docker stats` computes its % from)."""
    done = subprocess.run(["curl", "--silent", "--fail", "--unix-socket", "/var/run/docker.sock",
                           f"http://localhost/containers/{container}/stats?stream=false"],
                          capture_output=True, text=True, timeout=60, check=True)
    return json.loads(done.stdout)["cpu_stats"]["cpu_usage"]["total_usage"] / 1e9


def has_python_check(image: str) -> bool:
    done = subprocess.run(["docker", "run", "--rm", "--entrypoint", "python", image, "-c",
                           "import flops_mlops.tracking.container as c; print(hasattr(c, 'healthcheck'))"],
                          capture_output=True, text=True, timeout=300)
    return done.stdout.strip() == "True"


def measure(variant: str, folder: Path, env_file: Path, args) -> dict:
    files = compose_files(folder, variant, args.python_image)
    project = f"flopsbench-{variant}-{uuid.uuid4().hex[:6]}"
    port = free_port()
    low = free_port()
    env = {**{k: v for k, v in os.environ.items() if not k.startswith(("FLOPS_", "COMPOSE_"))},
           "FLOPS_TRACKING_PORT": str(port), "FLOPS_MYSQL_PORT": str(free_port()), "FLOPS_FTP_PORT": str(free_port()),
           "FLOPS_FTP_PASV_MIN_PORT": str(low), "FLOPS_FTP_PASV_MAX_PORT": str(low)}

    def compose(*more: str, timeout: float = 900) -> subprocess.CompletedProcess:
        done = subprocess.run(["docker", "compose", *files, "--env-file", str(env_file), "-p", project, *more],
                              capture_output=True, text=True, env=env, cwd=ROOT, timeout=timeout)
        if done.returncode != 0:
            raise RuntimeError(f"docker compose {' '.join(more)} exited {done.returncode}:\n{done.stderr[-3000:]}")
        return done

    try:
        # --wait refuses a service without a healthcheck ("none"): then /health below is the wait.
        waiting = [] if variant == "none" else ["--wait", "--wait-timeout", "600"]
        compose("up", "--detach", *waiting, "--no-build", "--pull", "never")
        deadline = time.monotonic() + 300
        while time.monotonic() < deadline:  # the server itself, whatever its healthcheck says
            try:
                if requests.get(f"http://127.0.0.1:{port}/health", timeout=5).status_code == 200:
                    break
            except requests.RequestException:
                pass
            time.sleep(1)
        container = compose("ps", "--quiet", "tracking-server").stdout.strip()
        inspected = json.loads(subprocess.run(["docker", "inspect", container], capture_output=True, text=True,
                                              check=True).stdout)[0]
        time.sleep(args.settle)
        load_before = [round(v, 2) for v in os.getloadavg()]
        start_cpu, started = cpu_seconds(container), time.monotonic()
        samples = []
        while time.monotonic() - started < args.seconds:
            shown = subprocess.run(["docker", "stats", "--no-stream", "--format", "{{.CPUPerc}}", container],
                                   capture_output=True, text=True, timeout=60).stdout.strip()
            if shown.endswith("%"):
                samples.append(float(shown[:-1]))
            time.sleep(max(0.0, min(args.sample_every, args.seconds - (time.monotonic() - started))))
        used, elapsed = cpu_seconds(container) - start_cpu, time.monotonic() - started
        health = inspected["Config"].get("Healthcheck") or {}
        result = {
            "image": inspected["Config"]["Image"],
            "healthcheck": health.get("Test"),
            "healthcheck_interval_s": health.get("Interval", 0) / 1e9 if health.get("Interval") else None,
            "window_s": round(elapsed, 1),
            "cpu_seconds": round(used, 3),
            "cpu_percent_of_one_core": round(100 * used / elapsed, 2),
            "docker_stats_cpu_percent": samples,
            "docker_stats_cpu_percent_median": round(statistics.median(samples), 2) if samples else None,
            "load_average_before": load_before,
            "load_average_after": [round(v, 2) for v in os.getloadavg()],
        }
        print(f"{variant:>8}: {result['cpu_seconds']:.2f} CPU s in {elapsed:.0f} s = "
              f"{result['cpu_percent_of_one_core']:.2f} % of a core; docker stats median "
              f"{result['docker_stats_cpu_percent_median']} % ({len(samples)} samples)", flush=True)
        return result
    finally:
        subprocess.run(["docker", "compose", *files, "--env-file", str(env_file), "-p", project, "--profile", "*",
                        "down", "--volumes", "--timeout", "20"], capture_output=True, env=env, cwd=ROOT, timeout=300)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, default=120, help="measured idle window per variant (120)")
    parser.add_argument("--settle", type=float, default=30, help="idle seconds before measuring (30)")
    parser.add_argument("--sample-every", type=float, default=10, help="seconds between docker stats samples (10)")
    parser.add_argument("--variants", nargs="+", choices=VARIANTS, default=list(VARIANTS))
    parser.add_argument("--python-image", default="flops-mlops/tracking-server:0.1.0",
                        help="image for the python variant (one that still has the Python healthcheck)")
    parser.add_argument("--out", type=Path, default=RESULTS / "tracking_healthcheck.json")
    args = parser.parse_args()
    report = {"benchmark": "tracking_healthcheck", "date": started_at(), "machine": machine(),
              "seconds": args.seconds, "settle_s": args.settle, "variants": {}}
    with tempfile.TemporaryDirectory(prefix="flops-bench-health-") as tmp:
        folder = Path(tmp)
        data = yaml.safe_load((ROOT / "configs" / "compose.yaml").read_text(encoding="utf-8"))
        data.update(state_dir=str(folder / "state"), secrets_file=str(folder / ".env"))
        (folder / "stack.yaml").write_text(yaml.safe_dump(data), encoding="utf-8")
        subprocess.run([*CLI, "--config", str(folder / "stack.yaml"), "secrets", "init"], cwd=ROOT, check=True,
                       capture_output=True)
        for variant in args.variants:
            if variant == "python" and not has_python_check(args.python_image):
                report["variants"][variant] = {"skipped": f"{args.python_image} has no Python healthcheck"}
                continue
            report["variants"][variant] = measure(variant, folder, folder / ".env", args)
    write_report(report, args.out)
    return 0


if __name__ == "__main__":
    sys.exit(main())
