"""An ML repository in FLOps' contract, as a user brings it: the pre-flight check and its messages (file, class,
method; exit 2 from `round`), the dependency file (conda.yaml, requirements.txt), folders and git URLs cloned
offline, the flavour inferred from get_model(), the environment cache's key, and the FLOPS_* variables a
repository reads to find its own data.

The repositories are written here, small and numpy-only (this interpreter meets them: no virtualenv is built);
the examples and their frameworks run in tests/integration/test_ml_repos.py (rounds, serving).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
import yaml
from conftest import ROOT, run_cli
from flops_mlops.fl import environments, flavors
from flops_mlops.fl.contract import check_repository
from flops_mlops.fl.ml_repo import RepoError, read_dependencies, resolve, self_import_names
from flops_mlops.fl.settings import FLSettings
from flops_mlops.fl.supervision import Runtime, learner_settings

# A repository that keeps the contract: a logistic regression in numpy, logged as a scikit-learn estimator, its
# data drawn from FLOPS_LEARNER_INDEX. The cases below break it one piece at a time.
GOOD = '''
import os

import numpy as np
from flops_utils.ml_repo_templates import ModelManagerTemplate
from sklearn.linear_model import LogisticRegression


class ModelManager(ModelManagerTemplate):
    def __init__(self):
        self.coef, self.intercept = np.zeros((2, 3)), np.zeros(2)

    def set_model_data(self):
        rng = np.random.default_rng(int(os.environ["FLOPS_LEARNER_INDEX"]))
        self.x = rng.normal(size=(40, 3))
        self.y = (self.x[:, 0] > 0).astype(int)

    def get_model(self):
        model = LogisticRegression()
        model.classes_, model.coef_, model.intercept_ = np.arange(2), self.coef, self.intercept
        return model

    def get_model_parameters(self):
        return [self.coef.copy(), self.intercept.copy()]

    def set_model_parameters(self, parameters):
        self.coef, self.intercept = (np.array(p, dtype=np.float64) for p in parameters)

    def fit_model(self):
        self.coef[0] += 0.1
        return len(self.y)

    def evaluate_model(self):
        predicted = (self.x @ self.coef.T + self.intercept).argmax(axis=1)
        accuracy = float((predicted == self.y).mean())
        return 1.0 - accuracy, accuracy, len(self.y)

    def get_input_example(self):
        return np.ones((2, 3))
'''
REQUIREMENTS = "numpy\nscikit-learn\n"


def write_repo(folder: Path, model_manager: str | None = GOOD, files: dict[str, str] | None = None) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    if model_manager is not None:
        (folder / "model_manager.py").write_text(textwrap.dedent(model_manager), encoding="utf-8")
    for name, text in (files if files is not None else {"requirements.txt": REQUIREMENTS}).items():
        (folder / name).write_text(textwrap.dedent(text), encoding="utf-8")
    return folder


def without_method(name: str) -> str:
    """GOOD without the method ``name`` (up to the next method), and without the template as its base class (which
    would hold an abstract ``name``: test_the_template_s_abstract_methods_are_not_an_implementation)."""
    start = GOOD.index(f"    def {name}(")
    end = GOOD.find("\n    def ", start + 1)
    source = GOOD[:start] + (GOOD[end + 1:] if end != -1 else "")
    return source.replace("class ModelManager(ModelManagerTemplate):", "class ModelManager:")


def replaced(old: str, new: str) -> str:
    assert old in GOOD
    return GOOD.replace(old, new)


@pytest.fixture(autouse=True)
def learner_zero(monkeypatch):
    """The pre-flight runs as learner 0 of 2 (its data); nothing of the caller's FLOPS_* settings leaks in."""
    for key in [k for k in os.environ if k.startswith("FLOPS_")]:
        monkeypatch.delenv(key)
    monkeypatch.setenv("FLOPS_LEARNER_INDEX", "0")
    monkeypatch.setenv("FLOPS_LEARNERS", "2")


def violations(folder: Path, flavor: str | None = None) -> list[str]:
    return [str(v) for v in check_repository(folder, flavor)[0]]


# --- the pre-flight: every violation named with file, class and method ---------------------------------------

METHODS = ("set_model_data", "get_model", "get_model_parameters", "set_model_parameters", "fit_model",
           "evaluate_model")

