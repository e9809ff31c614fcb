"""FL aggregator: runs the rounds, averages the learners' models, and is the only process that logs to MLflow.

Run as ``python -m flops_mlops.fl.aggregator``; settings come from FLOPS_* variables or the matching flags (see
``--help`` and ``flops_mlops.fl.settings``). ``FLOPS_TRACKING_URI=off`` keeps only the best model on disk (used by
the benchmark).

It loads the ML repository (FLOPS_ML_REPO) and checks it against the contract without data (``contract``: exit 2
on a violation); builds its ModelManager, which gives the initial parameters and, after the last round, the model
to log; it never calls ``set_model_data`` (the aggregator has no data). It listens on FLOPS_AGGREGATOR_ADDRESS,
waits for FLOPS_LEARNERS learners, runs FLOPS_ROUNDS rounds of federated averaging, logs each round
(``round_tracker``), then logs the best model with its flavour's MLflow module and registers it. When learners fail,
a round goes on with those left while at least FLOPS_MIN_LEARNERS (default all) remain; when it cannot, the best
model so far is still registered, then the aggregator exits 1. Progress goes to stdout as text: a line per
round, notices, then a summary with links (as `flops-mlops round` prints it); with FLOPS_EVENTS=json as
``FLOPS_EVENT {json}`` lines instead, for the runner (``events``). Exit codes: 0 done, 1 a failed round, learner
or tracking server, or the timeout, 2 bad settings or a repository that breaks the contract. On a failure inside
the Flower server the process exits at once (the legacy server would otherwise hang). An https tracking server is
verified against MLFLOW_TRACKING_SERVER_CERT_PATH, or (Oakestra, which passes no files) against the CA certificate
in FLOPS_TRACKING_CA_B64, written to a private file first (configuration/pem_env.py).
"""

from __future__ import annotations

import logging
import os
import re
import sys
import threading
import time
from dataclasses import dataclass
from typing import Any

import numpy as np

from ..configuration import pem_env
from . import faults, flavors
from .best_model import BestModel, RoundResult
from .contract import ManagedModel, check_repository
from .events import Events, NotEnoughLearners
from .ml_repo import content_hash, import_model_manager, read_dependencies, repository_folder
from .round_tracker import LocalOnly, RoundTracker, TrackingError
from .settings import FLSettings, SettingsError, from_environment, no_telemetry_defaults


def average(results: list[tuple[int, list[np.ndarray]]]) -> list[np.ndarray]:
    """Federated averaging weighted by examples; each average keeps its array's dtype and shape (an int64
    counter stays int64, a float32 weight float32)."""
    total = sum(n for n, _ in results)
    first = results[0][1]
    return [np.asarray(sum(n * arrays[i] for n, arrays in results) / total).astype(first[i].dtype, copy=False)
            .reshape(first[i].shape) for i in range(len(first))]


def weighted_mean(values: list[tuple[int, float]]) -> float:
    total = sum(n for n, _ in values)
    return float(sum(n * v for n, v in values) / total) if total else float("nan")


