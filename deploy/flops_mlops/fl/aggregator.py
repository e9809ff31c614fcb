"""FL aggregator: runs the rounds, averages the learners' models, and is the only process that logs to MLflow.

Run as ``python -m flops_mlops.fl.aggregator``; settings come from FLOPS_TRACKING_URI, FLOPS_PROJECT,
FLOPS_ROUNDS, FLOPS_LEARNERS, FLOPS_SEED, FLOPS_AGGREGATOR_ADDRESS, FLOPS_BETTER, FLOPS_ALIAS,
FLOPS_MODEL_DIR and FLOPS_TIMEOUT (or the matching flags; see ``--help`` and ``flops_mlops.fl.settings``).
``FLOPS_TRACKING_URI=off`` keeps only the best model on disk (used by the benchmark).

It listens on FLOPS_AGGREGATOR_ADDRESS, waits for FLOPS_LEARNERS learners, runs FLOPS_ROUNDS rounds of
federated averaging, logs each round (``flops_mlops.fl.round_tracker``), then logs and registers the best model.
Progress goes to stdout as text: a line per round, then a summary with links (as `flops-mlops round` prints
it); with FLOPS_EVENTS=json as ``FLOPS_EVENT {json}`` lines instead, for the runner (``events``). Exit codes: 0 done,
1 a failed round, learner or tracking server, or the timeout, 2 bad settings. On a failure inside the Flower
server the process exits at once (the legacy server would otherwise hang).
"""

from __future__ import annotations

import logging
import os
import sys
import threading
import time
from typing import Any

import numpy as np

from . import data, faults, model
from .best_model import BestModel, RoundResult
from .events import Events
from .round_tracker import LocalOnly, RoundTracker, TrackingError
from .settings import FLSettings, SettingsError, from_environment, no_telemetry_defaults


def weighted_mean(values: list[tuple[int, float]]) -> float:
    total = sum(n for n, _ in values)
    return float(sum(n * v for n, v in values) / total) if total else float("nan")


class Rounds:
    """Flower-independent round bookkeeping shared by both Flower adapters."""

    def __init__(self, settings: FLSettings, tracker: LocalOnly, events: Events):
        self.settings = settings
        self.tracker = tracker
        self.events = events
        self.started: dict[int, float] = {}
        self.train_examples: dict[int, int] = {}
        self.params: dict[int, list[np.ndarray]] = {}

    def fit_config(self, server_round: int) -> dict[str, Any]:
        return {"server_round": server_round, "local_epochs": self.settings.local_epochs,
                "learning_rate": self.settings.learning_rate}

    def begin(self, server_round: int) -> None:
        self.started[server_round] = time.monotonic()
        self.tracker.round_started(server_round)

    def trained(self, server_round: int, results: list[tuple[int, list[np.ndarray]]]) -> list[np.ndarray]:
        """Federated averaging of (num_examples, arrays); returns the new global model."""
        if len(results) < self.settings.learners:
            raise RuntimeError(f"round {server_round}: only {len(results)} of {self.settings.learners} "
                               "learners returned a model")
        total = sum(n for n, _ in results)
        averaged = [sum(n * arrays[i] for n, arrays in results) / total for i in range(len(results[0][1]))]
        averaged = faults.corrupt(averaged, server_round)
        self.train_examples[server_round] = total
        self.params[server_round] = averaged
        return averaged

    def evaluated(self, server_round: int, results: list[tuple[int, float, float]]) -> dict[str, Any]:
        """(num_examples, loss, accuracy) per learner -> one logged round; returns the round's entry."""
        if len(results) < self.settings.learners:
            raise RuntimeError(f"round {server_round}: only {len(results)} of {self.settings.learners} "
                               "learners returned an evaluation")
        result = RoundResult(
            round=server_round,
            loss=weighted_mean([(n, loss) for n, loss, _ in results]),
            accuracy=weighted_mean([(n, acc) for n, _, acc in results]),
            train_examples=self.train_examples.get(server_round, 0),
            eval_examples=sum(n for n, _, _ in results),
            wall_time=time.monotonic() - self.started.get(server_round, time.monotonic()),
        )
        entry = self.tracker.round_finished(result, self.params.pop(server_round))
        self.events.emit("round", rounds=self.settings.rounds, **entry)
        return entry