CASES = {
    # the files and the class
    "no model_manager.py": (None, "model_manager.py: missing: the repository's root must hold it"),
    "no ModelManager": (replaced("class ModelManager(", "class Model("),
                        "model_manager.py: no class ModelManager (FLOps' learners and aggregator build "
                        "ModelManager())"),
    "import fails": ("import not_a_package_anywhere\n" + GOOD,
                     "model_manager.py: importing it failed: ModuleNotFoundError: No module named "
                     "'not_a_package_anywhere' (at model_manager.py:1) (a package missing from the dependency "
                     "file?)"),
    "constructor raises": (replaced("self.coef, self.intercept = np.zeros((2, 3)), np.zeros(2)",
                                    "raise ValueError('no weights here')"),
                           "model_manager.py: ModelManager.__init__: raised ValueError: no weights here"),
    "set takes no parameters": (replaced("def set_model_parameters(self, parameters):",
                                         "def set_model_parameters(self):\n        parameters = []"),
                                "model_manager.py: ModelManager.set_model_parameters: takes (), expected "
                                "(parameters) besides self"),
    # get -> set -> get
    "parameters not taken": (replaced("self.coef, self.intercept = (np.array(p, dtype=np.float64) for p in "
                                      "parameters)", "pass"),
                             "model_manager.py: ModelManager.set_model_parameters: does not take the parameters "
                             "it is given (array 0 differs after get -> set -> get)"),
    "dtype changes": (replaced("np.array(p, dtype=np.float64)", "np.array(p, dtype=np.float32)"),
                      "model_manager.py: ModelManager.set_model_parameters: array 0 is float32[2, 3] after get -> "
                      "set -> get, float64[2, 3] before"),
    "shape changes": (replaced("np.array(p, dtype=np.float64) for p in parameters",
                               "np.array(p, dtype=np.float64).ravel() for p in parameters"),
                      "model_manager.py: ModelManager.set_model_parameters: array 0 is float64[6] after get -> set "
                      "-> get, float64[2, 3] before"),
    "an array is dropped": (replaced("return [self.coef.copy(), self.intercept.copy()]",
                                     "return [self.coef.copy(), self.intercept.copy()][:len(self.__dict__) - 1]"),
                            None),  # covered below: the count changes only after set (see 'arrays lost')
    "not a list": (replaced("return [self.coef.copy(), self.intercept.copy()]", "return {'coef': self.coef}"),
                   "model_manager.py: ModelManager.get_model_parameters: returned dict, expected a list of numpy "
                   "arrays"),
    "not numeric": (replaced("return [self.coef.copy(), self.intercept.copy()]",
                             "return [self.coef.copy(), np.array(['a', None], dtype=object)]"),
                    "model_manager.py: ModelManager.get_model_parameters: item 1 has dtype object: parameters must "
                    "be numeric numpy arrays (they travel without pickle)"),
    # fit_model and evaluate_model: their types, on learner 0's first call
    "fit returns None": (replaced("return len(self.y)", "return None"),
                         "model_manager.py: ModelManager.fit_model: returned None (NoneType) as the number of "
                         "training examples, expected a whole number >= 0"),
    "fit returns a float": (replaced("return len(self.y)", "return 40.0"),
                            "model_manager.py: ModelManager.fit_model: returned 40.0 (float) as the number of "
                            "training examples, expected a whole number >= 0"),
    "evaluate returns two values": (replaced("return 1.0 - accuracy, accuracy, len(self.y)",
                                             "return 0.5, 0.9"),
                                    "model_manager.py: ModelManager.evaluate_model: returned (0.5, 0.9), expected "
                                    "(loss, accuracy, number of test examples)"),
    "evaluate returns a dict as accuracy": (replaced("return 1.0 - accuracy, accuracy, len(self.y)",
                                                     "return 0.5, {'accuracy': 0.9}, len(self.y)"),
                                            "model_manager.py: ModelManager.evaluate_model: returned {'accuracy': "
                                            "0.9} (dict) as the accuracy, expected a number"),
    "fit raises": (replaced("self.coef[0] += 0.1", "raise RuntimeError('out of memory\\nat step 3')"),
                   "model_manager.py: ModelManager.fit_model: raised RuntimeError: at step 3 (at model_manager.py:"),
    "set_model_data raises": (replaced("rng = np.random", "raise FileNotFoundError('/data/x.npz')\n        rng = np.random"),
                              "model_manager.py: ModelManager.set_model_data: raised FileNotFoundError: /data/x.npz"),
    # the flavour
    "model of no flavour": (replaced("model = LogisticRegression()", "return np.zeros(3)\n        model = None"),
                            "model_manager.py: ModelManager.get_model: get_model() returns numpy.ndarray, which is "
                            "none of a scikit-learn estimator, a torch.nn.Module, a Keras model: the flavour is "
                            "ambiguous; pass --flavor sklearn|pytorch|keras (FLOPS_FLAVOR)"),
    "input example the model cannot take": (replaced("return np.ones((2, 3))", "return np.ones((2, 5))"),
                                            "model_manager.py: ModelManager.get_input_example: raised ValueError:"),
}
CASES.pop("an array is dropped")
CASES.update({f"no {name}": (without_method(name), f"model_manager.py: ModelManager.{name}: missing")
              for name in METHODS})


