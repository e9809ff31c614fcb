"""What every FL project's MLflow experiment carries, whoever creates it (`round`, `user grant --create`, the
aggregator): tags that open the MLflow UI on its training runs, in a shared runs view with loss and accuracy."""

from __future__ import annotations

import json

# The runs view the printed link opens (an experiment tag the UI reads as a shared view, `?viewStateShareKey=`,
# and that a browser takes as its own view on a first visit: ui.py): the rounds in order, with their loss,
# accuracy and the registered model version as columns (by default the table shows neither metric).
RUNS_VIEW = "flops-rounds"
RUNS_VIEW_STATE = {"selectedColumns": ["metrics.`loss`", "metrics.`accuracy`", "attributes.`Models`"],
                   "orderByKey": "attributes.start_time", "orderByAsc": True}
# Experiment tags of every FL project: the UI opens an experiment of this kind on its training runs, and knows
# the runs view above.
TRAINING_EXPERIMENT = {"mlflow.experimentKind": "custom_model_development",
                       f"mlflow.sharedViewState.{RUNS_VIEW}": json.dumps(RUNS_VIEW_STATE)}
