"""Adapter to Flower's legacy server/client API (``start_server``/``start_client``), deprecated but fast.

One gRPC port, long-lived processes, about a second per round. Quirks handled here: a strategy error
would leave the server hanging in its gRPC threads, so any error inside the strategy ends the process
at once (``aggregator.Ending``: the best model so far is registered first); the learner side fails
immediately when the server is not up yet, which ``learner.main`` handles by waiting for the port and
retrying. A learner that fails leaves (its process exits); the rounds go on with the others while at
least FLOPS_MIN_LEARNERS remain.
"""

from __future__ import annotations

import functools
import logging
import warnings

import numpy as np

warnings.filterwarnings("ignore", category=DeprecationWarning)

from flwr.client import NumPyClient, start_client  # noqa: E402
from flwr.common import EvaluateIns, FitIns, ndarrays_to_parameters, parameters_to_ndarrays  # noqa: E402
from flwr.server import ServerConfig, start_server  # noqa: E402
from flwr.server.strategy import FedAvg  # noqa: E402

from .events import NotEnoughLearners  # noqa: E402
from .settings import FLSettings  # noqa: E402


class _NoDeprecationBanner(logging.Filter):
    """We use the legacy API knowingly (see above): Flower's banner about it says nothing to our users."""

    def filter(self, record: logging.LogRecord) -> bool:
        return not str(record.msg).startswith("DEPRECATED FEATURE")


logging.getLogger("flwr").addFilter(_NoDeprecationBanner())


def _exit_on_error(method):
    """Strategy errors end the training at once instead of hanging the legacy server (the best model so far is
    still registered: ``aggregator.Ending``)."""

    @functools.wraps(method)
    def wrapper(self, *args, **kwargs):
        try:
            return method(self, *args, **kwargs)
        except BaseException as exc:  # noqa: BLE001 - anything here would hang the server
            self.ending.give_up(str(exc) if isinstance(exc, NotEnoughLearners)
                                else f"{method.__name__}: {type(exc).__name__}: {exc}")

    return wrapper


class TrackedFedAvg(FedAvg):
    """FedAvg whose round boundaries and aggregates go through ``aggregator.Rounds``. Round 1 waits for every
    client (learner, or a hierarchical root's cluster aggregator); later rounds take the clients still connected,
    as long as a round's minimum remains (failures are accepted: a client that failed has left). A cluster
    aggregator's replies carry its name (metric ``cluster``), which ``Rounds`` uses for per-cluster aggregates."""

    def __init__(self, rounds, initial: list[np.ndarray] | None, ending, first_round: int = 1):
        settings = rounds.settings
        super().__init__(fraction_fit=1.0, fraction_evaluate=1.0, min_fit_clients=settings.required_members,
                         min_evaluate_clients=settings.required_members, min_available_clients=settings.members,
                         accept_failures=True,
                         initial_parameters=ndarrays_to_parameters(initial) if initial is not None else None)
        self.rounds = rounds
        self.ending = ending
        self.first_round = first_round

    def _learners(self, server_round: int, client_manager) -> list:
        settings = self.rounds.settings
        unit, clients, flag = settings.words
        needed, wait = ((settings.members, settings.timeout) if server_round == self.first_round else
                        (settings.required_members, settings.round_timeout))
        if not client_manager.wait_for(needed, timeout=int(wait)):
            raise NotEnoughLearners(f"{unit} {server_round}: only {client_manager.num_available()} of "
                                    f"{settings.members} {clients} are connected; a {unit} needs {needed} ({flag})")
        return list(client_manager.all().values())

    @_exit_on_error
    def configure_fit(self, server_round, parameters, client_manager):
        self.rounds.begin(server_round)
        instructions = FitIns(parameters, self.rounds.fit_config(server_round))
        return [(client, instructions) for client in self._learners(server_round, client_manager)]

    @_exit_on_error
    def configure_evaluate(self, server_round, parameters, client_manager):
        instructions = EvaluateIns(parameters, self.rounds.fit_config(server_round))
        return [(client, instructions) for client in client_manager.all().values()]

    @_exit_on_error
    def aggregate_fit(self, server_round, results, failures):
        arrays = self.rounds.trained(
            server_round, [(res.num_examples, parameters_to_ndarrays(res.parameters)) for _, res in results],
            [res.metrics.get("cluster") for _, res in results])
        return ndarrays_to_parameters(arrays), {}

    @_exit_on_error
    def aggregate_evaluate(self, server_round, results, failures):
        entry = self.rounds.evaluated(
            server_round, [(res.num_examples, res.loss, float(res.metrics.get("accuracy", 0.0)))
                           for _, res in results], [res.metrics.get("cluster") for _, res in results])
        return entry["loss"], {"accuracy": entry["accuracy"]}