@pytest.mark.parametrize("case", sorted(CASES))
def test_each_violation_is_named_with_file_class_and_method(tmp_path, case):
    source, expected = CASES[case]
    found = violations(write_repo(tmp_path / "repo", source))
    assert len(found) == 1 and found[0].startswith(expected), found


def test_a_repository_that_keeps_the_contract_passes_and_says_what_it_is(tmp_path):
    found, info = check_repository(write_repo(tmp_path / "repo"))
    assert found == []
    assert info["flavor"] == "sklearn" and info["arrays"] == 2 and info["parameters"] == 8
    assert info["input_example"] is True and info["train_examples"] == 40 and len(info["eval"]) == 3


def test_the_template_s_abstract_methods_are_not_an_implementation(tmp_path):
    source = replaced("class ModelManager(ModelManagerTemplate):", "class Base(ModelManagerTemplate):")
    source += "\n\nclass ModelManager(ModelManagerTemplate):\n    def get_model(self):\n        return None\n"
    found = violations(write_repo(tmp_path / "repo", source))
    assert "model_manager.py: ModelManager.get_model: missing" not in found
    assert {f.split(":")[1].strip() for f in found} == {f"ModelManager.{m}" for m in METHODS if m != "get_model"}
    assert all(f.endswith("not implemented (still the template's abstract method)") for f in found)


def test_a_repository_importing_its_own_modules_by_its_name_loads_as_flops_examples_do(tmp_path):
    """FLOps' examples import their data manager through the repository's name (flops_ml_repo_mnist_sklearn's
    model_manager.py: ``from flops_ml_repo_mnist_sklearn.data_manager import DataManager``); that name becomes a
    package of the repository's folder, whatever the folder is called. An installed module's name is never taken."""
    data_manager = "import os\n\ndef rows():\n    return 40 + int(os.environ['FLOPS_LEARNER_INDEX'])\n"
    source = replaced("from sklearn.linear_model import LogisticRegression",
                      "from sklearn.linear_model import LogisticRegression\n\n"
                      "from flops_ml_repo_numbers.data_manager import rows\nimport flops_ml_repo_numbers.helpers.ones")
    source = source.replace("rng.normal(size=(40, 3))", "rng.normal(size=(rows(), 3))")
    (tmp_path / "clone-of-any-name" / "helpers").mkdir(parents=True)
    folder = write_repo(tmp_path / "clone-of-any-name", source, files={
        "requirements.txt": REQUIREMENTS, "data_manager.py": data_manager, "helpers/__init__.py": "",
        "helpers/ones.py": "ONE = 1\n", "stray.py": "from numpy.linalg import norm\nimport numpy.data_manager\n"})
    assert self_import_names(folder) == ["flops_ml_repo_numbers", "numpy"]
    found, info = check_repository(folder)
    assert found == [] and info["train_examples"] == 40
    assert sys.modules["flops_ml_repo_numbers"].__path__ == [str(folder.resolve())]
    assert sys.modules["numpy"].__file__.endswith("numpy/__init__.py")  # installed: never made the repository
    # a second repository loaded in the same process forgets the first one's package
    check_repository(write_repo(tmp_path / "other"))
    assert "flops_ml_repo_numbers" not in sys.modules


def test_a_missing_dependency_file_is_named(tmp_path):
    found = violations(write_repo(tmp_path / "repo", files={}))
    assert found == ["conda.yaml or requirements.txt: missing: the repository's root must hold a dependency file"]


def test_a_flavor_that_does_not_fit_the_model_names_the_flag(tmp_path):
    found = violations(write_repo(tmp_path / "repo"), flavor="pytorch")
    assert found == ["model_manager.py: ModelManager.get_model: get_model() returns "
                     "sklearn.linear_model._logistic.LogisticRegression, not a torch.nn.Module: --flavor pytorch "
                     "cannot log it with mlflow.pytorch"]