def strategy_params(settings: FLSettings) -> dict[str, Any]:
    return {"strategy": "FedAvg", "rounds": settings.rounds, "min_learners": settings.learners,
            "fraction_fit": 1.0, "fraction_evaluate": 1.0, "local_epochs": settings.local_epochs,
            "learning_rate": settings.learning_rate, "seed": settings.seed, "better": settings.better,
            "model": "multinomial logistic regression"}


def make_tracker(settings: FLSettings) -> LocalOnly:
    best = BestModel(settings.model_dir, settings.better)
    if settings.tracking_uri == "off":
        return LocalOnly(best)
    return RoundTracker(settings.tracking_uri, settings.project, best, strategy_params(settings), settings.alias,
                        ui_url=settings.ui_url or settings.tracking_uri)


def quiet_network_defaults() -> None:
    """No telemetry or update checks, MLflow gives up within seconds instead of minutes, and it prints no
    "View run at" links of its own: they name the tracking URI, which in a container is an address only the
    aggregator resolves; the summary's links use FLOPS_UI_URL."""
    no_telemetry_defaults()
    for key, value in (("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "2"), ("MLFLOW_HTTP_REQUEST_TIMEOUT", "30"),
                       ("MLFLOW_SUPPRESS_PRINTING_URL_TO_STDOUT", "true"),
                       # No git in a container: MLflow then just records no git tags, without a warning each run.
                       ("GIT_PYTHON_REFRESH", "quiet")):
        os.environ.setdefault(key, value)


def finish(settings: FLSettings, tracker: LocalOnly, events: Events) -> dict[str, Any]:
    x_example, _ = data.held_out(settings.seed)
    summary = tracker.finish(x_example)
    summary.update(project=settings.project, rounds_planned=settings.rounds, learners=settings.learners,
                   better=settings.better, alias=settings.alias, model_dir=str(settings.model_dir),
                   model_file=str(tracker.best.arrays_file.absolute()), aggregator_address=settings.aggregator_address)
    events.emit("summary", **summary)
    return summary


def main(argv: list[str] | None = None) -> int:
    try:
        settings = from_environment(argv, "aggregator", "FL aggregator (the only process that logs to MLflow)")
    except SettingsError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    quiet_network_defaults()
    events = Events.for_stdout()
    if not events.machine:  # a person reads this: our lines, not MLflow's and Flower's progress logs (warnings stay)
        os.environ.setdefault("MLFLOW_LOGGING_LEVEL", "WARNING")
        tracking = settings.ui_url or settings.tracking_uri
        print(f"FL project {settings.project}: {settings.rounds} rounds, {settings.learners} learners, listening on "
              f"{settings.aggregator_address}, tracking at {tracking}", flush=True)
    tracker = make_tracker(settings)
    watchdog = threading.Timer(settings.timeout, lambda: events.fatal(
        f"the training did not finish within {settings.timeout:.0f} s (FLOPS_TIMEOUT)", tracker))
    watchdog.daemon = True
    watchdog.start()
    tracker.open(on_failure=events.fatal)  # in the background, while Flower starts and waits for the learners
    from . import legacy

    if not events.machine:
        logging.getLogger("flwr").setLevel(logging.WARNING)  # after its import, which sets DEBUG
    rounds = Rounds(settings, tracker, events)
    legacy.serve(settings, rounds, model.initial_parameters())
    try:
        finish(settings, tracker, events)
    except TrackingError as exc:
        events.fatal(str(exc), tracker)
    watchdog.cancel()
    return 0


if __name__ == "__main__":
    sys.exit(main())
