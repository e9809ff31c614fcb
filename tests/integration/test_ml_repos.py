"""Bring your own ML repository, end to end: `flops-mlops round --ml-repo` with real Flower rounds against a real
embedded stack, then `serve`.

- Each example (scikit-learn, PyTorch, Keras) trains in its own environment (PyTorch and Keras: a virtualenv per
  dependency set, cached across runs in /var/cache/flops-mlops/fl-envs as root), its flavour inferred from
  get_model(); its champion is registered, served, and answers /invocations with the example's input; the links
  `round` prints lead to the experiment, the best round's run and the registered version.
- A foreign repository written here as FLOps' examples are (flops_utils templates, load_dataset, conda.yaml with
  python, pip, mlflow and flops-utils lines) runs unchanged on per-learner data folders (`round --data DIR`).
- Failures: a learner that raises is named with its exception's last line and the round goes on with
  --min-learners; a round that cannot go on exits 1 and still registers the best model so far; a repository that
  hangs in fit_model is bounded by --round-timeout.
- Data stays with the learner: the aggregator never calls set_model_data, and no learner example reaches the
  tracking server's database or the artifact store.

One stack serves the module. A cold cache builds the PyTorch, Keras and foreign environments first (pip from this
machine's indexes: the CPU build of torch comes from its find-links folder). Measured on the 2-core machine shared
with other jobs: 12 passed in 3 min 40 s with the environments cached (9 min 14 s under heavy load), 6 min 4 s with
FLOPS_ENV_CACHE pointing at an empty folder (the three environments built in 72, 51 and 38 s, pip's cache warm).
"""

from __future__ import annotations

import json
import shlex
import subprocess
import textwrap
import time
from pathlib import Path

import conftest
import numpy as np
import pytest
import requests
from conftest import ROOT, free_port
from tracking_checks import logged_in

pytestmark = pytest.mark.timeout(1800)
QUIET = {"MLFLOW_HTTP_REQUEST_MAX_RETRIES": "1", "FLWR_TELEMETRY_ENABLED": "0", "MLFLOW_DISABLE_TELEMETRY": "true"}
HELD_OUT_LABELS = [5, 3, 9, 9, 6]  # the examples' input example: the first five held-out digits (data_manager.py)
EXAMPLES = {"sklearn": "Digits", "pytorch": "DigitsTorch", "keras": "DigitsKeras"}


@pytest.fixture(scope="module")
def stack(tmp_path_factory):
    folder = tmp_path_factory.mktemp("ml-repos")
    stack = conftest.TestStack.create("local", folder, ["acme"])
    stack.up()
    with logged_in(stack.admin()):  # this process reads runs and models as the tenant's admin
        yield stack
    stack.cli("down", "--purge")


def round_cli(stack, project: str, *args: str, timeout: float = 1200) -> subprocess.CompletedProcess:
    return stack.cli("round", "--tenant", "acme", "--project", project, *args, env=QUIET, timeout=timeout)


def summary_of(done: subprocess.CompletedProcess) -> dict:
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    return json.loads(done.stdout)


def tracking_uri(stack) -> str:
    config = stack.load()
    return config.tracking_uri(config.tenant("acme"))


@pytest.fixture(scope="module")
def trained(stack):
    """example -> (summary, progress) of a 3-round, 2-learner project, each trained once, on first use."""
    done: dict[str, tuple[dict, str]] = {}

    def train(example: str) -> tuple[dict, str]:
        if example not in done:
            started = time.monotonic()
            result = round_cli(stack, EXAMPLES[example], "--ml-repo", str(ROOT / "examples" / example), "--json")
            print(f"{example}: round took {time.monotonic() - started:.0f} s")
            done[example] = summary_of(result), result.stderr
        return done[example]

    return train


def serve(stack, project: str) -> tuple[str, Path]:
    """Serve the project's champion; its URL and the example input file the printed curl line posts."""
    port = free_port()
    done = stack.cli("serve", "--tenant", "acme", "--project", project, "--port", str(port), "--detach",
                     timeout=300)
    assert done.returncode == 0, done.stdout + done.stderr
    curl = next(line for line in done.stdout.splitlines() if line.startswith("predict:"))
    data = next(arg for arg in shlex.split(curl.removeprefix("predict:")) if arg.startswith("@"))
    return f"http://127.0.0.1:{port}", Path(data[1:])