# The server's own bound on a round, after the learners' (a learner gives up at round_timeout and leaves).
SERVER_ROUND_MARGIN = 10.0


def serve(settings: FLSettings, rounds, initial: list[np.ndarray], ending) -> None:
    """Run every round (a hierarchical root: every cycle); returns when the last one is done."""
    # A cycle is a cluster's rounds, the first one with its learners joining: bounded by the overall timeout.
    round_timeout = settings.timeout if settings.hierarchical else settings.round_timeout + SERVER_ROUND_MARGIN
    start_server(server_address=settings.aggregator_address,
                 config=ServerConfig(num_rounds=settings.server_rounds, round_timeout=round_timeout),
                 strategy=TrackedFedAvg(rounds, initial, ending))


class ClusterServer:
    """A cluster aggregator's side towards its learners: a Flower server that stays up across cycles and runs
    ``rounds`` rounds (``cluster.ClusterRounds``) each time the root asks, or one evaluation."""

    def __init__(self, settings: FLSettings, rounds, ending):
        from flwr.server import Server
        from flwr.server.client_manager import SimpleClientManager
        from flwr.server.superlink.fleet.grpc_bidi.grpc_server import start_grpc_server

        self.settings = settings
        self.strategy = TrackedFedAvg(rounds, None, ending)
        self.server = Server(client_manager=SimpleClientManager(), strategy=self.strategy)
        self.grpc = start_grpc_server(client_manager=self.server.client_manager(),
                                      server_address=settings.cluster_address)
        self.timeout = settings.round_timeout + SERVER_ROUND_MARGIN

    def train(self, params: list[np.ndarray], first: int) -> list[np.ndarray]:
        """Rounds ``first``.. ``first + rounds - 1`` (numbered across cycles) from ``params``; the average after
        the last."""
        self.server.parameters = ndarrays_to_parameters(params)
        for server_round in range(first, first + self.settings.rounds):
            aggregated, _, _ = self.server.fit_round(server_round, self.timeout)
            self.server.parameters = aggregated
        return parameters_to_ndarrays(self.server.parameters)

    def evaluate(self, params: list[np.ndarray], server_round: int) -> None:
        """Every learner evaluates ``params`` (the root's global model); the strategy's ``rounds`` keeps it."""
        self.server.parameters = ndarrays_to_parameters(params)
        self.server.evaluate_round(server_round, self.timeout)

    def stop(self) -> None:
        """The training is over: let the learners go, close the port."""
        self.server.disconnect_all_clients(timeout=self.timeout)
        self.grpc.stop(grace=1)


class _Client(NumPyClient):
    """A learner, or a cluster aggregator towards the root (its replies carry its name: ``metrics``)."""

    def __init__(self, learner):
        self.learner = learner
        self.metrics = dict(getattr(learner, "metrics", {}))

    def fit(self, parameters, config):
        arrays, n = self.learner.fit(parameters, config)
        return arrays, n, dict(self.metrics)

    def evaluate(self, parameters, config):
        loss, n, accuracy = self.learner.evaluate(parameters, int(config.get("server_round", 0)))
        return loss, n, {"accuracy": accuracy, **self.metrics}


def join(address: str, learner) -> None:
    """Take part in the training at ``address`` until the aggregator ends it."""
    start_client(server_address=address, client=_Client(learner).to_client(), insecure=True)
