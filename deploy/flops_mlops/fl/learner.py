"""FL learner: trains the global model on its local share of the data; never talks to MLflow.

Run as ``python -m flops_mlops.fl.learner``; settings come from FLOPS_AGGREGATOR_ADDRESS, FLOPS_LEARNER_INDEX,
FLOPS_LEARNERS, FLOPS_SEED and FLOPS_TIMEOUT (or the matching flags, see ``--help`` and
``flops_mlops.fl.settings``). The learner waits until the aggregator accepts connections (retrying until the
timeout), takes part in every round, and exits 0 when the aggregator ends the training. It exits non-zero
on any error. This module must not import MLflow or the tracking policy (a test checks it).
"""

from __future__ import annotations

import socket
import sys
import time

import numpy as np

from . import data, faults, model
from .settings import FLSettings, SettingsError, from_environment, no_telemetry_defaults, parse_address


class LocalLearner:
    """Flower-independent learner logic: local training and evaluation on this learner's share."""

    def __init__(self, settings: FLSettings):
        self.index = settings.learner_index
        self.split = data.learner_split(settings.seed, settings.learners, settings.learner_index)
        self.rounds_trained = 0

    def fit(self, params: list[np.ndarray], config: dict) -> tuple[list[np.ndarray], int]:
        faults.crash_learner_if_asked(self.index, int(config.get("server_round", 0)))
        new = model.train(params, self.split.x_train, self.split.y_train, int(config["local_epochs"]),
                          float(config["learning_rate"]))
        self.rounds_trained += 1
        return new, len(self.split.y_train)

    def evaluate(self, params: list[np.ndarray]) -> tuple[float, int, float]:
        loss, accuracy = model.evaluate(params, self.split.x_eval, self.split.y_eval)
        return loss, len(self.split.y_eval), accuracy


def wait_for_aggregator(address: str, deadline: float) -> None:
    host, port = parse_address(address)
    while True:
        try:
            with socket.create_connection((host, port), timeout=2):
                return
        except OSError:
            if time.monotonic() > deadline:
                raise TimeoutError(f"aggregator at {address} did not accept connections in time") from None
            time.sleep(0.5)


def main(argv: list[str] | None = None) -> int:
    try:
        settings = from_environment(argv, "learner", "FL learner (never talks to MLflow)")
    except SettingsError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    no_telemetry_defaults()  # before Flower is imported
    from . import legacy

    deadline = time.monotonic() + settings.timeout
    learner = LocalLearner(settings)
    attempt = 0
    while True:
        attempt += 1
        try:
            wait_for_aggregator(settings.aggregator_address, deadline)
            legacy.join(settings.aggregator_address, learner)
            return 0
        except TimeoutError as exc:
            print(f"error: learner {settings.learner_index}: {exc}", file=sys.stderr)
            return 1
        except Exception as exc:  # the aggregator went away, or refused us before the first round
            if learner.rounds_trained or time.monotonic() > deadline:
                print(f"error: learner {settings.learner_index}: lost the aggregator: {exc}", file=sys.stderr)
                return 1
            print(f"learner {settings.learner_index}: connection attempt {attempt} failed ({exc}); retrying",
                  file=sys.stderr, flush=True)
            time.sleep(1)


if __name__ == "__main__":
    sys.exit(main())