class Rounds:
    """Flower-independent round bookkeeping shared by both Flower adapters (and the cluster aggregator's).

    Its clients are learners, or, for a hierarchical root, cluster aggregators (``settings.members``); a
    hierarchical root's rounds are cycles. Results may name their client (a cluster aggregator's name,
    ``cluster-<i>``): the root then logs per-cluster aggregates and names a cluster that returned nothing.
    """

    def __init__(self, settings: FLSettings, tracker: LocalOnly, events: Events):
        self.settings = settings
        self.tracker = tracker
        self.events = events
        self.started: dict[int, float] = {}
        self.train_examples: dict[int, int] = {}
        self.params: dict[int, list[np.ndarray]] = {}
        self.cluster_examples: dict[int, dict[str, int]] = {}
        self.received_bytes: dict[int, int] = {}
        self.active = settings.members  # clients still taking part
        self.present: set[str] = set()  # named clients (cluster aggregators) that took part so far

    def fit_config(self, server_round: int) -> dict[str, Any]:
        return {"server_round": server_round}

    def enough(self, server_round: int, got: int, what: str, names: list[str] | None = None) -> None:
        """Raise NotEnoughLearners if ``got`` clients are fewer than a round needs; say so (naming the missing
        ones when clients have names) when some failed."""
        needed = self.settings.required_members
        unit, clients, flag = self.settings.words
        missing = sorted(self.present - set(names or []))
        named = f" ({', '.join(missing)})" if missing else ""
        if got < needed:
            raise NotEnoughLearners(f"{unit} {server_round}: only {got} of {self.settings.members} {clients} "
                                    f"returned {what}{named}; a {unit} needs {needed} ({flag})")
        if got < self.active:
            self.events.emit("notice", message=f"{unit} {server_round}: {self.active - got} "
                                               f"{clients.removesuffix('s')}(s) failed to "
                                               f"return {what}{named}; going on with {got} (a {unit} needs "
                                               f"{needed})")
            self.active = got
        self.present = set(names or []) or self.present

    def begin(self, server_round: int) -> None:
        self.started[server_round] = time.monotonic()
        self.tracker.round_started(server_round)

    def trained(self, server_round: int, results: list[tuple[int, list[np.ndarray]]],
                names: list[str] | None = None) -> list[np.ndarray]:
        """Federated averaging of (num_examples, arrays); returns the new global model."""
        names = _cluster_names(names)
        self.enough(server_round, len(results), "a model", names)
        averaged = faults.corrupt(average(results), server_round)
        self.train_examples[server_round] = sum(n for n, _ in results)
        # the models' bytes that reached this aggregator in the round (parameter arrays of the fit replies)
        self.received_bytes[server_round] = sum(a.nbytes for _, arrays in results for a in arrays)
        if names:
            self.cluster_examples[server_round] = {name: n for name, (n, _) in zip(names, results)}
        self.params[server_round] = averaged
        return averaged

    def evaluated(self, server_round: int, results: list[tuple[int, float, float]],
                  names: list[str] | None = None) -> dict[str, Any]:
        """(num_examples, loss, accuracy) per client -> one logged round; returns the round's entry."""
        names = _cluster_names(names)
        self.enough(server_round, len(results), "an evaluation", names)
        result = RoundResult(
            round=server_round,
            loss=weighted_mean([(n, loss) for n, loss, _ in results]),
            accuracy=weighted_mean([(n, acc) for n, _, acc in results]),
            train_examples=self.train_examples.get(server_round, 0),
            eval_examples=sum(n for n, _, _ in results),
            wall_time=time.monotonic() - self.started.get(server_round, time.monotonic()),
        )
        clusters = self.cluster_metrics(server_round, results, names)
        entry = self.tracker.round_finished(result, self.params.pop(server_round), clusters)
        unit = self.settings.words[0]
        self.events.emit("round", rounds=self.settings.server_rounds, unit=unit,
                         received_bytes=self.received_bytes.pop(server_round, 0), **entry)
        return entry

    def cluster_metrics(self, server_round: int, results: list[tuple[int, float, float]],
                        names: list[str] | None) -> dict[str, float]:
        """A hierarchical root's per-cluster aggregates: ``cluster-<i>/loss``, ``/accuracy``, ``/examples`` (the
        cluster's training examples, its weight in the average) and ``/eval_examples``; nothing per learner."""
        if not names:
            return {}
        trained = self.cluster_examples.pop(server_round, {})
        metrics: dict[str, float] = {}
        for name, (n, loss, accuracy) in sorted(zip(names, results)):
            metrics.update({f"{name}/loss": loss, f"{name}/accuracy": accuracy,
                            f"{name}/examples": trained.get(name, 0), f"{name}/eval_examples": n})
        return metrics


CLUSTER_NAME = re.compile(r"^cluster-[0-9]{1,4}$")


def _cluster_names(names: list[str | None] | None) -> list[str] | None:
    """The clients' names when every one is a cluster aggregator's (``cluster-<i>``), else None (learners have
    none; a name becomes a metric key, so nothing else is taken)."""
    if not names or not all(isinstance(name, str) and CLUSTER_NAME.fullmatch(name) for name in names):
        return None
    return list(names)


def strategy_params(settings: FLSettings, model: ModelLogging) -> dict[str, Any]:
    return {"strategy": "FedAvg", "rounds": settings.rounds, "learners": settings.learners,
            "min_learners": settings.required_learners, "fraction_fit": 1.0, "fraction_evaluate": 1.0,
            "seed": settings.seed, "better": settings.better, "flavor": model.flavor, "model": model.type_name,
            "ml_repo_tag": model.metadata["flops.ml_repo_tag"],
            **({"mode": "hierarchical", "clusters": settings.clusters, "min_clusters": settings.required_members,
                "cycles": settings.cycles, "learners": settings.clusters * settings.learners,
                "learners_per_cluster": settings.learners} if settings.hierarchical else {})}


@dataclass
class ModelLogging:
    """The repository's model as the tracking policy logs it: its flavour, requirements and input example."""

    model: ManagedModel
    flavor: str
    requirements: list[str]
    metadata: dict[str, str]
    type_name: str

    @classmethod
    def load(cls, settings: FLSettings) -> ModelLogging:
        folder = repository_folder(settings.ml_repo)
        model = ManagedModel(import_model_manager(folder).ModelManager())  # never set_model_data: no data here
        flavor = settings.flavor or flavors.infer(model.model())
        return cls(model, flavor, flavors.requirements(flavor, read_dependencies(folder).requirements),
                   {"flops.flavor": flavor, "flops.ml_repo_tag": settings.ml_repo_tag or
                    "c" + content_hash(folder)[:12]}, flavors.type_name(model.model()))

    @property
    def has_example(self) -> bool:
        return hasattr(self.model.manager, "get_input_example")

    def prepare(self) -> None:
        flavors.prepare(self.flavor)

    def log(self, params: list[np.ndarray], registered_name: str):
        """Log the model holding ``params`` into the active run and register it; returns MLflow's ModelInfo."""
        self.model.set_parameters(params)
        return flavors.log_model(self.flavor, self.model.model(), self.model.input_example(), self.requirements,
                                 registered_name, self.metadata)


