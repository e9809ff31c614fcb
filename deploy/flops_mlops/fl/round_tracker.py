"""The tracking policy: what the aggregator records in MLflow for an FL project, independent of Flower.

- Experiment = FL project (named after it); one MLflow run per training round, named ``round-<n>``; for a
  hierarchical root one per cycle, named ``cycle-<n>``, with per-cluster aggregates (``cluster-<k>/loss``,
  ``/accuracy``, ``/examples``, ``/eval_examples``) beside the global ones.
- Per round, in one ``log_batch`` call: the strategy parameters (params), the aggregated evaluation
  ``loss`` and ``accuracy``, ``train_examples`` and ``eval_examples`` (sums over learners), and
  ``round_time_s`` (wall time of the round), and one end-of-round sample of the aggregator process
  (``system/aggregator_cpu_percent``, ``system/aggregator_rss_megabytes``, ``system/aggregator_threads``);
  tags ``flops.project``, ``flops.round``, ``flops.code_version``, and a description (``mlflow.note.content``:
  round n of N, learners, strategy), which the UI shows on the run's page. MLflow's system metrics of the
  aggregator's host (``system/...``) are sampled while the round's run is open; the sampling interval
  adapts to the previous round's length (a quarter of it, between 0.2 s and 10 s; 0.5 s for the first),
  so that rounds of a few seconds still get several samples.
- The experiment carries ``mlflow.experimentKind = custom_model_development`` (``TRAINING_EXPERIMENT``), so that
  the MLflow UI opens it on its training runs rather than on its GenAI (traces) overview, and a shared runs
  view (``RUNS_VIEW``: rounds in order with loss and accuracy columns) that the printed link opens.
- Only the aggregator logs. Nothing that identifies a learner (address, node id, index, per-learner
  numbers) is logged: only aggregates.
- Exactly one best global model is kept on the aggregator's disk (best_model.py), written before the round
  is logged, so a tracking failure leaves it there.
- Logging happens on a background thread (``RoundTracker``): rounds do not wait for the server; everything
  is flushed before the model is logged, and the first failure fails the run.
- After the last round the best model is logged once, into the best round's run, with its flavour's MLflow
  module (``flavors``), the repository's requirements pinned to the installed versions, and a signature and input
  example when the repository gives one (``get_input_example``), through the tracking server (which proxies it to
  the FTP artifact store); it is registered under the project's name and the alias (default ``champion``) is
  pointed at the new version.
"""

from __future__ import annotations

import os
import subprocess
import time
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import asdict
from pathlib import Path
from typing import Any

import numpy as np

from ..tracking.experiments import TRAINING_EXPERIMENT
from . import faults
from .best_model import BETTER, BestModel, RoundResult
from .settings import validate_project


class TrackingError(RuntimeError):
    """Logging to the tracking server failed; the message names the server and the step."""


def code_version() -> str:
    """Package version, plus the git commit when running from a checkout; FLOPS_CODE_VERSION overrides."""
    if os.environ.get("FLOPS_CODE_VERSION"):
        return os.environ["FLOPS_CODE_VERSION"]
    from importlib.metadata import PackageNotFoundError, version

    try:
        text = version("flops-mlops")
    except PackageNotFoundError:
        text = "unknown"
    try:
        commit = subprocess.run(["git", "rev-parse", "--short=12", "HEAD"], cwd=Path(__file__).parent,
                                capture_output=True, text=True, timeout=5)
        if commit.returncode == 0 and commit.stdout.strip():
            text += f"+g{commit.stdout.strip()}"
    except (OSError, subprocess.SubprocessError):
        pass
    return text


def sampling_interval(previous_round_seconds: float | None) -> float:
    """System-metrics sampling interval for the next round: a quarter of the last round, 0.2-10 s."""
    if previous_round_seconds is None:
        return 0.5
    return float(min(10.0, max(0.2, previous_round_seconds / 4)))


