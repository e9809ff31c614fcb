"""The FL tracking policy and settings, without Flower or a tracking server: better-model rule, the one best
model on disk, sampling interval, project names, FLOPS_* settings, the examples' non-IID split, learner
isolation."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import numpy as np
import pytest
from conftest import ROOT, run_cli
from flops_mlops.fl.best_model import BestModel, RoundResult, is_better
from flops_mlops.fl.round_tracker import sampling_interval
from flops_mlops.fl.supervision import learner_environment
from flops_mlops.fl.settings import SettingsError, from_environment, validate_project


def result(n: int, loss: float, accuracy: float) -> RoundResult:
    return RoundResult(round=n, loss=loss, accuracy=accuracy, train_examples=10, eval_examples=5, wall_time=1.0)


@pytest.mark.parametrize("criterion, candidate, best, expected", [
    ("loss", (0.5, 0.8), None, True),
    ("loss", (0.4, 0.7), (0.5, 0.8), True),        # lower loss wins even with lower accuracy
    ("loss", (0.5, 0.9), (0.5, 0.8), False),       # a tie keeps the earlier round
    ("loss", (0.6, 0.99), (0.5, 0.8), False),
    ("loss", (float("nan"), 0.9), None, False),   # a broken round never becomes the best
    ("accuracy", (0.9, 0.85), (0.5, 0.8), True),  # higher accuracy wins even with higher loss
    ("accuracy", (0.1, 0.8), (0.5, 0.8), False),
])
def test_better_rule(criterion, candidate, best, expected):
    assert is_better(result(2, *candidate), result(1, *best) if best else None, criterion) is expected


def test_unknown_criterion_is_rejected():
    with pytest.raises(ValueError, match="better: 'f1'"):
        BestModel(".", "f1")


def test_exactly_one_best_model_is_kept_and_replaced_only_by_a_better_round(tmp_path):
    best = BestModel(tmp_path / "model", "loss")
    offers = [(1, 0.5), (2, 0.4), (3, 0.6), (4, 0.4)]
    replaced = [best.offer(result(n, loss, 0.5), [np.full((2, 2), n), np.full(2, n)]) for n, loss in offers]
    assert replaced == [True, True, False, False]
    assert sorted(p.name for p in (tmp_path / "model").iterdir()) == ["best.json", "best.npz"]
    assert json.loads(best.info_file.read_text())["round"] == 2
    assert [a.tolist() for a in best.load()] == [[[2, 2], [2, 2]], [2, 2]]
    best.reset()
    assert list((tmp_path / "model").iterdir()) == []


@pytest.mark.parametrize("previous, expected", [(None, 0.5), (1.0, 0.25), (0.05, 0.2), (8.0, 2.0), (300, 10.0)])
def test_sampling_interval_follows_round_length(previous, expected):
    assert sampling_interval(previous) == expected


@pytest.mark.parametrize("name", ["demo", "Project7", "a" * 32])
def test_valid_project_names(name):
    assert validate_project(name) == name


@pytest.mark.parametrize("name", ["", "7up", "my-project", "my_project", "a/b", "../x", "a b", "a" * 33, "dé"])
def test_invalid_project_names(name):
    with pytest.raises(SettingsError, match="not a valid project name"):
        validate_project(name)


def test_settings_from_environment_and_flags(monkeypatch):
    monkeypatch.setenv("FLOPS_PROJECT", "demo")
    monkeypatch.setenv("FLOPS_TRACKING_URI", "http://127.0.0.1:5000")
    monkeypatch.setenv("FLOPS_ROUNDS", "5")
    monkeypatch.setenv("FLOPS_AGGREGATOR_ADDRESS", "127.0.0.1:9999")
    settings = from_environment(["--rounds", "7", "--better", "accuracy"], "aggregator", "test")
    assert (settings.rounds, settings.better, settings.aggregator_address) == (7, "accuracy", "127.0.0.1:9999")


@pytest.mark.parametrize("env, message", [
    ({"FLOPS_PROJECT": "bad-name"}, "FLOPS_PROJECT/--project: 'bad-name'"),
    ({"FLOPS_ROUNDS": "three"}, "FLOPS_ROUNDS/--rounds: expected int, got 'three'"),
    ({"FLOPS_ROUNDS": "0"}, "FLOPS_ROUNDS/--rounds: expected at least 1"),
    ({"FLOPS_AGGREGATOR_ADDRESS": "nowhere"}, "FLOPS_AGGREGATOR_ADDRESS: 'nowhere' is not host:port"),
    ({"FLOPS_TRACKING_URI": "file:///tmp/x"}, "FLOPS_TRACKING_URI/--tracking-uri: 'file:///tmp/x'"),
    ({"FLOPS_BETTER": "f1"}, "FLOPS_BETTER/--better: 'f1'"),
])
def test_bad_settings_name_the_variable(monkeypatch, env, message):
    monkeypatch.setenv("FLOPS_PROJECT", "demo")
    monkeypatch.setenv("FLOPS_TRACKING_URI", "http://127.0.0.1:5000")
    for key, value in env.items():
        monkeypatch.setenv(key, value)
    with pytest.raises(SettingsError) as error:
        from_environment([], "aggregator", "test")
    assert message in str(error.value)


def test_learner_index_must_fit_the_learner_count(monkeypatch):
    monkeypatch.setenv("FLOPS_LEARNERS", "2")
    monkeypatch.setenv("FLOPS_LEARNER_INDEX", "2")
    with pytest.raises(SettingsError, match="FLOPS_LEARNER_INDEX/--learner-index: 2 is outside 0..1"):
        from_environment([], "learner", "test")


@pytest.fixture(scope="module")
def digits_split():
    """The examples' data_manager (the same file in each example), imported as the learners import it."""
    from flops_mlops.fl.ml_repo import import_model_manager

    import_model_manager(ROOT / "examples" / "sklearn")
    import data_manager

    return data_manager