def make_tracker(settings: FLSettings, model: ModelLogging) -> LocalOnly:
    best = BestModel(settings.model_dir, settings.better)
    if settings.tracking_uri == "off":
        return LocalOnly(best)
    return RoundTracker(settings.tracking_uri, settings.project, best, strategy_params(settings, model),
                        settings.alias, ui_url=settings.ui_url or settings.tracking_uri, model_logging=model)


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
    summary = tracker.finish()
    summary.update(project=settings.project, rounds_planned=settings.server_rounds, unit=settings.words[0],
                   mode=settings.mode, clusters=settings.clusters if settings.hierarchical else None,
                   cycles=settings.cycles if settings.hierarchical else None, learners=settings.learners,
                   better=settings.better, alias=settings.alias, model_dir=str(settings.model_dir),
                   model_file=str(tracker.best.arrays_file.absolute()), aggregator_address=settings.aggregator_address)
    events.emit("summary", **summary)
    return summary


class Ending:
    """How the aggregator ends when it cannot go on: the open round's run is marked failed, the best model so far
    is registered (once, whichever thread gets here first), then exit 1."""

    def __init__(self, settings: FLSettings, tracker: LocalOnly, events: Events):
        self.settings, self.tracker, self.events = settings, tracker, events
        self.lock = threading.Lock()

    def give_up(self, message: str) -> None:
        if not self.lock.acquire(blocking=False):
            return  # the other thread is ending it already
        self.tracker.fail()
        if self.tracker.best.result is not None:
            try:
                finish(self.settings, self.tracker, self.events)
            except Exception as exc:  # noqa: BLE001 - the first failure is the one reported
                message += f"; registering the best model so far failed too: {exc}"
        self.events.fatal(message)


def main(argv: list[str] | None = None) -> int:
    try:
        pem_env.export_tracking_ca()  # Oakestra with tracking.tls: FLOPS_TRACKING_CA_B64 as MLflow's CA file
        settings = from_environment(argv, "aggregator", "FL aggregator (the only process that logs to MLflow)")
    except (SettingsError, pem_env.PemError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    quiet_network_defaults()
    violations, _ = check_repository(repository_folder(settings.ml_repo), settings.flavor or None, learner=False)
    if violations:
        for violation in violations:
            print(f"error: contract violation: {violation}", file=sys.stderr)
        return 2
    events = Events.for_stdout()
    if not events.machine:  # a person reads this: our lines, not MLflow's and Flower's progress logs (warnings stay)
        os.environ.setdefault("MLFLOW_LOGGING_LEVEL", "WARNING")
        tracking = settings.ui_url or settings.tracking_uri
        shape = (f"{settings.cycles} cycles over {settings.clusters} cluster aggregators ({settings.rounds} rounds "
                 f"with {settings.learners} learners each)" if settings.hierarchical else
                 f"{settings.rounds} rounds, {settings.learners} learners")
        print(f"FL project {settings.project}: {shape}, listening on {settings.aggregator_address}, tracking at "
              f"{tracking}", flush=True)
    model = ModelLogging.load(settings)
    if not model.has_example:
        events.emit("notice", message=f"{model.type_name} has no get_input_example(): the model will be logged "
                                      "without a signature or input example")
    tracker = make_tracker(settings, model)
    ending = Ending(settings, tracker, events)
    watchdog = threading.Timer(settings.timeout, ending.give_up,
                               [f"the training did not finish within {settings.timeout:.0f} s (FLOPS_TIMEOUT)"])
    watchdog.daemon = True
    watchdog.start()
    tracker.open(on_failure=events.fatal)  # in the background, while Flower starts and waits for the learners
    from . import legacy

    if not events.machine:
        logging.getLogger("flwr").setLevel(logging.WARNING)  # after its import, which sets DEBUG
    rounds = Rounds(settings, tracker, events)
    legacy.serve(settings, rounds, model.model.parameters(), ending)
    try:
        finish(settings, tracker, events)
    except TrackingError as exc:
        events.fatal(str(exc), tracker)
    watchdog.cancel()
    return 0


def leave(code: int) -> None:
    """Exit with ``code`` once everything is written, without the interpreter's finalization: threads a framework
    left behind (torch.export's, after a PyTorch model was logged) can abort it ("terminate called without an
    active exception", SIGABRT) after the model was registered."""
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(code)


if __name__ == "__main__":
    leave(main())
