"""What the MLflow UI shows on a user's first visit: model training, not GenAI; the rounds, not an assistant.

MLflow 3.17's UI keeps its choices in the browser (localStorage, ``<key>_v<version>`` holding JSON) and, in a
fresh profile, opens in GenAI mode (a sidebar of traces, judges, prompts, AI gateway), opens its assistant panel
over the page when served from localhost, and shows an experiment's runs without metric columns. The tracking
server adds a small script to the UI's index page that sets MLflow's own keys before the UI starts, only where
the browser has none (a user's later choice stays):

- ``mlflow.workflowType_v1`` = ``"machine_learning"``: the sidebar's "Model training" mode;
- ``mlflow.assistant.fab.autoOpenedOnFirstLoad_v1`` = ``true``: the assistant is not opened by itself (its button
  stays);
- an FL project's runs view (``MLflowLocalStorage-1.1-ExperimentPage-["<id>"]-ReactComponentState``): opened on
  ``#/experiments/<id>``, the experiment's ``mlflow.sharedViewState.flops-rounds`` tag (experiments.py: rounds
  in order, loss and accuracy columns) becomes the browser's own view, so the link `round` prints needs no shared
  view and shows no "shared view" banner.
The keys were read from MLflow 3.17.2's UI bundle (mlflow/server/js/build/static/js); tests/ui checks the result
in a real browser.
"""

from __future__ import annotations

import json

from .experiments import RUNS_VIEW

DEFAULTS = {"mlflow.workflowType_v1": json.dumps("machine_learning"),
            "mlflow.assistant.fab.autoOpenedOnFirstLoad_v1": json.dumps(True)}
VIEW_KEY = 'MLflowLocalStorage-1.1-ExperimentPage-["{id}"]-ReactComponentState'

SCRIPT = """<script>(function () {
  try {
    var defaults = %(defaults)s;
    Object.keys(defaults).forEach(function (key) {
      if (localStorage.getItem(key) === null) localStorage.setItem(key, defaults[key]);
    });
    var match = /^#\\/experiments\\/(\\d+)(?:[\\/?]|$)/.exec(location.hash);
    if (!match) return;
    var key = %(view_key)s.replace("{id}", match[1]);
    if (localStorage.getItem(key) !== null) return;
    var request = new XMLHttpRequest();  /* before the UI reads its state: synchronous */
    request.open("GET", "ajax-api/2.0/mlflow/experiments/get?experiment_id=" + match[1], false);
    request.send();
    if (request.status !== 200) return;
    (JSON.parse(request.responseText).experiment.tags || []).forEach(function (tag) {
      if (tag.key === %(tag)s) localStorage.setItem(key, tag.value);
    });
  } catch (error) { /* the UI starts as MLflow made it */ }
})();</script>"""


def first_visit_script() -> str:
    return SCRIPT % {"defaults": json.dumps(DEFAULTS), "view_key": json.dumps(VIEW_KEY),
                     "tag": json.dumps(f"mlflow.sharedViewState.{RUNS_VIEW}")}


def add_first_visit_defaults(response):
    """Flask after_request hook: the script goes first into the <head> of the UI's index page."""
    from flask import request

    if request.method != "GET" or response.status_code != 200 or response.mimetype != "text/html":
        return response  # the UI's only HTML page is its index
    response.direct_passthrough = False
    page = response.get_data(as_text=True)
    if "<head>" not in page or "mlflow.workflowType_v1" in page:
        return response
    response.set_data(page.replace("<head>", "<head>" + first_visit_script(), 1))
    response.headers.pop("ETag", None)
    return response