@pytest.mark.parametrize("example", sorted(EXAMPLES))
def test_each_example_trains_registers_and_its_served_champion_answers(stack, trained, example):
    import mlflow

    summary, progress = trained(example)
    project = EXAMPLES[example]
    assert f"flavour {example}, inferred from get_model()" in progress
    assert "input example from get_input_example()" in progress
    if example != "sklearn":  # its own environment: built once per dependency set, then reused
        assert "environment: virtualenv /" in progress
    assert summary["flavor"] == example and summary["signature"] is True
    assert summary["model_uri"] == f"models:/{project}@champion" and summary["failed_learners"] == []
    assert [e["round"] for e in summary["rounds"]] == [1, 2, 3]
    assert max(e["accuracy"] for e in summary["rounds"]) > 0.8, summary["rounds"]
    mlflow.set_tracking_uri(tracking_uri(stack))
    version = mlflow.MlflowClient().get_model_version_by_alias(project, "champion")
    assert version.version == summary["model_version"]
    url, example_input = serve(stack, project)
    try:
        answer = requests.post(f"{url}/invocations", data=example_input.read_bytes(), timeout=120,
                               headers={"Content-Type": "application/json"})
        assert answer.status_code == 200, answer.text[:2000]
        predictions = np.asarray(answer.json()["predictions"])
        # sklearn answers labels; pytorch logits and keras probabilities of the ten digits
        labels = predictions if example == "sklearn" else predictions.argmax(axis=1)
        assert predictions.shape == ((5,) if example == "sklearn" else (5, 10)), predictions.shape
        assert sum(int(a) == b for a, b in zip(labels, HELD_OUT_LABELS)) >= 4, labels
    finally:
        stack.cli("serve", "--tenant", "acme", "--project", project, "--stop")


@pytest.mark.parametrize("example", sorted(EXAMPLES))
def test_the_links_round_prints_lead_to_the_experiment_run_and_model(stack, trained, example):
    import mlflow

    summary, _ = trained(example)
    project = EXAMPLES[example]
    ui = tracking_uri(stack)
    client = mlflow.MlflowClient(ui)
    experiment = client.get_experiment_by_name(project)
    best_run = summary["run_ids"][summary["best_round"] - 1]
    assert summary["ui_url"] == f"{ui}/#/experiments/{experiment.experiment_id}/runs"
    assert summary["best_run_url"] == f"{summary['ui_url']}/{best_run}"
    assert summary["model_url"] == f"{ui}/#/models/{project}/versions/{summary['model_version']}"
    page = requests.get(summary["ui_url"], auth=stack.admin(), timeout=30)
    assert page.status_code == 200 and "<html" in page.text.lower()  # the UI the links open
    run = client.get_run(best_run)
    assert run.info.experiment_id == experiment.experiment_id and run.data.metrics["accuracy"] > 0
    version = client.get_model_version(project, summary["model_version"])
    assert version.run_id == best_run
    model = mlflow.models.get_model_info(f"models:/{project}/{summary['model_version']}")
    assert {"python_function", example} <= set(model.flavors)
    assert model.metadata["flops.flavor"] == example


# --- a repository written as FLOps' examples are -----------------------------------------------------------------

