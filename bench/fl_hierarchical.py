"""Benchmark: classic and hierarchical FL side by side on the same learners and data.

The same K*N learners of the scikit-learn example (same seed, so the same non-IID split of the digits), tracking
off (the root keeps only its best model on disk; tracking costs both modes the same): classic runs one
aggregator for C*R rounds; hierarchical runs a root over K cluster aggregators for C cycles of R rounds each, so
every learner trains C*R times in both. Taking turns, REPEATS times each. Per mode: the wall time of the whole
run, the model bytes that reach the root (classic) aggregator per cycle (the parameter arrays of the fit replies
it receives; a classic cycle is R rounds), the final accuracy (the best model's, on the digits no learner
holds) and the last round's (cycle's) aggregated evaluation loss. Writes bench/results/fl_hierarchical.json.

    .venv/bin/python bench/fl_hierarchical.py [--clusters 2] [--learners-per-cluster 2] [--cycles 2] [--rounds 2]
                                              [--repeats 3]
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

from common import ROOT, machine, started_at, write_report


def held_out_accuracy(model_dir: Path) -> float:
    """The best model's accuracy on the held-out digits (the scikit-learn example's own split)."""
    from flops_mlops.fl.best_model import BestModel
    from flops_mlops.fl.ml_repo import import_model_manager

    model_manager = import_model_manager(ROOT / "examples" / "sklearn")
    import data_manager

    x, y = data_manager.held_out(42)
    manager = model_manager.ModelManager()
    manager.set_model_parameters(BestModel(model_dir).load())
    return float((manager.get_model().predict(x) == y).mean())


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--clusters", type=int, default=2)
    parser.add_argument("--learners-per-cluster", type=int, default=2)
    parser.add_argument("--cycles", type=int, default=2)
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--out", default=str(ROOT / "bench" / "results" / "fl_hierarchical.json"))
    args = parser.parse_args()
    os.environ.update({"FLWR_TELEMETRY_ENABLED": "0", "FLWR_DISABLE_UPDATE_CHECK": "1"})

    from flops_mlops.fl.runner import run_project
    from flops_mlops.fl.settings import FLSettings

    machine_at_start, date = machine(), started_at()
    k, n, c, r = args.clusters, args.learners_per_cluster, args.cycles, args.rounds
    shapes = {"classic": {"learners": k * n, "rounds": c * r},
              "hierarchical": {"mode": "hierarchical", "clusters": k, "learners": n, "cycles": c, "rounds": r}}
    results: dict[str, list[dict]] = {mode: [] for mode in shapes}
    with tempfile.TemporaryDirectory(prefix="flops-bench-") as tmp:
        for repeat in range(args.repeats):
            for mode, shape in shapes.items():
                folder = Path(tmp) / f"{mode}{repeat}"
                settings = FLSettings(project=f"Bench{mode.capitalize()}", tracking_uri="off", seed=42, timeout=600,
                                      model_dir=folder / "model", **shape).check("aggregator")
                events: list[dict] = []
                started = time.monotonic()
                summary = run_project(settings, folder, on_event=lambda e: e["event"] == "round" and events.append(e))
                wall = time.monotonic() - started
                received = [e["received_bytes"] for e in events]
                per_cycle = [sum(received[i:i + r]) for i in range(0, len(received), r)] if mode == "classic" \
                    else received
                results[mode].append({"wall_s": wall, "bytes_per_cycle": per_cycle,
                                      "accuracy": held_out_accuracy(folder / "model"),
                                      "best": summary["best_round"],
                                      "final_loss": summary["rounds"][-1]["loss"],
                                      "final_aggregated_accuracy": summary["rounds"][-1]["accuracy"]})
                print(f"repeat {repeat + 1}/{args.repeats} {mode:>12}: {wall:6.2f} s, {per_cycle[0]:,} bytes to the "
                      f"root per cycle, held-out accuracy {results[mode][-1]['accuracy']:.3f}", flush=True)

    def median(mode: str, key: str) -> float:
        return statistics.median(run[key] for run in results[mode])

    report = {
        "benchmark": "fl_hierarchical", "date": date, "machine": machine_at_start,
        "clusters": k, "learners_per_cluster": n, "cycles": c, "rounds": r, "repeats": args.repeats,
        "median_wall_s": {mode: median(mode, "wall_s") for mode in shapes},
        "bytes_per_cycle": {mode: results[mode][0]["bytes_per_cycle"][0] for mode in shapes},
        "median_accuracy": {mode: median(mode, "accuracy") for mode in shapes},
        "median_final_loss": {mode: median(mode, "final_loss") for mode in shapes},
        "runs": results,
    }
    for mode in shapes:
        print(f"{mode}: median {report['median_wall_s'][mode]:.2f} s, {report['bytes_per_cycle'][mode]:,} bytes per "
              f"cycle to the root, median held-out accuracy {report['median_accuracy'][mode]:.3f}")
    print(f"load average: {machine_at_start['load_average_at_start']} at start, {os.getloadavg()} at the end")
    write_report(report, Path(args.out))
    return 0


if __name__ == "__main__":
    sys.exit(main())
