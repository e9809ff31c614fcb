"""What an FL project tells a person: a line per round, then a summary with the links to open in the MLflow UI.

Native `flops-mlops round` prints these from the aggregator's events; an aggregator started on its own (a compose
or Oakestra container) prints the same lines itself (``events.Events``).
"""

from __future__ import annotations

from typing import Any

from .best_model import BETTER


def round_line(event: dict[str, Any]) -> str:
    """One finished round: ``round 2/3: loss 0.5123  accuracy 0.8000  0.41 s  (new best)``."""
    best = "  (new best)" if event.get("best") else ""
    run = f"  run {event['run_id']}" if event.get("run_id") else ""  # logged in the background: often unknown yet
    return (f"{event.get('unit', 'round')} {event['round']}/{event['rounds']}: loss {event['loss']:.4f}  "
            f"accuracy {event['accuracy']:.4f}  "
            f"{event['wall_time']:.2f} s{run}{best}")


def summary_lines(summary: dict[str, Any]) -> list[str]:
    """The summary of a finished project (the aggregator's summary event): every round, the best one, the
    registered model and the links (without tracking: the best model's file only)."""
    unit = summary.get("unit") or "round"
    lines = [f"summary of {summary['project']} (best = {BETTER[summary['better']]}):"]
    for entry in summary["rounds"]:
        mark = "  <- best" if entry["round"] == summary["best_round"] else ""
        lines.append(f"  {unit} {entry['round']}: loss {entry['loss']:.4f}  accuracy {entry['accuracy']:.4f}{mark}")
        clusters = entry.get("clusters") or {}
        for name in sorted({key.split("/")[0] for key in clusters}):
            lines.append(f"    {name}: loss {clusters[name + '/loss']:.4f}  accuracy "
                         f"{clusters[name + '/accuracy']:.4f}  ({clusters[name + '/examples']:.0f} examples)")
    if summary.get("failed_learners"):
        label = "failed learners:" if unit == "round" else "failed:"
        lines.append(f"{label:<18}{', '.join(summary['failed_learners'])} (the {unit}s went on without them)")
    lines.append(f"best {unit}:{' ' * (12 - len(unit))}{summary['best_round']}")
    if summary.get("model_uri"):
        size = f"{summary['model_bytes'] / 1024:.0f} KiB, " if summary.get("model_bytes") else ""
        signature = ("with signature and input example" if summary.get("signature") else
                     "no signature: the repository has no get_input_example()")
        lines.append(f"model:            {summary['model_uri']} (version {summary['model_version']}, "
                     f"{summary['logged_model_uri']}; {summary.get('flavor')}, {size}{signature})")
    lines.append(f"best model file:  {summary['model_file']}")
    if summary.get("ui_url"):
        lines += [f"MLflow UI, the runs {unit}-1..{summary['rounds_planned']} (table, or the Chart view for loss and "
                  "accuracy):",
                  f"                  {summary['ui_url']}",
                  f"best run:         {summary['best_run_url']}",
                  f"registered model: {summary['model_url']} (alias {summary['alias']})"]
    return lines
