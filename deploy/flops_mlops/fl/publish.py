"""Publish the kept best model: what the aggregator's last step does, again, once the stores are back.

When a store dies during the final upload, the training is over but its champion is not registered; the best
model stays on disk (``best.npz`` and ``best.json`` in the project's model folder). ``flops-mlops round ...
--publish-kept`` runs this module in the project's environment, as the aggregator, with the aggregator's settings
and login: it loads the kept parameters into the repository's model, logs them with the flavour's MLflow module
into the best round's run (the newest run of the project tagged with that round), registers them under the
project's name and points the alias at the new version. It prints one JSON line: what it registered.

    python -m flops_mlops.fl.publish   (FLOPS_* settings and MLFLOW_TRACKING_* login, as for the aggregator)
"""

from __future__ import annotations

import json
import sys

from .aggregator import ModelLogging, quiet_network_defaults
from .best_model import BestModel
from .settings import FLSettings, SettingsError, from_environment


class PublishError(RuntimeError):
    """Nothing to publish, or the tracking server refused a step; the message says which."""


def best_round_run(project: str, best_round: int) -> str:
    """The run of ``best_round`` of the project's newest training."""
    import mlflow

    experiment = mlflow.get_experiment_by_name(project)
    if experiment is None:
        raise PublishError(f"the tracking server has no experiment {project!r}: no training of it was tracked")
    runs = mlflow.MlflowClient().search_runs(
        [experiment.experiment_id], max_results=1, order_by=["attributes.start_time DESC"],
        filter_string=f"tags.`flops.project` = '{project}' AND tags.`flops.round` = '{best_round}'")
    if not runs:
        raise PublishError(f"experiment {project!r} has no run of round {best_round}, the kept model's round")
    return runs[0].info.run_id


def publish(settings: FLSettings) -> dict:
    import mlflow

    best = BestModel(settings.model_dir, settings.better)
    kept = best.kept()
    if kept is None:
        raise PublishError(f"no kept model in {settings.model_dir} (best.npz and best.json): nothing to publish")
    mlflow.set_tracking_uri(settings.tracking_uri)
    model = ModelLogging.load(settings)
    run_id = best_round_run(settings.project, kept.round)
    with mlflow.start_run(run_id=run_id):
        info = model.log(best.load(), settings.project)
    version = str(info.registered_model_version)
    mlflow.MlflowClient().set_registered_model_alias(settings.project, settings.alias, version)
    return {"model_uri": f"models:/{settings.project}@{settings.alias}", "model_version": version,
            "best_round": kept.round, "run_id": run_id, "flavor": model.flavor,
            "logged_model_uri": info.model_uri}


def main(argv: list[str] | None = None) -> int:
    try:
        settings = from_environment(argv, "aggregator", "publish the kept best model of an FL project")
    except SettingsError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    quiet_network_defaults()
    try:
        print(json.dumps(publish(settings)), flush=True)
    except PublishError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
