"""Benchmark: what the MLflow tracking policy costs an FL run, and how long the model takes to be registered.

Brings up a private embedded stack (SQLite + embedded FTP, free ports, a temporary folder), then runs the same
FL project (legacy Flower API, same seed) alternately with tracking off (only the best model kept on disk) and
on (one MLflow run per round, best model logged and registered), REPEATS times each, in one run. Prints the
median wall times, the overhead ratio (tracked / untracked), and the time from the last round being logged to
the model version being registered and aliased, and the CPU time the FL processes used (aggregator + learners:
the figure a busy machine distorts least). Writes bench/results/fl_tracking_overhead.json.

    .venv/bin/python bench/fl_tracking_overhead.py [--rounds 5] [--learners 2] [--repeats 3]
"""

from __future__ import annotations

import argparse
import os
import resource
import statistics
import sys
import tempfile
import time
from pathlib import Path

from common import FL_QUIET, ROOT, free_port, machine, start_embedded_stack, started_at, stop_stack, write_report

def children_cpu_seconds() -> float:
    """User + system CPU seconds of this process's finished children (the FL processes run_project waited for)."""
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--learners", type=int, default=2)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--out", default=str(ROOT / "bench" / "results" / "fl_tracking_overhead.json"))
    args = parser.parse_args()
    os.environ.update(FL_QUIET)

    from flops_mlops.configuration.loading import load
    from flops_mlops.fl.command import project_login
    from flops_mlops.fl.runner import run_project
    from flops_mlops.fl.settings import FLSettings

    machine_at_start, date = machine(), started_at()
    with tempfile.TemporaryDirectory(prefix="flops-bench-") as tmp:
        folder = Path(tmp)
        low = free_port()
        config_path = start_embedded_stack(folder, [low, low])
        loaded = load(config_path)
        uri = loaded.tracking_uri(loaded.tenant("bench"))
        results: dict[str, list[dict]] = {"off": [], "on": []}
        try:
            for repeat in range(args.repeats):
                for mode in ("off", "on"):
                    project = f"Bench{mode.capitalize()}{repeat}"
                    settings = FLSettings(project=project, tracking_uri=uri if mode == "on" else "off",
                                          rounds=args.rounds, learners=args.learners, seed=42, timeout=600,
                                          model_dir=folder / project / "model").check("aggregator")
                    login = project_login(loaded, loaded.tenant("bench"), project) if mode == "on" else {}
                    cpu_before = children_cpu_seconds()
                    started = time.monotonic()
                    summary = run_project(settings, folder / project, env=login)
                    wall = time.monotonic() - started
                    cpu = children_cpu_seconds() - cpu_before  # aggregator + learners, user + system
                    rounds_s = sum(e["wall_time"] for e in summary["rounds"])
                    results[mode].append({"wall_s": wall, "rounds_s": rounds_s, "cpu_s": cpu,
                                          "last_round_to_registered_s": summary.get("last_round_to_registered_s")})
                    print(f"repeat {repeat + 1}/{args.repeats} tracking {mode:>3}: {wall:6.2f} s wall, "
                          f"rounds {rounds_s:5.2f} s, {cpu:5.2f} s CPU", flush=True)
        finally:
            stop_stack(config_path)

    def median(mode: str, key: str) -> float:
        return statistics.median(r[key] for r in results[mode])

    report = {
        "benchmark": "fl_tracking_overhead", "date": date, "machine": machine_at_start,
        "rounds": args.rounds, "learners": args.learners, "repeats": args.repeats,
        "median_wall_s": {"off": median("off", "wall_s"), "on": median("on", "wall_s")},
        "median_rounds_s": {"off": median("off", "rounds_s"), "on": median("on", "rounds_s")},
        "median_cpu_s": {"off": median("off", "cpu_s"), "on": median("on", "cpu_s")},
        "overhead_ratio_wall": median("on", "wall_s") / median("off", "wall_s"),
        "median_last_round_to_registered_s": median("on", "last_round_to_registered_s"),
        "runs": results,
    }
    print(f"\nmedian wall time: {report['median_wall_s']['off']:.2f} s without tracking, "
          f"{report['median_wall_s']['on']:.2f} s with tracking -> overhead ratio "
          f"{report['overhead_ratio_wall']:.2f}")
    print(f"median CPU time of the FL processes: {report['median_cpu_s']['off']:.2f} s without, "
          f"{report['median_cpu_s']['on']:.2f} s with tracking")
    print(f"median time in rounds: {report['median_rounds_s']['off']:.2f} s without, "
          f"{report['median_rounds_s']['on']:.2f} s with tracking")
    print(f"last round -> model registered with alias: {report['median_last_round_to_registered_s']:.2f} s")
    print(f"load average: {machine_at_start['load_average_at_start']} at start, {os.getloadavg()} at the end")
    write_report(report, Path(args.out))
    return 0


if __name__ == "__main__":
    sys.exit(main())
