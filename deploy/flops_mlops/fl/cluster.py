"""FL cluster aggregator (hierarchical mode): a Flower client of the root aggregator and a Flower server of its own
learners; never talks to MLflow.

Run as ``python -m flops_mlops.fl.cluster``; settings come from FLOPS_CLUSTER_INDEX, FLOPS_CLUSTER_ADDRESS (where
its learners join: their FLOPS_AGGREGATOR_ADDRESS), FLOPS_AGGREGATOR_ADDRESS (the root's), FLOPS_LEARNERS (its
own learners), FLOPS_MIN_LEARNERS, FLOPS_ROUNDS, FLOPS_TIMEOUT and FLOPS_ROUND_TIMEOUT (or the matching flags, see
``--help`` and ``flops_mlops.fl.settings``).

It opens its learners' port, then joins the root (retrying until the root is up). Each time the root asks it to
train (a cycle), it runs FLOPS_ROUNDS rounds of federated averaging with its learners, starting from the root's
global model, and returns their average with the number of examples it was trained on; each time the root asks
it to evaluate, its learners evaluate the root's model and it returns their weighted mean loss and accuracy.
Its replies carry its name, ``cluster-<index>``, for the root's per-cluster aggregates. Rounds are numbered across
cycles (cycle c, round r is round (c-1)*ROUNDS + r for the learners). It needs no ML repository: it only averages
arrays. A learner that fails is handled by the cluster's minimum (FLOPS_MIN_LEARNERS, default all), as a classic
aggregator does; below it the cluster aggregator says why in one line (``error: cluster-<i>: ...``) and exits 1,
and the root goes on without it while its own minimum (FLOPS_MIN_CLUSTERS) remains. When the root ends the
training, it lets its learners go and exits 0. This module must not import MLflow or the tracking policy.
"""

from __future__ import annotations

import os
import sys
import threading
import time
from typing import Any

import numpy as np

from . import faults
from .aggregator import Rounds, average
from .events import Events
from .learner import take_part
from .settings import FLSettings, SettingsError, from_environment, no_telemetry_defaults


class ClusterRounds(Rounds):
    """A cluster's rounds: its learners' average and evaluation, kept only until the root has them."""

    def __init__(self, settings: FLSettings, events: Events):
        super().__init__(settings, tracker=None, events=events)
        self.evaluation: dict[str, Any] = {}

    def begin(self, server_round: int) -> None:
        self.started[server_round] = time.monotonic()

    def trained(self, server_round: int, results: list[tuple[int, list[np.ndarray]]],
                names: list[str] | None = None) -> list[np.ndarray]:
        self.enough(server_round, len(results), "a model")
        self.train_examples[server_round] = sum(n for n, _ in results)
        return average(results)

    def evaluated(self, server_round: int, results: list[tuple[int, float, float]],
                  names: list[str] | None = None) -> dict[str, Any]:
        from .aggregator import weighted_mean

        self.enough(server_round, len(results), "an evaluation")
        self.evaluation = {"loss": weighted_mean([(n, loss) for n, loss, _ in results]),
                           "accuracy": weighted_mean([(n, acc) for n, _, acc in results]),
                           "eval_examples": sum(n for n, _, _ in results)}
        return self.evaluation


class Ending:
    """A cluster that cannot go on (too few learners, a strategy error, the timeout) says why and leaves: the root
    sees it gone and decides whether the cycles go on."""

    def __init__(self, name: str):
        self.name = name

    def give_up(self, message: str) -> None:
        print(f"error: {self.name}: {message}", file=sys.stderr, flush=True)
        sys.stdout.flush()
        os._exit(1)


class ClusterAggregator:
    """What the root's fit and evaluate do in this cluster (``legacy._Client`` calls them)."""

    def __init__(self, settings: FLSettings, server, rounds: ClusterRounds):
        self.settings, self.server, self.rounds = settings, server, rounds
        self.name = f"cluster-{settings.cluster_index}"
        self.metrics = {"cluster": self.name}
        self.cycles_trained = 0

    def fit(self, params: list[np.ndarray], config: dict) -> tuple[list[np.ndarray], int]:
        cycle = int(config.get("server_round", 1))
        faults.crash_cluster_if_asked(self.settings.cluster_index, cycle)
        first = (cycle - 1) * self.settings.rounds + 1
        arrays = self.server.train(params, first)
        self.cycles_trained += 1
        print(f"{self.name}: cycle {cycle}: {self.settings.rounds} rounds with {self.rounds.active} learners",
              flush=True)
        return arrays, self.rounds.train_examples[first + self.settings.rounds - 1]

    def evaluate(self, params: list[np.ndarray], cycle: int) -> tuple[float, int, float]:
        self.server.evaluate(params, cycle * self.settings.rounds)
        result = self.rounds.evaluation
        print(f"{self.name}: cycle {cycle}: loss {result['loss']:.4f}  accuracy {result['accuracy']:.4f}",
              flush=True)
        return result["loss"], result["eval_examples"], result["accuracy"]


def main(argv: list[str] | None = None) -> int:
    try:
        settings = from_environment(argv, "cluster", "FL cluster aggregator (hierarchical mode; never talks to "
                                                     "MLflow)")
    except SettingsError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    no_telemetry_defaults()  # before Flower is imported
    from . import legacy

    deadline = time.monotonic() + settings.timeout
    name = f"cluster-{settings.cluster_index}"
    ending = Ending(name)
    watchdog = threading.Timer(settings.timeout, ending.give_up,
                               [f"the training did not finish within {settings.timeout:.0f} s (FLOPS_TIMEOUT)"])
    watchdog.daemon = True
    watchdog.start()
    rounds = ClusterRounds(settings, Events(machine=False))
    server = legacy.ClusterServer(settings, rounds, ending)
    print(f"{name}: listening on {settings.cluster_address} for {settings.learners} learners; joining the root "
          f"aggregator at {settings.aggregator_address}", flush=True)
    cluster = ClusterAggregator(settings, server, rounds)
    code = take_part(settings.aggregator_address, name, cluster, lambda: cluster.cycles_trained > 0, deadline)
    server.stop()
    watchdog.cancel()
    return code


if __name__ == "__main__":
    code = main()
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(code)  # Flower's gRPC threads must not keep a finished cluster aggregator alive
