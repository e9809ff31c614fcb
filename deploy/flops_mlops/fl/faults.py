"""Test-only fault injection, switched on by FLOPS_FAULT_* environment variables (never set them in production).

    FLOPS_FAULT_CORRUPT_ROUND=N         the aggregator replaces round N's aggregated model with noise, so that
                                        round is worse than the ones before (proves the best, not the last,
                                        model is registered)
    FLOPS_FAULT_CRASH_LEARNER=I:N       learner I's process dies (exit code 3) while training in round N
    FLOPS_FAULT_STRATEGY_ERROR_ROUND=N  the aggregation of round N raises (the aggregator must exit, not hang)
"""

from __future__ import annotations

import os
import sys

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


def crash_learner_if_asked(learner_index: int, server_round: int) -> None:
    value = os.environ.get("FLOPS_FAULT_CRASH_LEARNER")
    if not value:
        return
    index, _, at_round = value.partition(":")
    if int(index) == learner_index and int(at_round or 1) == server_round:
        print(f"FAULT INJECTION: learner {learner_index} crashes in round {server_round}", file=sys.stderr,
              flush=True)
        os._exit(3)