FLOPS_MODEL_MANAGER = '''
import warnings
from typing import Any, Tuple

import numpy as np
from flops_ml_repo_digits_sklearn.data_manager import DataManager  # as FLOps v0.3.2 examples import it
from flops_utils.ml_repo_templates import ModelManagerTemplate
from sklearn.linear_model import LogisticRegression
from sklearn.metrics import log_loss


class ModelManager(ModelManagerTemplate):
    def __init__(self):
        self.model = LogisticRegression(
            penalty="l2",
            max_iter=1,  # local epoch
            warm_start=True,  # prevent refreshing weights when fitting
        )
        self._set_init_params()

    def _set_init_params(self) -> None:
        n_classes = 10
        n_features = 64
        self.model.classes_ = np.array([i for i in range(10)])
        self.model.coef_ = np.zeros((n_classes, n_features))
        if self.model.fit_intercept:
            self.model.intercept_ = np.zeros((n_classes,))

    def set_model_data(self) -> None:
        (self.x_train, self.x_test), (self.y_train, self.y_test) = DataManager().get_data()

    def get_model(self) -> Any:
        return self.model

    def get_model_parameters(self) -> Any:
        return [self.model.coef_, self.model.intercept_]

    def set_model_parameters(self, parameters) -> None:
        self.model.coef_ = parameters[0]
        self.model.intercept_ = parameters[1]

    def fit_model(self) -> int:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            self.model.fit(self.x_train, self.y_train)
        return len(self.x_train)

    def evaluate_model(self) -> Tuple[Any, Any, int]:
        loss = log_loss(self.y_test, self.model.predict_proba(self.x_test), labels=list(range(10)))
        accuracy = self.model.score(self.x_test, self.y_test)
        return loss, accuracy, len(self.x_test)
'''
FLOPS_DATA_MANAGER = '''
from typing import Any, Tuple

from flops_utils.ml_repo_building_blocks import load_dataset
from flops_utils.ml_repo_templates import DataManagerTemplate


class DataManager(DataManagerTemplate):
    def __init__(self):
        (self.x_train, self.x_test), (self.y_train, self.y_test) = self._prepare_data()

    def _prepare_data(self) -> Any:
        dataset = load_dataset().with_format("numpy")
        x, y = dataset["image"], dataset["label"]
        split = int(0.8 * len(x))
        return (x[:split], x[split:]), (y[:split], y[split:])

    def get_data(self) -> Tuple[Any, Any]:
        return (self.x_train, self.x_test), (self.y_train, self.y_test)
'''
# Its requirements as they become pip's: numpy==2.4.*, scikit-learn==1.7.2 and datasets>=3,<4 (load_dataset):
# the same dependency set as before is the same cached environment.
FLOPS_CONDA = '''
name: mlflow-env
channels:
  - conda-forge
dependencies:
  - python=3.10.14
  - pip<=24.0
  - mlflow=2.12.1
  - numpy=2.4
  - scikit-learn==1.7.2
  - pip:
      - flops-utils==0.6.3
'''


def write_learner_data(folder: Path, learners: int) -> None:
    """Each learner's digits as a parquet file in DIR/learner-<i>/ (every learner holds all ten digits: a
    warm-started LogisticRegression would change its shape on a share without one)."""
    import pyarrow
    import pyarrow.parquet
    from sklearn.datasets import load_digits

    x, y = load_digits(return_X_y=True)
    order = np.random.default_rng(0).permutation(len(y))
    x, y = x[order] / 16.0, y[order]
    for i in range(learners):
        share = slice(i, None, learners)
        (folder / f"learner-{i}").mkdir(parents=True)
        table = pyarrow.table({"image": list(x[share].astype(np.float64)), "label": y[share].astype(np.int64)})
        pyarrow.parquet.write_table(table, folder / f"learner-{i}" / "part-0.parquet")


def test_a_foreign_flops_repository_runs_unchanged(stack, tmp_path):
    import mlflow

    repo = tmp_path / "flops_ml_repo_digits_sklearn"
    repo.mkdir()
    for name, text in (("model_manager.py", FLOPS_MODEL_MANAGER), ("data_manager.py", FLOPS_DATA_MANAGER),
                       ("conda.yaml", FLOPS_CONDA)):
        (repo / name).write_text(text.lstrip(), encoding="utf-8")
    write_learner_data(tmp_path / "data", 2)
    done = round_cli(stack, "Foreign", "--ml-repo", str(repo), "--data", str(tmp_path / "data"), "--rounds", "3",
                     "--json")
    summary = summary_of(done)
    progress = done.stderr
    assert "conda.yaml: dependencies[2] (mlflow=2.12.1, a conda spec installed with pip): mlflow==2.12.1.* dropped " \
           "(the FL runtime provides mlflow)" in progress
    assert "flops-utils==0.6.3 dropped" in progress
    assert "flavour sklearn, inferred from get_model()" in progress
    assert "no get_input_example(): the model will be logged without a signature or input example" in progress
    assert summary["flavor"] == "sklearn" and summary["signature"] is False
    assert summary["rounds"][-1]["accuracy"] > 0.5, summary["rounds"]  # ten digits; one epoch of lbfgs a round
    assert summary["rounds"][-1]["train_examples"] + summary["rounds"][-1]["eval_examples"] == 1797
    # served from the environment it trained in (this interpreter has no `datasets`)
    url, _ = serve(stack, "Foreign")
    try:
        from sklearn.datasets import load_digits

        x, y = load_digits(return_X_y=True)
        answer = requests.post(f"{url}/invocations", json={"inputs": (x[:20] / 16.0).tolist()}, timeout=60)
        assert answer.status_code == 200, answer.text[:2000]
        assert sum(int(p) == t for p, t in zip(answer.json()["predictions"], y[:20])) >= 10
    finally:
        stack.cli("serve", "--tenant", "acme", "--project", "Foreign", "--stop")
    mlflow.set_tracking_uri(tracking_uri(stack))
    assert mlflow.MlflowClient().get_model_version_by_alias("Foreign", "champion").version == \
        summary["model_version"]


