"""What the model server accepts from a model before it loads it: file names inside the model folder only, and
requirements this environment meets (no conda or virtualenv is created at run time)."""

from __future__ import annotations

import importlib.metadata

import pytest
from flops_mlops.serving.fetch import FetchError, model_files, unmet_requirements

SKLEARN_MLMODEL = {
    "flavors": {"python_function": {"model_path": "model.skops", "loader_module": "mlflow.sklearn"},
                "sklearn": {"pickled_model": "model.skops", "code": None}},
    "saved_input_example_info": {"artifact_path": "input_example.json",
                                 "serving_input_path": "serving_input_example.json"},
}


def test_files_named_by_mlmodel_are_fetched():
    assert model_files(SKLEARN_MLMODEL, "m") == {"requirements.txt", "python_env.yaml", "conda.yaml", "model.skops",
                                                 "input_example.json", "serving_input_example.json"}


@pytest.mark.parametrize("path", ["../escape.skops", "/etc/passwd", "data/../../x", "./model.skops"])
def test_a_file_name_leading_outside_the_model_is_refused(path):
    mlmodel = {"flavors": {"sklearn": {"pickled_model": path}}}
    with pytest.raises(FetchError, match="not a plain path inside the model"):
        model_files(mlmodel, "m version 1")


def test_a_model_with_code_is_refused():
    with pytest.raises(FetchError, match="carries code"):
        model_files({"flavors": {"python_function": {"code": "code"}}}, "m version 1")


def test_requirements_this_environment_does_not_meet_are_named(tmp_path):
    numpy = importlib.metadata.version("numpy")
    (tmp_path / "requirements.txt").write_text(
        f"mlflow=={importlib.metadata.version('mlflow')}\nnumpy==0.0.1\nscikit-learn\n"
        "no-such-package-flops==1.0\nwinonly==1.0; sys_platform == 'win32'\n# a comment\n", encoding="utf-8")
    assert unmet_requirements(tmp_path) == [f"numpy==0.0.1: this environment has numpy=={numpy}",
                                            "no-such-package-flops==1.0: not installed"]


def test_no_requirements_file_means_nothing_to_check(tmp_path):
    assert unmet_requirements(tmp_path) == []