class LocalOnly:
    """The policy without a tracking server: keeps the best model on disk and nothing else (benchmarks)."""

    def __init__(self, best: BestModel):
        self.best = best
        self.rounds: list[dict[str, Any]] = []

    def open(self, on_failure: Callable[[str], None] | None = None) -> None:
        self.best.reset()

    def round_started(self, server_round: int) -> None:
        pass

    def round_finished(self, result: RoundResult, params: list[np.ndarray],
                       clusters: dict[str, float] | None = None) -> dict[str, Any]:
        """``clusters``: a hierarchical root's per-cluster aggregates (``cluster-<i>/loss`` ...), logged too."""
        replaced = self.best.offer(result, params)
        entry = {**asdict(result), "best": replaced, "run_id": None, **({"clusters": clusters} if clusters else {})}
        self.rounds.append(entry)
        return entry

    def flush(self) -> None:
        pass

    def finish(self) -> dict[str, Any]:
        return {"best_round": self.best.result.round if self.best.result else None, "rounds": self.rounds}

    def fail(self) -> None:
        pass


class RoundTracker(LocalOnly):
    """The policy against a tracking server. Call open, then round_started/round_finished per round, finish.

    Tracking calls run on one background thread, in order, so that training never waits for the server:
    ``open`` returns at once (importing MLflow and opening the experiment overlap with Flower waiting for its
    learners), a round's run is started and, after the round, logged and ended while the next round trains.
    ``round_finished`` waits only for its run's id; ``flush`` (called by ``finish``) waits for everything and
    raises the first failure. A second thread gets model logging ready meanwhile (its imports, and MLflow's
    map of installed packages), so that the end costs little more than the upload.
    """

    def __init__(self, tracking_uri: str, project: str, best: BestModel, strategy_params: dict[str, Any],
                 alias: str = "champion", ui_url: str | None = None, model_logging=None):
        super().__init__(best)
        self.model_logging = model_logging  # aggregator.ModelLogging: the repository's model and its flavour
        self.tracking_uri = tracking_uri.rstrip("/")
        self.ui_url = (ui_url or tracking_uri).rstrip("/")  # what a browser opens, for the printed links
        self.project = validate_project(project)
        self.strategy_params = {key: str(value) for key, value in strategy_params.items()}
        self.alias = alias
        self.version = code_version()
        self.experiment_id: str | None = None
        self.run_ids: dict[int, str] = {}
        self._worker = ThreadPoolExecutor(max_workers=1, thread_name_prefix="tracking")
        self._pending: list[Future] = []
        self._open_round: tuple[int, Future] | None = None  # the round whose run is open, and its start
        self._model_logging_ready: Future | None = None
        self._previous_round_seconds: float | None = None
        self._round_started_at = 0.0
        self._last_round_logged = time.monotonic()

    def _step(self, what: str, call, *args, **kwargs):
        try:
            return call(*args, **kwargs)
        except Exception as exc:
            raise TrackingError(f"tracking server {self.tracking_uri}: {what} failed: "
                                f"{type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''}") from exc

    def _submit(self, call, *args) -> Future:
        """Queue a tracking call; a failure is raised by the next round_started/round_finished or flush."""
        future = self._worker.submit(call, *args)
        self._pending.append(future)
        return future

    def _raise_failures(self) -> None:
        for future in [f for f in self._pending if f.done()]:
            self._pending.remove(future)
            future.result()  # the TrackingError of a failed call

    def open(self, on_failure: Callable[[str], None] | None = None) -> None:
        """Start opening the experiment in the background; ``on_failure(message)`` hears at once if it fails."""
        super().open()
        opening = self._submit(self._open)
        if on_failure is not None:
            opening.add_done_callback(lambda f: f.exception() is not None and on_failure(str(f.exception())))
        if self.model_logging is not None:  # after the opening: two threads importing MLflow at once can fail
            self._model_logging_ready = ThreadPoolExecutor(max_workers=1, thread_name_prefix="model").submit(
                lambda: (opening.exception(), self.model_logging.prepare()))

    def _open(self) -> None:
        import mlflow

        mlflow.set_tracking_uri(self.tracking_uri)
        experiment = self._step(f"opening experiment {self.project!r}", mlflow.set_experiment, self.project)
        self.experiment_id = experiment.experiment_id
        for key, value in {"flops.project": self.project, **TRAINING_EXPERIMENT}.items():
            if experiment.tags.get(key) != value:  # `round` creates the experiment with these tags already
                self._step(f"tagging the experiment ({key})", mlflow.MlflowClient().set_experiment_tag,
                           self.experiment_id, key, value)

    @property
    def unit(self) -> str:
        """What a run stands for: a round, or (hierarchical root) a cycle; runs are named ``<unit>-<n>``."""
        return "cycle" if self.strategy_params.get("mode") == "hierarchical" else "round"

    def description(self, server_round: int) -> str:
        """The run's description (``mlflow.note.content``), shown on its page in the UI."""
        p = self.strategy_params
        if self.unit == "cycle":
            return (f"Cycle {server_round} of {p.get('cycles', '?')} of FL project {self.project} (hierarchical): "
                    f"{p.get('strategy', '?')} over {p.get('clusters', '?')} cluster aggregators, each of which runs "
                    f"{p.get('rounds', '?')} rounds with its {p.get('learners_per_cluster', '?')} learners (they "
                    f"train the {p.get('flavor', '?')} model {p.get('model', '?')} on their own data) and returns "
                    f"their average; a cycle needs {p.get('min_clusters', '?')} cluster aggregators. Metrics are "
                    "aggregates over the clusters (cluster-<i>/...: over that cluster's learners); the best cycle "
                    f"({BETTER.get(p.get('better', 'loss'), '?')}) holds the registered model.")
        return (f"Round {server_round} of {p.get('rounds', '?')} of FL project {self.project}: "
                f"{p.get('strategy', '?')} over {p.get('learners', '?')} learners (each trains the "
                f"{p.get('flavor', '?')} model {p.get('model', '?')} on its own data, then all evaluate the new "
                f"global model; a round needs {p.get('min_learners', '?')}). Metrics are aggregates over the "
                f"learners; the best round ({BETTER.get(p.get('better', 'loss'), '?')}) holds the registered "
                "model.")

    def round_started(self, server_round: int) -> None:
        self._raise_failures()
        self._round_started_at = time.monotonic()
        interval = sampling_interval(self._previous_round_seconds)
        self._open_round = (server_round, self._submit(self._start_run, server_round, interval))

    def _start_run(self, server_round: int, interval: float) -> str:
        import mlflow

        if self.experiment_id is None:
            raise TrackingError(f"tracking server {self.tracking_uri}: starting the run of round {server_round} "
                                "failed: the experiment is not open")
        mlflow.set_system_metrics_sampling_interval(interval)
        mlflow.set_system_metrics_samples_before_logging(1)
        tags = {"flops.project": self.project, "flops.round": str(server_round), "flops.code_version": self.version,
                "mlflow.note.content": self.description(server_round)}
        run = self._step(f"starting the run of round {server_round}", mlflow.start_run,
                         experiment_id=self.experiment_id, run_name=f"{self.unit}-{server_round}", tags=tags,
                         log_system_metrics=True)
        return run.info.run_id

    @property
    def run_id(self) -> str | None:
        """The run of the round in progress (waits until the server has created it), or None between rounds."""
        return self._open_round[1].result() if self._open_round else None

    def round_finished(self, result: RoundResult, params: list[np.ndarray],
                       clusters: dict[str, float] | None = None) -> dict[str, Any]:
        """Keep the model if best, queue the round's logging; the entry's ``run_id`` is filled in once logged
        (None until then: the round does not wait for the server)."""
        entry = super().round_finished(result, params, clusters)  # the best model reaches the disk first
        self._previous_round_seconds = time.monotonic() - self._round_started_at
        values = [("loss", result.loss), ("accuracy", result.accuracy), ("train_examples", result.train_examples),
                  ("eval_examples", result.eval_examples), ("round_time_s", result.wall_time),
                  *sorted((clusters or {}).items()), *self._process_sample()]
        started, self._open_round = self._open_round, None
        self._submit(self._log_round, entry, started[1], values, int(time.time() * 1000))
        self._raise_failures()
        self._last_round_logged = time.monotonic()
        return entry

    def _log_round(self, entry: dict[str, Any], started: Future, values: list[tuple[str, float]],
                   timestamp: int) -> None:
        import mlflow
        from mlflow.entities import Metric, Param

        server_round = entry["round"]
        run_id = started.result()  # queued before this call: done (or failed, which fails this round too)
        metrics = [Metric(key, float(value), timestamp, server_round) for key, value in values]
        params = [Param(key, value) for key, value in sorted(self.strategy_params.items())]
        self._step(f"logging round {server_round}", mlflow.MlflowClient().log_batch, run_id,
                   metrics=metrics, params=params)
        self._step(f"ending the run of round {server_round}", mlflow.end_run)
        self.run_ids[server_round] = entry["run_id"] = run_id

    def flush(self) -> None:
        """Wait until every queued tracking call is done; raise the first failure."""
        for future in list(self._pending):
            future.result()
        self._pending.clear()

    def _process_sample(self) -> list[tuple[str, float]]:
        """One end-of-round sample of the aggregator process itself, so even rounds shorter than the
        sampling interval carry system metrics (CPU is averaged since the previous sample)."""
        import psutil

        process = psutil.Process()
        return [("system/aggregator_cpu_percent", process.cpu_percent(interval=None)),
                ("system/aggregator_rss_megabytes", process.memory_info().rss / 2**20),
                ("system/aggregator_threads", process.num_threads())]

    def finish(self) -> dict[str, Any]:
        """Log the best model once (into the best round's run), register it, point the alias at it."""
        self.flush()
        self._worker.shutdown()
        if self._model_logging_ready is not None:
            try:
                self._model_logging_ready.result()
            except Exception:
                pass  # only a head start: logging the model below reports what is wrong
        import mlflow

        summary = super().finish()
        if self.best.result is None:
            raise TrackingError("no round produced a usable model; nothing to register")
        best_round = self.best.result.round
        faults.hold_before_upload_if_asked()
        started = time.monotonic()
        with self._step("reopening the best round's run", mlflow.start_run, run_id=self.run_ids[best_round]):
            info = self._step("logging the best model", self.model_logging.log, self.best.load(), self.project)
        version = str(info.registered_model_version)
        self._step(f"setting alias {self.alias!r}", mlflow.MlflowClient().set_registered_model_alias,
                   self.project, self.alias, version)
        summary.update({
            "experiment_id": self.experiment_id,
            "run_ids": [self.run_ids[r] for r in sorted(self.run_ids)],
            "best_round": best_round,
            "better": self.best.criterion,
            "model_uri": f"models:/{self.project}@{self.alias}",
            "model_version": version,
            "logged_model_uri": info.model_uri,
            "flavor": self.model_logging.flavor,
            "signature": info.signature is not None,
            "model_bytes": _model_bytes(info),
            "register_seconds": time.monotonic() - started,
            "last_round_to_registered_s": time.monotonic() - self._last_round_logged,
            **self.links(self.run_ids[best_round], version),
        })
        return summary

    def links(self, best_run_id: str, version: str) -> dict[str, str]:
        """What a browser opens: the runs view of the experiment, the best round's run, the registered model."""
        runs = f"{self.ui_url}/#/experiments/{self.experiment_id}/runs"  # the rounds view: tracking/ui.py
        return {"ui_url": runs, "best_run_url": f"{runs}/{best_run_id}",
                "model_url": f"{self.ui_url}/#/models/{self.project}/versions/{version}"}

    def fail(self) -> None:
        """Mark an open round's run as FAILED (best effort: the server may be the thing that failed)."""
        import mlflow

        if self._open_round is None:
            return
        try:
            run_id = self._open_round[1].result(timeout=10)
            # By run id, not mlflow.end_run(): the active run is thread-local (the tracking thread's), and the
            # timeout watchdog calls this from its own thread.
            mlflow.MlflowClient(self.tracking_uri).set_terminated(run_id, status="FAILED")
        except Exception:
            pass
        self._open_round = None


def _model_bytes(info) -> int | None:
    """The logged model's size as MLflow measured it when saving (its MLmodel's model_size_bytes)."""
    from mlflow.models import Model

    try:
        size = Model.load(info.model_uri).model_size_bytes
    except Exception:  # noqa: BLE001 - only a figure for the summary
        return None
    return int(size) if size is not None else None