# --- failures, and where the data goes ------------------------------------------------------------------------------

# A numpy softmax regression on this interpreter's scikit-learn digits. Each learner's training rows carry a
# canary pixel (CANARY, which no digit has); its input example comes from rows no learner holds. set_model_data
# records who called it (a learner's index, or "not a learner") in calls/. FAIL_AT ("<learner>:<round>:<how>")
# makes one learner raise or hang in fit_model.
PROBE = '''
import os
import time
from pathlib import Path

import numpy as np
from flops_utils.ml_repo_templates import ModelManagerTemplate
from sklearn.datasets import load_digits
from sklearn.linear_model import LogisticRegression

CANARY = {canary!r}
FAIL_AT = {fail_at!r}
CALLS = Path({calls!r})


def digits():
    x, y = load_digits(return_X_y=True)
    return x / 16.0, y


class ModelManager(ModelManagerTemplate):
    def __init__(self):
        self.coef, self.intercept = np.zeros((10, 64)), np.zeros(10)
        self.rounds = 0

    def set_model_data(self):
        index = os.environ.get("FLOPS_LEARNER_INDEX", "not a learner")
        (CALLS / f"{{os.getpid()}}").write_text(index)
        x, y = digits()
        mine = np.arange(len(y))[:1500][int(index)::int(os.environ["FLOPS_LEARNERS"])]
        self.x, self.y = x[mine].copy(), y[mine]
        self.x[:, 0] = CANARY  # pixel 0 is blank in every digit: the canary marks this learner's rows

    def get_model(self):
        model = LogisticRegression()
        model.classes_, model.coef_, model.intercept_ = np.arange(10), self.coef.copy(), self.intercept.copy()
        return model

    def get_model_parameters(self):
        return [self.coef.copy(), self.intercept.copy()]

    def set_model_parameters(self, parameters):
        self.coef, self.intercept = (np.array(p, dtype=np.float64) for p in parameters)

    def fit_model(self):
        self.rounds += 1
        learner, at, how = (FAIL_AT.split(":") + ["", "", ""])[:3]
        if os.environ.get("FLOPS_LEARNER_INDEX") == learner and str(self.rounds) == at:
            if how == "hang":
                time.sleep(3600)
            raise RuntimeError("the GPU went away\\nCUDA error: device lost in step 7")
        onehot = np.eye(10)[self.y]
        for _ in range(10):
            logits = self.x @ self.coef.T + self.intercept
            p = np.exp(logits - logits.max(axis=1, keepdims=True))
            p /= p.sum(axis=1, keepdims=True)
            self.coef -= 0.5 * (p - onehot).T @ self.x / len(self.y)
            self.intercept -= 0.5 * (p - onehot).mean(axis=0)
        return len(self.y)

    def evaluate_model(self):
        predicted = (self.x @ self.coef.T + self.intercept).argmax(axis=1)
        accuracy = float((predicted == self.y).mean())
        return 1.0 - accuracy, accuracy, len(self.y)

    def get_input_example(self):
        return digits()[0][1500:1503]  # rows no learner holds
'''
CANARY = 0.7171717171


def probe_repo(folder: Path, fail_at: str = "") -> Path:
    folder.mkdir()
    (folder / "calls").mkdir()
    (folder / "model_manager.py").write_text(PROBE.format(canary=CANARY, fail_at=fail_at,
                                                          calls=str(folder / "calls")), encoding="utf-8")
    (folder / "requirements.txt").write_text("numpy\nscikit-learn\n", encoding="utf-8")
    return folder