def test_the_aggregator_s_check_never_loads_data(tmp_path):
    source = replaced("rng = np.random", "raise AssertionError('the aggregator loaded data')\n        rng = np.random")
    assert check_repository(write_repo(tmp_path / "repo", source), learner=False)[0] == []


def local_config(tmp_path: Path) -> Path:
    """configs/local.yaml with its state under tmp_path (nothing is started: the checks come first)."""
    data = yaml.safe_load((ROOT / "configs" / "local.yaml").read_text())
    data.update(state_dir=str(tmp_path / "state"), secrets_file=str(tmp_path / "secrets.env"))
    data["tracking"]["base_port"] = 9  # nobody answers there
    path = tmp_path / "local.yaml"
    path.write_text(yaml.safe_dump(data), encoding="utf-8")
    return path


def round_cli(tmp_path: Path, *args: str, env: dict[str, str] | None = None, timeout: float = 300):
    return run_cli("round", "--tenant", "acme", "--project", "Mine", *args, config=local_config(tmp_path),
                   env={"FLOPS_ENV_CACHE": str(tmp_path / "envs"), **(env or {})}, timeout=timeout)


@pytest.mark.parametrize("case", ["no model_manager.py", "no ModelManager", "no fit_model", "dtype changes",
                                  "fit returns None", "evaluate returns two values", "model of no flavour"])
def test_round_refuses_a_broken_repository_with_exit_2_before_anything_starts(tmp_path, case):
    source, expected = CASES[case]
    done = round_cli(tmp_path, "--ml-repo", str(write_repo(tmp_path / "repo", source)))
    assert done.returncode == 2, done.stdout + done.stderr
    assert "the ML repository breaks FLOps' contract:" in done.stderr
    assert expected in done.stderr, done.stderr
    assert "is not answering" not in done.stderr  # the repository is checked before the stack is needed


def test_round_names_the_flag_when_the_flavour_is_ambiguous(tmp_path):
    source, _ = CASES["model of no flavour"]
    done = round_cli(tmp_path, "--ml-repo", str(write_repo(tmp_path / "repo", source)))
    assert done.returncode == 2 and "pass --flavor sklearn|pytorch|keras" in done.stderr, done.stderr


def test_a_good_repository_passes_the_checks_and_then_needs_the_stack(tmp_path):
    done = round_cli(tmp_path, "--ml-repo", str(write_repo(tmp_path / "repo")))
    assert done.returncode == 1, done.stdout + done.stderr
    assert "contract: holds (2 parameter arrays, 8 parameters; flavour sklearn, inferred from get_model(); input " \
           "example from get_input_example())" in done.stdout
    assert "no virtualenv needed" in done.stdout  # this interpreter meets numpy and scikit-learn
    assert "is not answering; start the stack first" in done.stderr


# --- the dependency file ---------------------------------------------------------------------------------------

FLOPS_CONDA = """\
    name: mlflow-env
    channels:
      - conda-forge
    dependencies:
      - python=3.10.14
      - pip<=24.0
      - mlflow=2.12.1
      - numpy=1.26.4
      - scikit-learn=1.4
      - pytorch>=2.1
      - conda-forge::scipy==1.13.0
      - pip:
          - flops-utils==0.6.3
          - keras==3.5.0
          - jax[cpu]>=0.4
"""


def test_conda_yaml_pip_section_and_plain_names_become_pip_requirements(tmp_path):
    dependencies = read_dependencies(write_repo(tmp_path / "repo", files={"conda.yaml": FLOPS_CONDA}))
    assert dependencies.requirements == ("numpy==1.26.4.*", "scikit-learn==1.4.*", "torch>=2.1", "scipy==1.13.0",
                                         "keras==3.5.0", "jax[cpu]>=0.4")
    notes = "\n".join(dependencies.notes)
    assert "mlflow==2.12.1.* dropped (the FL runtime provides mlflow)" in notes
    assert "flops-utils==0.6.3 dropped (the FL runtime provides flops-utils)" in notes
    assert "python=3.10.14 noted: the environment uses this machine's Python" in notes
    assert dependencies.origins["torch>=2.1"] == ("conda.yaml: dependencies[5] (pytorch>=2.1, a conda spec "
                                                  "installed with pip)")
    assert dependencies.origins["keras==3.5.0"] == "conda.yaml: dependencies[7].pip[1]"


