"""Test-only fault injection, switched on by FLOPS_FAULT_* environment variables (never set them in production).

    FLOPS_FAULT_CORRUPT_ROUND=N         the aggregator replaces round N's aggregated model with noise, so that
                                        round is worse than the ones before (proves the best, not the last,
                                        model is registered)
    FLOPS_FAULT_CRASH_LEARNER=I:N       learner I's process dies (exit code 3) while training in round N
    FLOPS_FAULT_STRATEGY_ERROR_ROUND=N  the aggregation of round N raises (the aggregator must exit, not hang)
    FLOPS_FAULT_CRASH_CLUSTER=K:C       cluster aggregator K's process dies (exit code 3) when the root asks it to
                                        train in cycle C (hierarchical mode)
    FLOPS_FAULT_HOLD_BEFORE_UPLOAD=DIR  before the final upload, the aggregator writes DIR/ready and waits (up to
                                        300 s) until DIR/go exists: a test stops a store in between
"""

from __future__ import annotations

import os
import sys
import time
from pathlib import Path

import numpy as np


def corrupt_round() -> int | None:
    value = os.environ.get("FLOPS_FAULT_CORRUPT_ROUND")
    return int(value) if value else None


def corrupt(params: list[np.ndarray], server_round: int) -> list[np.ndarray]:
    if os.environ.get("FLOPS_FAULT_STRATEGY_ERROR_ROUND") == str(server_round):
        raise RuntimeError(f"FAULT INJECTION: strategy error in round {server_round}")
    if corrupt_round() != server_round:
        return params
    print(f"FAULT INJECTION: corrupting the aggregated model of round {server_round}", file=sys.stderr, flush=True)
    rng = np.random.default_rng(server_round)
    return [rng.normal(0, 25, size=p.shape).astype(p.dtype) for p in params]


def _crash_if_asked(variable: str, what: str, index: int, when: str, at: int) -> None:
    """Exit with code 3 when ``variable`` is ``<index>:<at>`` (``at`` defaults to 1)."""
    value = os.environ.get(variable)
    if not value:
        return
    wanted, _, at_value = value.partition(":")
    if int(wanted) == index and int(at_value or 1) == at:
        print(f"FAULT INJECTION: {what} {index} crashes in {when} {at}", file=sys.stderr, flush=True)
        os._exit(3)


def crash_learner_if_asked(learner_index: int, server_round: int) -> None:
    _crash_if_asked("FLOPS_FAULT_CRASH_LEARNER", "learner", learner_index, "round", server_round)


def crash_cluster_if_asked(cluster_index: int, cycle: int) -> None:
    _crash_if_asked("FLOPS_FAULT_CRASH_CLUSTER", "cluster aggregator", cluster_index, "cycle", cycle)


def hold_before_upload_if_asked() -> None:
    folder = os.environ.get("FLOPS_FAULT_HOLD_BEFORE_UPLOAD")
    if not folder:
        return
    print("FAULT INJECTION: holding before the final upload", file=sys.stderr, flush=True)
    (Path(folder) / "ready").touch()
    deadline = time.monotonic() + 300
    while not (Path(folder) / "go").exists() and time.monotonic() < deadline:
        time.sleep(0.1)
