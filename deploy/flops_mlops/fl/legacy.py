"""Adapter to Flower's legacy server/client API (``start_server``/``start_client``), deprecated but fast.

One gRPC port, long-lived processes, about a second per round. Quirks handled here: a strategy error
would leave the server hanging in its gRPC threads, so any error inside the strategy exits the process
at once (``Events.fatal``); the learner side fails immediately when the server is not up yet, which
``learner.main`` handles by waiting for the port and retrying.
"""

from __future__ import annotations

import functools
import logging
import warnings
from typing import Any

import numpy as np

warnings.filterwarnings("ignore", category=DeprecationWarning)

from flwr.client import NumPyClient, start_client  # noqa: E402
from flwr.common import ndarrays_to_parameters, parameters_to_ndarrays  # noqa: E402
from flwr.server import ServerConfig, start_server  # noqa: E402
from flwr.server.strategy import FedAvg  # noqa: E402

from .settings import FLSettings  # noqa: E402


class _NoDeprecationBanner(logging.Filter):
    """We use the legacy API knowingly (see above): Flower's banner about it says nothing to our users."""

    def filter(self, record: logging.LogRecord) -> bool:
        return not str(record.msg).startswith("DEPRECATED FEATURE")


logging.getLogger("flwr").addFilter(_NoDeprecationBanner())


def _exit_on_error(method):
    """Strategy errors end the aggregator at once instead of hanging the legacy server."""

    @functools.wraps(method)
    def wrapper(self, *args, **kwargs):
        try:
            return method(self, *args, **kwargs)
        except BaseException as exc:  # noqa: BLE001 - anything here would hang the server
            self.rounds.events.fatal(f"{method.__name__}: {type(exc).__name__}: {exc}", self.rounds.tracker)

    return wrapper


class TrackedFedAvg(FedAvg):
    """FedAvg whose round boundaries and aggregates go through ``aggregator.Rounds``."""

    def __init__(self, rounds, initial: list[np.ndarray]):
        k = rounds.settings.learners
        super().__init__(fraction_fit=1.0, fraction_evaluate=1.0, min_fit_clients=k, min_evaluate_clients=k,
                         min_available_clients=k, accept_failures=False,
                         initial_parameters=ndarrays_to_parameters(initial),
                         on_fit_config_fn=rounds.fit_config, on_evaluate_config_fn=rounds.fit_config)
        self.rounds = rounds

    @_exit_on_error
    def configure_fit(self, server_round, parameters, client_manager):
        self.rounds.begin(server_round)
        return super().configure_fit(server_round, parameters, client_manager)

    @_exit_on_error
    def aggregate_fit(self, server_round, results, failures):
        _refuse_failures(server_round, failures, "train")
        arrays = self.rounds.trained(
            server_round, [(res.num_examples, parameters_to_ndarrays(res.parameters)) for _, res in results])
        return ndarrays_to_parameters(arrays), {}

    @_exit_on_error
    def aggregate_evaluate(self, server_round, results, failures):
        _refuse_failures(server_round, failures, "evaluate")
        entry = self.rounds.evaluated(
            server_round, [(res.num_examples, res.loss, float(res.metrics.get("accuracy", 0.0)))
                           for _, res in results])
        return entry["loss"], {"accuracy": entry["accuracy"]}


def _refuse_failures(server_round: int, failures: list[Any], what: str) -> None:
    """A learner that fails a round fails the run (no silent training on fewer learners)."""
    if not failures:
        return
    first = failures[0]
    cause = f"{type(first).__name__}: {first}" if isinstance(first, BaseException) else "its connection was lost"
    raise RuntimeError(f"round {server_round}: {len(failures)} learner(s) failed to {what} ({cause})")


def serve(settings: FLSettings, rounds, initial: list[np.ndarray]) -> None:
    """Run every round; returns when the last round is done."""
    start_server(server_address=settings.aggregator_address,
                 config=ServerConfig(num_rounds=settings.rounds, round_timeout=settings.timeout),
                 strategy=TrackedFedAvg(rounds, initial))


class _Client(NumPyClient):
    def __init__(self, learner):
        self.learner = learner

    def fit(self, parameters, config):
        arrays, n = self.learner.fit(parameters, config)
        return arrays, n, {}

    def evaluate(self, parameters, config):
        loss, n, accuracy = self.learner.evaluate(parameters)
        return loss, n, {"accuracy": accuracy}


def join(address: str, learner) -> None:
    """Take part in the training at ``address`` until the aggregator ends it."""
    start_client(server_address=address, client=_Client(learner).to_client(), insecure=True)