def test_split_is_deterministic_disjoint_complete_and_non_iid(digits_split):
    (x, _), (_, held_y) = digits_split._shuffled(42)
    shares = [digits_split.share(i, 3, 42) for i in range(3)]
    again = [digits_split.share(i, 3, 42) for i in range(3)]
    assert all((a[0] == b[0]).all() and (a[1] == b[1]).all() for a, b in zip(shares, again))
    rows = np.concatenate([s[0] for s in shares])
    assert len(rows) == len(x) == 1797 - len(held_y)  # every training digit, once; the held-out fifth to none
    assert len({row.tobytes() for row in rows}) == len({row.tobytes() for row in x})
    assert min(len(y) for _, y in shares) >= digits_split.MIN_PER_LEARNER
    mixes = np.array([np.bincount(y, minlength=10) / len(y) for _, y in shares])
    assert np.abs(mixes - mixes.mean(axis=0)).max() > 0.1  # label mixes differ between learners


def test_every_example_holds_the_same_data_manager():
    texts = {name: (ROOT / "examples" / name / "data_manager.py").read_text() for name in ("sklearn", "pytorch",
                                                                                           "keras")}
    assert len(set(texts.values())) == 1, "examples/*/data_manager.py differ"


def test_learners_get_no_tracking_settings_and_no_secrets():
    env = learner_environment({"PATH": "/bin", "MLFLOW_TRACKING_URI": "http://x", "FLOPS_TRACKING_URI": "http://x",
                               "MLFLOW_HTTP_REQUEST_MAX_RETRIES": "0", "FLOPS_SEED": "1", "FLOPS_PROJECT": "P",
                               "FLOPS_MYSQL_ADMIN_PASSWORD": "s3cret", "FLOPS_TENANT_ACME_FTP_PASSWORD": "s3cret",
                               "AWS_SECRET_ACCESS_KEY": "s3cret", "FLOPS_LEARNER_INDEX": "0",
                               "FLOPS_AGGREGATOR_ADDRESS": "127.0.0.1:1", "PYTHONPATH": "/x"})
    assert env == {"PATH": "/bin", "FLOPS_SEED": "1", "FLOPS_LEARNER_INDEX": "0",
                   "FLOPS_AGGREGATOR_ADDRESS": "127.0.0.1:1", "PYTHONPATH": "/x", "OMP_NUM_THREADS": "1",
                   "OPENBLAS_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}  # K learners share the cores
    assert learner_environment({"OMP_NUM_THREADS": "4"})["OMP_NUM_THREADS"] == "4"  # an explicit setting wins


def test_learner_code_does_not_import_mlflow():
    code = ("import sys, flops_mlops.fl.learner, flops_mlops.fl.legacy, flops_mlops.fl.engine; "
            "print(sorted(m for m in sys.modules if m.split('.')[0] == 'mlflow' or m.endswith('fl.round_tracker')))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True, cwd=ROOT)
    assert out.stdout.strip() == "[]"


@pytest.mark.parametrize("args, message", [
    (["--tenant", "acme", "--project", "../etc"], "--project: '../etc' is not a valid project name"),
    (["--tenant", "nobody", "--project", "demo"], "no tenant 'nobody'"),
    (["--tenant", "acme", "--project", "demo", "--rounds", "0"], "FLOPS_ROUNDS/--rounds: expected at least 1"),
    (["--tenant", "acme", "--project", "demo", "--learners", "73"], "FLOPS_LEARNERS/--learners: 73 learners are more processes than one project should start (at most 64)"),
    (["--tenant", "acme", "--project", "demo", "--min-learners", "3"],
     "FLOPS_MIN_LEARNERS/--min-learners: expected 0 (all) to 2 (the learners), got 3"),
    (["--tenant", "acme", "--project", "demo", "--round-timeout", "0"], "FLOPS_ROUND_TIMEOUT/--round-timeout"),
    (["--tenant", "acme", "--project", "demo", "--timeout", "inf"], "FLOPS_TIMEOUT/--timeout: expected seconds"),
    (["--tenant", "acme", "--project", "demo", "--timeout", "nan"], "FLOPS_TIMEOUT/--timeout: expected seconds"),
    (["--tenant", "acme", "--project", "demo", "--seed", "-1"], "FLOPS_SEED/--seed: expected 0-4294967295 (a seed of the data generator), got -1"),
    (["--tenant", "acme", "--project", "demo", "--seed", str(2**32)], "FLOPS_SEED/--seed: expected 0-4294967295"),
])
def test_round_rejects_bad_input_before_starting_anything(args, message):
    done = run_cli("round", *args, config=ROOT / "configs" / "local.yaml")
    assert done.returncode == 2, done.stderr
    assert message in done.stderr


def test_the_largest_allowed_learner_count_fits_the_digits(digits_split):
    from flops_mlops.fl.settings import MAX_LEARNERS

    assert MAX_LEARNERS == 64
    sizes = [len(digits_split.share(i, MAX_LEARNERS, 42)[1]) for i in range(MAX_LEARNERS)]
    assert min(sizes) >= digits_split.MIN_PER_LEARNER  # 1437 training digits: 22 each on average


def test_a_learner_started_on_its_own_turns_flower_telemetry_off(tmp_path):
    """Containers and Oakestra start learners directly, without the runner's environment."""
    (tmp_path / "sitecustomize.py").write_text(
        "import atexit, os\n"
        "atexit.register(lambda: print('telemetry', os.environ.get('FLWR_TELEMETRY_ENABLED'),"
        " os.environ.get('FLWR_DISABLE_UPDATE_CHECK')))\n")
    env = {k: v for k, v in os.environ.items() if not k.startswith(("FLWR_", "DO_NOT_TRACK"))}
    env.update(PYTHONPATH=str(tmp_path), FLOPS_LEARNER_INDEX="0", FLOPS_TIMEOUT="1",
               FLOPS_AGGREGATOR_ADDRESS="127.0.0.1:9")  # nobody listens: the learner gives up after 1 s
    out = subprocess.run([sys.executable, "-m", "flops_mlops.fl.learner"], capture_output=True, text=True,
                         cwd=ROOT, env=env, timeout=120)
    assert "telemetry 0 1" in out.stdout, (out.stdout, out.stderr)


def test_settings_reach_each_role_through_one_mapping_and_back(monkeypatch):
    import os
    from dataclasses import fields, replace

    from flops_mlops.fl.settings import FLSettings, environment

    settings = FLSettings(project="Roundtrip", tracking_uri="http://127.0.0.1:5000", rounds=4, learners=3, seed=9,
                          aggregator_address="127.0.0.1:9999", better="accuracy", alias="best", timeout=120.0,
                          ml_repo="/srv/repo", flavor="pytorch", ml_repo_tag="c0123456789ab", min_learners=2,
                          round_timeout=30.0, data_dir="/srv/data")
    for role, expected in (("aggregator", settings), ("learner", replace(settings, learner_index=2))):
        variables = environment(expected, role)
        for key in [k for k in os.environ if k.startswith("FLOPS_")]:
            monkeypatch.delenv(key)
        for key, value in variables.items():
            monkeypatch.setenv(key, value)
        read = from_environment([], role, "test")
        mine = [f for f in fields(FLSettings) if role in f.metadata["roles"]]
        assert {f.name: getattr(read, f.name) for f in mine} == {f.name: getattr(expected, f.name) for f in mine}
    assert "FLOPS_TRACKING_URI" not in environment(settings, "learner")
    assert "FLOPS_LEARNER_INDEX" not in environment(settings, "aggregator")
