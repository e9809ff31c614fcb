"""FL learner: trains the global model on its own data with the ML repository's ModelManager; never talks to MLflow.

Run as ``python -m flops_mlops.fl.learner``; settings come from FLOPS_AGGREGATOR_ADDRESS, FLOPS_LEARNER_INDEX,
FLOPS_LEARNERS, FLOPS_SEED, FLOPS_DATA_DIR, FLOPS_ML_REPO, FLOPS_TIMEOUT and FLOPS_ROUND_TIMEOUT (or the matching
flags, see ``--help`` and ``flops_mlops.fl.settings``); the repository reads FLOPS_LEARNER_INDEX, FLOPS_LEARNERS,
FLOPS_SEED and FLOPS_DATA_DIR from the environment to find its own share of the data.

The learner builds the repository's ModelManager and loads its data (``set_model_data``), waits until the
aggregator accepts connections (retrying until the timeout), takes part in every round, and exits 0 when the
aggregator ends the training. When the repository raises, breaks the contract (``contract.ManagedModel``), or a
fit or evaluation runs past FLOPS_ROUND_TIMEOUT, the learner says so on stderr in one line (``error: learner <i>:
round <n>: ...``, with the exception's last line) and leaves: exit 1 (2 for a contract violation). This module must
not import MLflow or the tracking policy (a test checks it).
"""

from __future__ import annotations

import os
import socket
import sys
import threading
import time
from pathlib import Path

import numpy as np

from . import faults
from .contract import ContractError, ManagedModel, failure
from .ml_repo import import_model_manager, repository_folder
from .settings import FLSettings, SettingsError, environment, from_environment, no_telemetry_defaults, parse_address


def leave(message: str, code: int = 1) -> None:
    print(f"error: {message}", file=sys.stderr, flush=True)
    sys.stdout.flush()
    os._exit(code)


class LocalLearner:
    """Flower-independent learner logic: the repository's model, trained and evaluated on this learner's data."""

    def __init__(self, settings: FLSettings, folder: Path):
        self.index = settings.learner_index
        self.round_timeout = settings.round_timeout
        self.folder = folder.resolve()
        self.rounds_trained = 0
        self.model = ManagedModel(self._guarded(0, "ModelManager()", lambda: import_model_manager(
            self.folder).ModelManager()))
        self._guarded(0, "set_model_data", self.model.load_data)

    def _guarded(self, server_round: int, what: str, call):
        """``call()``, or leave with one line saying what failed: the exception's last line, or the timeout."""
        where = f"learner {self.index}: " + (f"round {server_round}: " if server_round else "")
        timer = threading.Timer(self.round_timeout, leave, [
            f"{where}{what} did not return within {self.round_timeout:g} s (--round-timeout); leaving"])
        timer.daemon = True
        timer.start()
        try:
            return call()
        except ContractError as exc:
            leave(f"{where}contract violation: {exc}", 2)
        except Exception as exc:  # noqa: BLE001 - whatever the repository raises ends this learner, not the round
            leave(f"{where}{what} raised {failure(exc, self.folder)}")
        finally:
            timer.cancel()

    def fit(self, params: list[np.ndarray], config: dict) -> tuple[list[np.ndarray], int]:
        server_round = int(config.get("server_round", 0))
        faults.crash_learner_if_asked(self.index, server_round)

        def train():
            self.model.set_parameters(params)
            n = self.model.fit()
            return self.model.parameters(), n

        arrays, n = self._guarded(server_round, "fit_model", train)
        self.rounds_trained += 1
        return arrays, n

    def evaluate(self, params: list[np.ndarray], server_round: int = 0) -> tuple[float, int, float]:
        def evaluate():
            self.model.set_parameters(params)
            return self.model.evaluate()

        loss, accuracy, n = self._guarded(server_round, "evaluate_model", evaluate)
        return loss, n, accuracy


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
    os.environ.update(environment(settings, "learner"))  # what the repository reads: its index, the data folder
    from . import legacy

    deadline = time.monotonic() + settings.timeout
    learner = LocalLearner(settings, repository_folder(settings.ml_repo))
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