@pytest.mark.parametrize("conda, message", [
    ("dependencies: numpy", "conda.yaml: dependencies: expected a list of packages"),
    ("dependencies: [{channel: x}]", "conda.yaml: dependencies[0]: expected a package spec or a pip: list"),
    ("dependencies: [{pip: ['numpy >>> 2']}]", "conda.yaml: dependencies[0].pip[0]: 'numpy >>> 2' is not a pip "
                                               "requirement"),
    ("dependencies: [':']", "conda.yaml: dependencies[0]: ':' is not a conda package spec"),
    ("dependencies: [\n", "conda.yaml: not YAML"),
])
def test_a_bad_conda_yaml_is_named_with_its_entry(tmp_path, conda, message):
    with pytest.raises(RepoError) as error:
        read_dependencies(write_repo(tmp_path / "repo", files={"conda.yaml": conda}))
    assert message in str(error.value)


def test_requirements_txt_keeps_index_options_and_refuses_includes(tmp_path):
    repo = write_repo(tmp_path / "repo", files={"requirements.txt": """\
        # the CPU build
        --extra-index-url https://download.pytorch.org/whl/cpu
        torch==2.13.0+cpu; platform_machine == "x86_64"  # pinned
        mlflow-skinny==3.1
        numpy>=1.26
        """})
    dependencies = read_dependencies(repo)
    assert dependencies.requirements == ("--extra-index-url https://download.pytorch.org/whl/cpu",
                                         'torch==2.13.0+cpu; platform_machine == "x86_64"', "numpy>=1.26")
    assert dependencies.names == {"torch", "numpy"}
    assert "requirements.txt:4: mlflow-skinny==3.1 dropped" in "\n".join(dependencies.notes)
    (repo / "requirements.txt").write_text("numpy\n-r other.txt\n")
    with pytest.raises(RepoError, match=r"requirements.txt:2: '-r other.txt': only requirements and index options"):
        read_dependencies(repo)
    (repo / "requirements.txt").write_text("numpy\nscikit learn\n")
    with pytest.raises(RepoError, match=r"requirements.txt:2: 'scikit learn' is not a pip requirement"):
        read_dependencies(repo)


def test_a_repository_using_flops_building_blocks_gets_datasets(tmp_path):
    repo = write_repo(tmp_path / "repo", files={"requirements.txt": "numpy\n", "data_manager.py":
                                                "from flops_utils.ml_repo_building_blocks import load_dataset\n"})
    assert read_dependencies(repo).requirements == ("numpy", "datasets>=3,<4")


def test_a_conda_only_package_is_a_clear_error(tmp_path):
    """pip is asked (this machine's indexes); a package it cannot find is named with its conda.yaml entry."""
    conda = "dependencies:\n  - numpy\n  - cudatoolkit=11.8\n"
    done = round_cli(tmp_path, "--ml-repo", str(write_repo(tmp_path / "repo", files={"conda.yaml": conda})),
                     env={"PIP_RETRIES": "0", "PIP_TIMEOUT": "5"})
    assert done.returncode == 2, done.stdout + done.stderr
    assert ("conda.yaml: dependencies[1] (cudatoolkit=11.8, a conda spec installed with pip): cudatoolkit==11.8.*: "
            "pip finds no such package (on PyPI or this machine's indexes). conda-only packages cannot be "
            "installed: list the package's PyPI name under pip:, or drop it") in done.stderr
    assert not [p for p in (tmp_path / "envs").iterdir() if p.is_dir()]  # a failed environment is never reused


# --- where the repository comes from -----------------------------------------------------------------------------


def git(folder: Path, *args: str) -> str:
    env = {"PATH": os.environ["PATH"], "HOME": str(folder), "GIT_AUTHOR_NAME": "t", "GIT_AUTHOR_EMAIL": "t@x",
           "GIT_COMMITTER_NAME": "t", "GIT_COMMITTER_EMAIL": "t@x"}
    return subprocess.run(["git", *args], cwd=folder, env=env, check=True, capture_output=True,
                          text=True).stdout.strip()


@pytest.fixture
def git_repo(tmp_path):
    """A repository with two commits: tag v1 holds fit_model's step 0.1, main's HEAD a step of 0.2."""
    folder = write_repo(tmp_path / "upstream")
    git(folder, "init", "--quiet", "--initial-branch", "main")
    git(folder, "add", ".")
    git(folder, "commit", "--quiet", "-m", "v1")
    git(folder, "tag", "v1")
    first = git(folder, "rev-parse", "HEAD")
    (folder / "model_manager.py").write_text(GOOD.replace("+= 0.1", "+= 0.2"))
    git(folder, "commit", "--quiet", "-am", "v2")
    return folder, first, git(folder, "rev-parse", "HEAD")


