"""Benchmark: an FL project from an ML repository (the PyTorch example): tracking overhead, last round to registered
champion with the model's size, and the champion's download through the tracking server against raw FTP.

Brings up a private embedded stack (SQLite + embedded FTP, free ports, a temporary folder) and builds (or reuses) the
repository's environment as `round --ml-repo` does. The repository is a copy of examples/pytorch with more local
epochs (--epochs; the example's own 5 make rounds of 0.3 s, which would measure process start-up, not training), so
rounds take seconds. It runs that project alternately with tracking off (only the best model kept on disk) and on
(a run per round, the best model logged with mlflow.pytorch and registered as champion), REPEATS times each, then
downloads the last champion, models:/<project>@champion, REPEATS times each way after a warm-up:
  proxied      mlflow.artifacts.download_artifacts through the tracking server (our FTP repository, pooled logins),
               counting the artifact HTTP requests in the server's access log
  raw ftplib   one login, a walk of the same folder, RETR of each file (bench/ftp_download.py's raw_download)
  one metadata request   one logged-in API call without FTP (experiments/get): the fixed cost of each HTTP request
and copies today's small-file figure (the scikit-learn model of bench/results/ftp_download.json, embedded store)
next to it. Writes bench/results/fl_project.json.

    .venv/bin/python bench/fl_project.py [--rounds 5] [--learners 2] [--repeats 3] [--epochs 40]
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path


sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import FL_QUIET, RESULTS, ROOT, machine, start_embedded_stack, started_at, stop_stack, write_report  # noqa: E402
from fl_tracking_overhead import children_cpu_seconds  # noqa: E402
from ftp_download import free_port_range, raw_download  # noqa: E402

EXAMPLE = ROOT / "examples" / "pytorch"
EPOCHS_LINE = re.compile(r"^EPOCHS, BATCH, LEARNING_RATE, MOMENTUM = (\d+),", re.MULTILINE)
IMAGES = ("flops-mlops/fl-digitstorch", "flops-mlops/fl-actor", "flops-mlops/model-server")


def repository_copy(folder: Path, epochs: int) -> Path:
    """examples/pytorch with ``epochs`` local epochs per round (nothing else changed)."""
    repo = folder / "pytorch-example"
    shutil.copytree(EXAMPLE, repo, ignore=shutil.ignore_patterns("__pycache__"))
    source = (repo / "model_manager.py").read_text(encoding="utf-8")
    if not EPOCHS_LINE.search(source):
        raise SystemExit("examples/pytorch/model_manager.py: no 'EPOCHS, BATCH, LEARNING_RATE, MOMENTUM = ' line")
    (repo / "model_manager.py").write_text(EPOCHS_LINE.sub(f"EPOCHS, BATCH, LEARNING_RATE, MOMENTUM = {epochs},",
                                                           source), encoding="utf-8")
    return repo


def image_sizes() -> dict[str, str]:
    """The example images on this engine: name:tag -> size as `docker image ls` shows it."""
    if shutil.which("docker") is None:
        return {}
    found = {}
    for name in IMAGES:
        listed = subprocess.run(["docker", "image", "ls", "--format", "{{.Repository}}:{{.Tag}} {{.Size}}", name],
                                capture_output=True, text=True).stdout.split("\n")
        found.update(line.split(" ", 1) for line in listed if line.strip() and "<none>" not in line)
    return found


def small_file_reference() -> dict | None:
    """Today's figure for the test suite's scikit-learn model (bench/results/ftp_download.json, embedded store)."""
    path = RESULTS / "ftp_download.json"
    if not path.exists():
        return None
    data = json.loads(path.read_text(encoding="utf-8"))
    embedded = data["results"].get("embedded")
    if not embedded:
        return None
    embedded = embedded.get("sklearn", embedded)  # by model since ftp_download.py measures several
    ways = embedded["ways"]
    return {"date": data["date"], "files": embedded["files"], "proxied_ms": ways["proxied"]["median_s"] * 1000,
            "raw_ms": ways["raw_ftplib"]["median_s"] * 1000, "ratio": ways["proxied"]["ratio_to_raw"],
            "artifact_http_requests": ways["proxied"]["artifact_http_requests"]}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--learners", type=int, default=2)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--epochs", type=int, default=40, help="local epochs per round (the example has 5)")
    parser.add_argument("--downloads", type=int, default=10, help="downloads each way, after one warm-up")
    parser.add_argument("--out", default=str(RESULTS / "fl_project.json"))
    args = parser.parse_args()
    os.environ.update(FL_QUIET)

    import mlflow
    from flops_mlops.configuration.loading import load
    from flops_mlops.configuration.secrets import Secrets
    from flops_mlops.fl.command import project_login
    from flops_mlops.fl.environments import for_repository
    from flops_mlops.fl.ml_repo import resolve
    from flops_mlops.fl.runner import Runtime, run_project
    from flops_mlops.fl.settings import FLSettings

    machine_at_start, date = machine(), started_at()
    with tempfile.TemporaryDirectory(prefix="flops-bench-") as tmp:
        folder = Path(tmp)
        repo = resolve(str(repository_copy(folder, args.epochs)), None, folder / "repos")
        environment = for_repository(repo.dependencies(), progress=lambda text, **_: print(text, flush=True))
        print(f"environment: {environment.description}", flush=True)
        runtime = Runtime(environment.python, environment.variables(folder / "runtime"))
        config_path = start_embedded_stack(folder, list(free_port_range(8)))
        loaded = load(config_path)
        tenant = loaded.tenant("bench")
        uri = loaded.tracking_uri(tenant)
        results: dict[str, list[dict]] = {"off": [], "on": []}
        try:
            for repeat in range(args.repeats):
                for mode in ("off", "on"):
                    project = f"Torch{mode.capitalize()}{repeat}"
                    settings = FLSettings(project=project, tracking_uri=uri if mode == "on" else "off",
                                          rounds=args.rounds, learners=args.learners, seed=42, timeout=900,
                                          flavor="pytorch", ml_repo=str(repo.folder), ml_repo_tag=repo.tag,
                                          model_dir=folder / project / "model").check("aggregator")
                    login = project_login(loaded, tenant, project) if mode == "on" else {}
                    cpu_before = children_cpu_seconds()
                    started = time.monotonic()
                    summary = run_project(settings, folder / project, env=login, runtime=runtime)
                    wall = time.monotonic() - started
                    cpu = children_cpu_seconds() - cpu_before
                    round_times = [e["wall_time"] for e in summary["rounds"]]
                    results[mode].append({"wall_s": wall, "rounds_s": sum(round_times), "round_times_s": round_times,
                                          "cpu_s": cpu, "accuracy": summary["rounds"][-1].get("accuracy"),
                                          "last_round_to_registered_s": summary.get("last_round_to_registered_s"),
                                          "project": project})
                    print(f"repeat {repeat + 1}/{args.repeats} tracking {mode:>3}: {wall:6.2f} s wall, rounds "
                          f"{' '.join(f'{t:.1f}' for t in round_times)} s, {cpu:5.1f} s CPU", flush=True)
            download = measure_download(loaded, tenant, uri, results["on"][-1]["project"], args.downloads, mlflow,
                                        Secrets)
        finally:
            stop_stack(config_path)

    def median(mode: str, key: str) -> float:
        return statistics.median(r[key] for r in results[mode])

    report = {
        "benchmark": "fl_project", "date": date, "machine": machine_at_start,
        "ml_repo": f"examples/pytorch with {args.epochs} local epochs per round", "flavor": "pytorch",
        "environment": environment.description,
        "rounds": args.rounds, "learners": args.learners, "repeats": args.repeats, "epochs": args.epochs,
        "median_wall_s": {"off": median("off", "wall_s"), "on": median("on", "wall_s")},
        "median_rounds_s": {"off": median("off", "rounds_s"), "on": median("on", "rounds_s")},
        "median_cpu_s": {"off": median("off", "cpu_s"), "on": median("on", "cpu_s")},
        "median_round_s": statistics.median(t for r in results["on"] for t in r["round_times_s"][1:]),
        "overhead_ratio_wall": median("on", "wall_s") / median("off", "wall_s"),
        "median_last_round_to_registered_s": median("on", "last_round_to_registered_s"),
        "download": download, "small_file_reference": small_file_reference(), "images": image_sizes(),
        "runs": results,
    }
    print(f"\nmedian wall: {report['median_wall_s']['off']:.2f} s untracked, {report['median_wall_s']['on']:.2f} s "
          f"tracked -> ratio {report['overhead_ratio_wall']:.3f}; median round {report['median_round_s']:.2f} s")
    print(f"last round -> champion registered: {report['median_last_round_to_registered_s']:.2f} s; model "
          f"{download['model_bytes']:,} bytes in {download['files']} files")
    print(f"download: proxied {download['proxied']['median_s'] * 1000:.1f} ms, raw "
          f"{download['raw_ftplib']['median_s'] * 1000:.1f} ms -> {download['ratio']:.2f}x "
          f"({download['proxied']['artifact_http_requests']:g} artifact HTTP requests)")
    write_report(report, Path(args.out))
    return 0


def measure_download(config, tenant, uri: str, project: str, repeats: int, mlflow, Secrets) -> dict:
    """The champion of ``project`` downloaded through the tracking server and with raw ftplib, after a warm-up."""
    import requests
    from flops_mlops.stores import ftp_client

    secrets = Secrets.load(config)
    login = ("admin", secrets.admin_password(tenant.id))
    os.environ.update({"MLFLOW_TRACKING_USERNAME": login[0], "MLFLOW_TRACKING_PASSWORD": login[1]})
    os.environ.update(ftp_client.environment(config))
    mlflow.set_tracking_uri(uri)
    version = mlflow.MlflowClient().get_model_version_by_alias(project, "champion")
    model_uri = f"models:/{project}@champion"
    source = mlflow.MlflowClient().get_model_version_download_uri(project, version.version)
    # mlflow-artifacts:/<experiment>/models/<model id>/artifacts -> the FTP user's /artifacts/... folder
    remote = "/artifacts/" + source.split(":", 1)[1].lstrip("/")
    store, password = config.artifact_store, secrets.ftp_password(tenant.id)
    access_log = config.state_dir / "logs" / f"tracking-{tenant.id}.log"

    def artifact_requests() -> int:
        text = access_log.read_text(errors="replace") if access_log.exists() else ""
        return text.count("/api/2.0/mlflow-artifacts/artifacts")

    experiment = mlflow.get_run(version.run_id).info.experiment_id

    def one_metadata_request(out: Path) -> None:
        """One logged-in API call without FTP: what each of the proxied download's HTTP requests costs anyway."""
        requests.get(f"{uri}/api/2.0/mlflow/experiments/get", params={"experiment_id": experiment}, auth=login,
                     timeout=60).raise_for_status()

    ways = {"proxied": lambda out: mlflow.artifacts.download_artifacts(model_uri, dst_path=str(out)),
            "raw_ftplib": lambda out: raw_download(store.host, store.port, tenant.ftp_user, password, remote, out),
            "one_metadata_request": one_metadata_request}
    results, size, files = {}, 0, 0
    with tempfile.TemporaryDirectory(prefix="flops-bench-dl-") as tmp:
        for name, way in ways.items():
            times, http = [], []
            for attempt in range(repeats + 1):
                out = Path(tmp) / f"{name}-{attempt}"
                out.mkdir()
                before = artifact_requests()
                started = time.perf_counter()
                way(out)
                elapsed = time.perf_counter() - started
                http.append(artifact_requests() - before)
                if attempt:
                    times.append(elapsed)
                if name == "raw_ftplib" and not attempt:
                    paths = [p for p in out.rglob("*") if p.is_file()]
                    size, files = sum(p.stat().st_size for p in paths), len(paths)
                shutil.rmtree(out)
            results[name] = {"median_s": statistics.median(times), "min_s": min(times), "max_s": max(times),
                             "artifact_http_requests": statistics.median(http[1:]), "times_s": times}
    return {"model_uri": model_uri, "version": version.version, "files": files, "model_bytes": size, **results,
            "ratio": results["proxied"]["median_s"] / results["raw_ftplib"]["median_s"]}


if __name__ == "__main__":
    sys.exit(main())
