"""Benchmark: the model server (`flops-mlops serve`) against `mlflow models serve`, in the same run.

A private one-tenant embedded stack (SQLite + embedded FTP, free ports, a temporary folder) runs a 2-round FL
project; its champion is then served two ways, one after the other, on the same machine:
  flops        `flops-mlops serve --detach`: python -m flops_mlops.serving.server, MLflow's scoring app under
               uvicorn in one process, the model fetched as serve-<project> (READ only)
  mlflow       `mlflow models serve -m models:/<project>@champion --env-manager local` as MLflow documents it
               (no internet here, so no virtualenv), logged in as the tenant's admin (MLflow's download needs the
               experiment; our reader has only the model)
For each it records the resident memory of the server's whole process tree after start and after the load, and
the latency of POST /invocations (JSON "inputs") for 1 row and for 1,000 rows: p50 and p95 over --requests
sequential requests after 10 warm-up requests. Writes bench/results/serving.json.

    .venv/bin/python bench/serving.py [--requests 200]
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

import numpy as np
import psutil
import requests
import yaml

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import CLI, ROOT, free_port, machine, service_account, started_at, write_report  # noqa: E402
from stack_footprint import tree_memory  # noqa: E402

TENANT, PROJECT = "bench", "Serve"


def cli(config: Path, *args: str, timeout: float = 600) -> subprocess.CompletedProcess:
    done = subprocess.run([*CLI, "--config", str(config), *args], capture_output=True, text=True, timeout=timeout,
                          cwd=ROOT)
    if done.returncode != 0:
        raise SystemExit(f"{' '.join(args[:2])} failed:\n{done.stdout[-2000:]}\n{done.stderr[-2000:]}")
    return done


def latencies(url: str, rows: int, count: int) -> dict:
    body = json.dumps({"inputs": np.random.default_rng(rows).normal(size=(rows, 8)).round(6).tolist()})
    headers = {"Content-Type": "application/json"}
    with requests.Session() as session:
        for _ in range(10):
            assert session.post(f"{url}/invocations", data=body, headers=headers, timeout=60).status_code == 200
        times = []
        for _ in range(count):
            began = time.perf_counter()
            answer = session.post(f"{url}/invocations", data=body, headers=headers, timeout=60)
            times.append((time.perf_counter() - began) * 1000)
            assert answer.status_code == 200 and len(answer.json()["predictions"]) == rows
    cuts = statistics.quantiles(times, n=100)
    return {"rows": rows, "requests": count, "p50_ms": round(cuts[49], 2), "p95_ms": round(cuts[94], 2),
            "mean_ms": round(statistics.fmean(times), 2), "body_bytes": len(body)}


def measure(name: str, url: str, pid: int, count: int, started: float) -> dict:
    deadline = time.monotonic() + 300
    while True:
        try:
            if requests.get(f"{url}/ping", timeout=2).status_code == 200:
                break
        except requests.RequestException:
            pass
        if time.monotonic() > deadline:
            raise SystemExit(f"{name}: /ping did not answer")
        time.sleep(0.2)
    ready = time.monotonic() - started
    time.sleep(3)
    idle = tree_memory(pid)
    result = {"name": name, "start_to_ping_s": round(ready, 1), "memory_idle": idle,
              "latency": [latencies(url, 1, count), latencies(url, 1000, max(20, count // 4))]}
    result["memory_after_load"] = tree_memory(pid)
    print(json.dumps({k: v for k, v in result.items() if k != "memory_idle"}, indent=1), flush=True)
    return result


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--requests", type=int, default=200, help="timed requests of 1 row (1,000 rows: a quarter)")
    parser.add_argument("--out", type=Path, default=ROOT / "bench" / "results" / "serving.json")
    args = parser.parse_args()
    report = {"benchmark": "serving", "date": started_at(), "machine": machine(), "requests": args.requests,
              "servers": []}
    with tempfile.TemporaryDirectory(prefix="flops-bench-serving-") as tmp:
        folder = Path(tmp)
        account = service_account(folder)
        data = {"name": "bench-serving", "state_dir": str(folder / "state"), "secrets_file": str(folder / "s.env"),
                "artifact_store": {"kind": "embedded", "host": "127.0.0.1", "port": free_port(),
                                   "passive_ports": [p := free_port(), p], "pasv_address": "127.0.0.1"},
                "tracking": {"host": "127.0.0.1", "public_host": "127.0.0.1", "workers": 1, **account},
                "tenants": [{"id": TENANT, "port": free_port()}]}
        config = folder / "stack.yaml"
        config.write_text(yaml.safe_dump(data), encoding="utf-8")
        cli(config, "secrets", "init")
        cli(config, "up", "--detach")
        try:
            cli(config, "round", "--tenant", TENANT, "--project", PROJECT, "--rounds", "2", "--learners", "2")
            port = free_port()
            started = time.monotonic()
            cli(config, "serve", "--tenant", TENANT, "--project", PROJECT, "--port", str(port), "--poll", "0",
                "--detach")
            status = json.loads(cli(config, "status", "--json").stdout)
            pid = next(s["pid"] for s in status["services"] if s["name"] == f"model-{TENANT}-{PROJECT}")
            report["servers"].append(measure("flops-mlops serve", f"http://127.0.0.1:{port}", pid, args.requests,
                                             started))
            cli(config, "serve", "--tenant", TENANT, "--project", PROJECT, "--stop")
            report["servers"].append(mlflow_models_serve(config, folder, args.requests))
        finally:
            subprocess.run([*CLI, "--config", str(config), "down", "--purge"], capture_output=True, cwd=ROOT)
    write_report(report, args.out)
    return 0


def mlflow_models_serve(config: Path, folder: Path, count: int) -> dict:
    from flops_mlops.configuration import loading as config_module
    from flops_mlops.configuration.secrets import Secrets

    stack = config_module.load(config)
    port = free_port()
    bin_dir = str(Path(sys.executable).parent)  # mlflow starts `uvicorn` by name: the venv's, first on PATH
    env = {**os.environ, "PATH": bin_dir + os.pathsep + os.environ.get("PATH", ""),
           "MLFLOW_TRACKING_URI": stack.tracking_uri(stack.tenant(TENANT)),
           "MLFLOW_TRACKING_USERNAME": "admin", "MLFLOW_TRACKING_PASSWORD": Secrets.load(stack).admin_password(TENANT),
           "MLFLOW_DISABLE_TELEMETRY": "true"}
    argv = [f"{bin_dir}/mlflow", "models", "serve", "-m", f"models:/{PROJECT}@champion",
            "-p", str(port), "-h", "127.0.0.1", "--env-manager", "local"]
    started = time.monotonic()
    with open(folder / "mlflow-models-serve.log", "wb") as log:
        process = subprocess.Popen(argv, env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    try:
        result = measure("mlflow models serve --env-manager local", f"http://127.0.0.1:{port}", process.pid, count,
                         started)
        result["argv"] = argv[1:]
        return result
    finally:
        os.killpg(process.pid, 15)
        try:
            process.wait(timeout=20)
        except subprocess.TimeoutExpired:
            os.killpg(process.pid, 9)


if __name__ == "__main__":
    sys.exit(main())