def test_a_local_folder_is_used_in_place_and_tagged_by_its_content(tmp_path):
    folder = write_repo(tmp_path / "repo")
    repo = resolve(str(folder), None, tmp_path / "clones")
    assert repo.folder == folder.resolve() and repo.commit is None and not (tmp_path / "clones").exists()
    tag = repo.tag
    assert tag.startswith("c") and len(tag) == 13 and resolve(str(folder), None, tmp_path / "clones").tag == tag
    (folder / "model_manager.py").write_text(GOOD + "\n# edited\n")
    assert resolve(str(folder), None, tmp_path / "clones").tag != tag  # an edit is a new image tag


@pytest.mark.parametrize("as_url", [True, False], ids=["file-url", "folder-with-revision"])
def test_a_local_git_repository_is_cloned_at_its_revision_offline(tmp_path, git_repo, as_url):
    folder, first, head = git_repo
    source = folder.as_uri() if as_url else str(folder)
    clones = tmp_path / "clones"
    at_tag = resolve(source, "v1", clones)
    assert at_tag.commit == first and at_tag.tag == first[:12]
    assert "+= 0.1" in (at_tag.folder / "model_manager.py").read_text()
    assert at_tag.folder.is_relative_to(clones)
    by_commit = resolve(source, first, clones)
    assert by_commit.commit == first
    if as_url:
        default = resolve(source, None, clones)  # the default branch's HEAD, fetched into the same clone
        assert default.commit == head and "+= 0.2" in (default.folder / "model_manager.py").read_text()
        assert default.folder == at_tag.folder
    assert check_repository(at_tag.folder)[0] == []


def test_git_sources_and_revisions_are_checked(tmp_path, git_repo):
    folder, _, _ = git_repo
    with pytest.raises(RepoError, match=r"--revision: .* has no branch, tag or commit 'v9'"):
        resolve(folder.as_uri(), "v9", tmp_path / "clones")
    with pytest.raises(RepoError, match=r"--revision: '--upload-pack=x' is not a branch, tag or commit name"):
        resolve(folder.as_uri(), "--upload-pack=x", tmp_path / "clones")
    with pytest.raises(RepoError, match=r"--ml-repo: cannot clone file:///nowhere/repo.git"):
        resolve("file:///nowhere/repo.git", None, tmp_path / "clones")
    with pytest.raises(RepoError, match=r"--ml-repo: /nowhere is neither a folder nor a git URL"):
        resolve("/nowhere", None, tmp_path / "clones")
    plain = write_repo(tmp_path / "plain")
    with pytest.raises(RepoError, match=r"--revision: .* is a folder, not a git repository"):
        resolve(str(plain), "v1", tmp_path / "clones")


def test_round_clones_a_file_url_and_says_which_revision(tmp_path, git_repo):
    folder, first, _ = git_repo
    done = round_cli(tmp_path, "--ml-repo", folder.as_uri(), "--revision", "v1")
    assert f"ML repository: {folder.as_uri()} at v1 (tag {first[:12]}; requirements.txt: 2 requirements)" \
        in done.stdout, done.stdout + done.stderr
    assert "contract: holds" in done.stdout


# --- flavours ------------------------------------------------------------------------------------------------------


def test_flavor_is_inferred_from_the_model_s_type():
    from sklearn.linear_model import LogisticRegression
    from sklearn.pipeline import make_pipeline

    assert flavors.infer(LogisticRegression()) == "sklearn"
    assert flavors.infer(make_pipeline(LogisticRegression())) == "sklearn"


def framework_class(module: str, name: str, *bases: type) -> type:
    """A class that says it comes from ``module`` (inference reads the module names of the model's classes
    and imports no framework)."""
    return type(name, bases or (object,), {"__module__": module})


def test_flavor_inference_reads_the_classes_module_names():
    torch_module = framework_class("torch.nn.modules.module", "Module")
    net = framework_class("my_repo", "Net", torch_module)
    assert flavors.infer(net()) == "pytorch"
    keras_model = framework_class("keras.src.models.model", "Model")
    # Keras 3 on the torch backend: a Keras model is a torch Module too; it is Keras
    assert flavors.infer(framework_class("my_repo", "CNN", keras_model, torch_module)()) == "keras"
    assert flavors.infer(framework_class("my_repo", "Seq", keras_model)()) == "keras"