@pytest.fixture(scope="module")
def failing_learner_run(stack, tmp_path_factory):
    """3 learners, a round needs 2; learner 2 raises in its second fit_model."""
    repo = probe_repo(tmp_path_factory.mktemp("probe") / "repo", fail_at="2:2:raise")
    done = round_cli(stack, "Probe", "--ml-repo", str(repo), "--learners", "3", "--min-learners", "2",
                     "--rounds", "3", "--timeout", "300")
    return done, repo


def test_a_learner_that_raises_is_named_and_the_round_goes_on(failing_learner_run):
    done, _ = failing_learner_run
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    assert "learner-2 failed (exit 1): learner 2: round 2: fit_model raised RuntimeError: CUDA error: device lost " \
           "in step 7 (at model_manager.py:" in done.stdout
    assert "note: round 2: 1 learner(s) failed to return a model; going on with 2 (a round needs 2)" in done.stdout
    assert "round 3/3" in done.stdout
    assert "failed learners:  learner-2 (the rounds went on without them)" in done.stdout


def test_the_aggregator_never_calls_set_model_data(failing_learner_run):
    _, repo = failing_learner_run
    callers = sorted(path.read_text() for path in (repo / "calls").iterdir())
    # the pre-flight (as learner 0, with its data) and the three learners; never the aggregator
    assert callers == ["0", "0", "1", "2"], callers


def test_no_learner_example_reaches_the_tracking_server_or_an_artifact(stack, failing_learner_run):
    done, _ = failing_learner_run
    assert done.returncode == 0
    state = stack.load().state_dir
    needles = (repr(CANARY).encode(), str(CANARY)[:8].encode(), np.float64(CANARY).tobytes(),
               np.float32(CANARY).tobytes())
    looked = 0
    for path in [*state.glob("sqlite/*"), *(state / "ftp").rglob("*")]:
        if path.is_file():
            content = path.read_bytes()
            looked += 1
            assert not [n for n in needles if n in content], f"a learner's example is in {path}"
    assert looked > 5
    # the logged input example is the repository's (rows no learner holds)
    import mlflow

    mlflow.set_tracking_uri(tracking_uri(stack))
    model_id = mlflow.MlflowClient().get_model_version_by_alias("Probe", "champion").source.removeprefix("models:/")
    example = next((state / "ftp").rglob(f"{model_id}/artifacts/input_example.json"))
    assert np.asarray(json.loads(example.read_text())).shape == (3, 64)


def test_a_round_that_cannot_go_on_exits_1_and_registers_the_best_model_so_far(stack, tmp_path):
    import mlflow

    repo = probe_repo(tmp_path / "repo", fail_at="1:2:raise")
    done = round_cli(stack, "Stops", "--ml-repo", str(repo), "--learners", "2", "--rounds", "3", "--timeout", "300")
    assert done.returncode == 1, done.stdout[-3000:] + done.stderr[-3000:]
    assert "learner-1 failed (exit 1): learner 1: round 2: fit_model raised RuntimeError: CUDA error: device lost" \
        in done.stdout
    assert "round 2: only 1 of 2 learners returned a model; a round needs 2 (--min-learners)" in done.stderr
    assert "the training could not go on; the best model so far (round 1) is registered: models:/Stops@champion" \
        in done.stdout
    mlflow.set_tracking_uri(tracking_uri(stack))
    client = mlflow.MlflowClient()
    version = client.get_model_version_by_alias("Stops", "champion")
    assert client.get_run(version.run_id).data.tags["flops.round"] == "1"


def test_a_repository_hanging_in_fit_model_is_bounded_by_the_round_timeout(stack, tmp_path):
    repo = probe_repo(tmp_path / "repo", fail_at="0:2:hang")
    started = time.monotonic()
    done = round_cli(stack, "Hangs", "--ml-repo", str(repo), "--learners", "3", "--min-learners", "2",
                     "--rounds", "3", "--round-timeout", "8", "--timeout", "600", timeout=900)
    took = time.monotonic() - started
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    assert "learner-0 failed (exit 1): learner 0: round 2: fit_model did not return within 8 s (--round-timeout); " \
           "leaving" in done.stdout
    assert "round 3/3" in done.stdout
    print(f"hanging learner: the project took {took:.0f} s with --round-timeout 8")