@pytest.mark.parametrize("model, what", [
    (np.zeros(3), "numpy.ndarray, which is none of"),
    ({"coef": 1}, "builtins.dict, which is none of"),
])
def test_a_model_of_no_known_flavour_is_an_error_naming_the_flag(model, what):
    with pytest.raises(flavors.FlavorError) as error:
        flavors.infer(model)
    assert what in str(error.value) and "pass --flavor sklearn|pytorch|keras (FLOPS_FLAVOR)" in str(error.value)


def test_a_model_of_two_flavours_is_ambiguous_and_names_the_flag():
    from sklearn.base import BaseEstimator

    both = framework_class("my_repo", "Wrapper", BaseEstimator, framework_class("torch.nn.modules.module", "Module"))
    with pytest.raises(flavors.FlavorError) as error:
        flavors.infer(both())
    assert "is several of (pytorch, sklearn)" in str(error.value) and "pass --flavor" in str(error.value)
    assert flavors.check(both(), "pytorch") == "pytorch"  # --flavor settles it


def test_the_logged_model_s_requirements_are_the_repository_s_at_installed_versions():
    import sklearn

    pinned = flavors.requirements("sklearn", ["scikit-learn>=1.6", "numpy", 'torch==2.13.0+cpu; platform_machine '
                                              '== "armv1"', "--extra-index-url https://example.org/simple"])
    assert pinned[0] == f"scikit-learn=={sklearn.__version__}"
    assert {p.split("==")[0] for p in pinned} == {"scikit-learn", "numpy", "skops"}  # torch: not this machine


# --- the environment cache -------------------------------------------------------------------------------------


def dependencies_of(tmp_path: Path, name: str, requirements: str):
    return read_dependencies(write_repo(tmp_path / name, files={"requirements.txt": requirements}))


def test_the_environment_key_is_the_dependency_set_not_the_file(tmp_path):
    base = environments.key_of(dependencies_of(tmp_path, "a", "numpy>=1.26\ntorch==2.13.0+cpu\n"))
    assert len(base) == 16
    # another repository, comments and blank lines: the same dependency set, the same environment
    assert environments.key_of(dependencies_of(tmp_path, "b", "# mine\nnumpy>=1.26\n\ntorch==2.13.0+cpu  # cpu\n")) \
        == base
    assert environments.key_of(dependencies_of(tmp_path, "c", "numpy>=1.26\ntorch==2.12.0+cpu\n")) != base
    assert environments.key_of(dependencies_of(tmp_path, "d", "numpy>=1.26\n")) != base


def test_a_cached_environment_is_reused_and_named(tmp_path):
    dependencies = dependencies_of(tmp_path, "a", "numpy>=1.26\nno-such-package-here==1.0\n")
    key = environments.key_of(dependencies)
    cached = tmp_path / "envs" / key
    (cached / "bin").mkdir(parents=True)
    (cached / "environment.json").write_text(json.dumps({"key": key, "packages": {}}))
    said = []
    environment = environments.for_repository(dependencies, cache=tmp_path / "envs", progress=said.append)
    assert environment.python == cached / "bin" / "python" and environment.key == key
    assert environment.description == f"virtualenv {cached} (cached, for requirements.txt of this dependency set)"
    assert said == []  # nothing built
    variables = environment.variables(tmp_path / "runtime")
    assert variables["VIRTUAL_ENV"] == str(cached)
    assert (tmp_path / "runtime" / "flops_mlops").resolve() == environments.PACKAGE_DIR  # the code running now


def test_a_half_built_environment_is_not_reused(tmp_path):
    dependencies = dependencies_of(tmp_path, "a", "no-such-package-here==1.0\n")
    (tmp_path / "envs" / environments.key_of(dependencies) / "bin").mkdir(parents=True)  # no environment.json
    with pytest.raises(RepoError, match=r"requirements.txt:1: no-such-package-here==1.0: pip finds no such package"):
        environments.for_repository(dependencies, cache=tmp_path / "envs", progress=lambda *a, **k: None)


def test_this_interpreter_is_used_when_it_meets_the_repository():
    dependencies = read_dependencies(ROOT / "examples" / "sklearn")
    environment = environments.for_repository(dependencies, cache=Path("/nonexistent"))
    assert environment.key is None and environment.python == Path(sys.executable)
    assert "already meets requirements.txt; no virtualenv needed" in environment.description


# --- the learner's data: FLOPS_LEARNER_INDEX, FLOPS_LEARNERS, FLOPS_DATA_DIR --------------------------------------

SEEN = '''
import json, os
from pathlib import Path
_seen = {k: os.environ.get(k) for k in ("FLOPS_LEARNER_INDEX", "FLOPS_LEARNERS", "FLOPS_DATA_DIR", "FLOPS_SEED")}
Path(os.environ["FLOPS_DATA_DIR"], "seen.json").write_text(json.dumps(_seen))
'''


def test_each_learner_gets_its_index_the_count_and_its_own_data_folder(tmp_path):
    settings = FLSettings(learners=3, seed=7)
    assert learner_settings(settings, 2, tmp_path / "data") == {
        "FLOPS_LEARNERS": "3", "FLOPS_SEED": "7", "FLOPS_AGGREGATOR_ADDRESS": "127.0.0.1:8080",
        "FLOPS_LEARNER_INDEX": "2", "FLOPS_DATA_DIR": str(tmp_path / "data" / "learner-2"),
        "FLOPS_TIMEOUT": "600.0", "FLOPS_ROUND_TIMEOUT": "300.0"}
    assert "FLOPS_DATA_DIR" not in learner_settings(settings, 0, None)  # no --data: the repository's own split


def test_the_preflight_runs_as_learner_0_with_its_data_folder(tmp_path):
    from flops_mlops.fl.runner import preflight

    repo = write_repo(tmp_path / "repo", replaced("rng = np.random", SEEN.strip().replace("\n", "\n        ")
                                                  + "\n        rng = np.random"))
    data = tmp_path / "data"
    for i in range(3):
        (data / f"learner-{i}").mkdir(parents=True)
    settings = replace(FLSettings(learners=3, seed=7, project="Mine"), ml_repo=str(repo))
    info = preflight(settings, Runtime.here(), tmp_path / "work", data)
    assert info["violations"] == [] and info["flavor"] == "sklearn"
    assert json.loads((data / "learner-0" / "seen.json").read_text()) == {
        "FLOPS_LEARNER_INDEX": "0", "FLOPS_LEARNERS": "3", "FLOPS_DATA_DIR": str(data / "learner-0"),
        "FLOPS_SEED": "7"}
    assert not (data / "learner-1" / "seen.json").exists()


def test_round_data_needs_a_folder_per_learner(tmp_path):
    (tmp_path / "data" / "learner-0").mkdir(parents=True)
    done = round_cli(tmp_path, "--learners", "2", "--data", str(tmp_path / "data"))
    assert done.returncode == 2
    assert f"--data: {tmp_path / 'data'} has no folder learner-1 (learner i reads DIR/learner-<i>/)" in done.stderr


def test_the_examples_read_their_share_from_the_data_folder(tmp_path):
    """`python data_manager.py DIR --learners K` writes what `round --data DIR` hands out; learner i reads
    DIR/learner-<i>/digits.npz when it is there."""
    example = ROOT / "examples" / "sklearn"
    env = {**os.environ, "PYTHONPATH": str(ROOT / "deploy" / "flops_mlops" / "fl" / "compat")}
    written = subprocess.run([sys.executable, "data_manager.py", str(tmp_path / "data"), "--learners", "3"],
                             cwd=example, env=env, capture_output=True, text=True, check=True)
    assert written.stdout.count("digits, labels") == 3
    code = ("import os; from data_manager import DataManager, share; (x, y), (xt, yt) = DataManager().get_data(); "
            "print(len(y) + len(yt), len(share(1, 3)[1]))")
    read = subprocess.run([sys.executable, "-c", code], cwd=example, capture_output=True, text=True, check=True,
                          env={**env, "FLOPS_LEARNER_INDEX": "1", "FLOPS_LEARNERS": "3",
                               "FLOPS_DATA_DIR": str(tmp_path / "data" / "learner-1")})
    from_folder, computed = read.stdout.split()
    assert from_folder == computed  # learner 1's share, read from its folder
    np.savez(tmp_path / "data" / "learner-1" / "digits.npz", x=np.zeros((30, 64), dtype=np.float32),
             y=np.zeros(30, dtype=np.int64))
    reread = subprocess.run([sys.executable, "-c", code], cwd=example, capture_output=True, text=True, check=True,
                            env={**env, "FLOPS_LEARNER_INDEX": "1", "FLOPS_LEARNERS": "3",
                                 "FLOPS_DATA_DIR": str(tmp_path / "data" / "learner-1")})
    assert reread.stdout.split()[0] == "30"  # the folder's data, not the computed split
