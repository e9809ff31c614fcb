"""Model flavours (FLOps' names: sklearn, pytorch, keras): which one a model is, how it predicts, how it is logged.

Inference walks the classes of ``get_model()``'s type by module name, so it never imports a framework: a
scikit-learn estimator (``sklearn``), a Keras model (``keras``), a ``torch.nn.Module`` (``pytorch``). A Keras 3 model
on the torch backend is a torch Module too: it is Keras. Anything else, or a model of two families, needs
``--flavor``.

Logging (the aggregator, once, after the last round) uses that flavour's MLflow module, with the repository's
requirements pinned to the versions installed here, a signature inferred from the input example and the model's
prediction on it, and the example itself:
- sklearn: ``mlflow.sklearn`` (skops format);
- pytorch: ``mlflow.pytorch``; with an input example MLflow's default pt2 (torch.export: served without the
  repository's code); without one, its pickle format with the model's module pickled by value;
- keras: ``mlflow.keras`` (Keras 3: records the backend), through ``mlflow.models.Model.log`` with a save function
  that creates the model folder first (mlflow/mlflow#16183: logging an input example fails otherwise).
Without an input example there is no signature; the caller says so.
"""

from __future__ import annotations

import importlib.metadata
import os
import sys
import types
from typing import Any

import numpy as np
from packaging.requirements import Requirement

from .settings import FLAVORS

MLFLOW_MODULE = {"sklearn": "mlflow.sklearn", "pytorch": "mlflow.pytorch", "keras": "mlflow.keras"}
WHAT = {"sklearn": "a scikit-learn estimator", "pytorch": "a torch.nn.Module", "keras": "a Keras model"}


class FlavorError(ValueError):
    """The model's flavour cannot be told, or is not the one asked for; the message names --flavor."""


def type_name(model: Any) -> str:
    kind = type(model)
    return f"{kind.__module__}.{kind.__qualname__}"


def families(model: Any) -> set[str]:
    """The flavours ``model``'s classes belong to (by module name; nothing is imported)."""
    found = set()
    for cls in type(model).__mro__:
        module = cls.__module__ or ""
        root = module.split(".")[0]
        if root == "sklearn":
            found.add("sklearn")
        elif root in ("keras", "tf_keras") or module.startswith("tensorflow.python.keras"):
            found.add("keras")
        elif module == "torch.nn.modules.module" and cls.__name__ == "Module":
            found.add("pytorch")
    return found


def infer(model: Any) -> str:
    found = families(model)
    if "keras" in found:
        found.discard("pytorch")  # Keras 3 on the torch backend: its models are torch Modules too
    if len(found) == 1:
        return found.pop()
    what = "is none of" if not found else f"is several of ({', '.join(sorted(found))})"
    raise FlavorError(f"get_model() returns {type_name(model)}, which {what} {', '.join(WHAT.values())}: the "
                      "flavour is ambiguous; pass --flavor sklearn|pytorch|keras (FLOPS_FLAVOR)")


def check(model: Any, flavor: str) -> str:
    """``flavor`` if ``model`` can be logged with it, else a FlavorError."""
    if flavor not in FLAVORS:
        raise FlavorError(f"--flavor: {flavor!r} is not one of {', '.join(FLAVORS)}")
    if flavor not in families(model):
        raise FlavorError(f"get_model() returns {type_name(model)}, not {WHAT[flavor]}: --flavor {flavor} cannot log "
                          f"it with {MLFLOW_MODULE[flavor]}")
    return flavor


def predict(flavor: str, model: Any, example: Any) -> np.ndarray:
    """The model's output for ``example``, as the flavour's pyfunc model would give it."""
    if flavor == "sklearn":
        return np.asarray(model.predict(example))
    if flavor == "pytorch":
        import torch

        model.eval()
        with torch.no_grad():
            return model(torch.as_tensor(np.asarray(example))).cpu().numpy()
    return np.asarray(model.predict(example, verbose=0))


# --- logging ------------------------------------------------------------------------------------------------


def requirements(flavor: str, repository: list[str] | tuple[str, ...]) -> list[str]:
    """The logged model's pip requirements: the repository's packages (its dependency file) at the versions
    installed here, plus what the flavour needs to load (skops; keras' backend)."""
    names: list[str] = []
    for line in repository:
        if line.startswith("-"):
            continue
        requirement = Requirement(line)
        if requirement.marker is None or requirement.marker.evaluate({"extra": ""}):
            names.append(requirement.name)
    names += {"sklearn": ["scikit-learn", "skops"], "pytorch": ["torch"],
              "keras": ["keras", os.environ.get("KERAS_BACKEND", "tensorflow")]}[flavor]
    pinned: dict[str, str] = {}
    for name in names:
        try:
            pinned.setdefault(name.lower(), f"{name}=={importlib.metadata.version(name)}")
        except importlib.metadata.PackageNotFoundError:
            continue
    return list(pinned.values())


def prepare(flavor: str) -> None:
    """Import what logging will need, while the rounds run: seconds for keras and torch, so that the last round's
    model reaches the registry that much sooner. For torch that includes torch.export (and with it torch._dynamo,
    1.5 s here), which mlflow.pytorch saves with when there is an input example (MLflow 3.17's default format,
    pt2). It also fills MLflow's module -> package map, which logging consults to compare the model's
    requirements with this environment (0.5 s here); only a head start: without it logging does it itself."""
    import mlflow.models  # noqa: F401
    import mlflow.utils.requirements_utils as requirements_utils

    importlib.import_module(MLFLOW_MODULE[flavor])
    if flavor == "pytorch":
        try:  # torch.export.export imports its tracer (and torch._dynamo) on first use
            importlib.import_module("torch.export._trace")
        except ImportError:
            pass
    warm = getattr(requirements_utils, "_init_modules_to_packages_map", None)
    if warm is not None:
        warm()


def log_model(flavor: str, model: Any, example: Any | None, pip_requirements: list[str], registered_name: str,
              metadata: dict[str, str]):
    """Log ``model`` as ``model`` in the active run and register it; returns MLflow's ModelInfo."""
    import mlflow
    from mlflow.models import infer_signature

    signature = infer_signature(example, predict(flavor, model, example)) if example is not None else None
    common = {"signature": signature, "input_example": example, "pip_requirements": pip_requirements,
              "registered_model_name": registered_name, "metadata": metadata}
    if flavor == "sklearn":
        import mlflow.sklearn

        return mlflow.sklearn.log_model(model, name="model", **common)
    if flavor == "pytorch":
        import mlflow.pytorch

        if example is None:  # pt2 needs an example; pickle by value, so loading needs no repository code
            import cloudpickle

            module = sys.modules.get(type(model).__module__)
            if module is not None and module.__name__ != "__main__":
                cloudpickle.register_pickle_by_value(module)
            return mlflow.pytorch.log_model(model, name="model", serialization_format="pickle", **common)
        return mlflow.pytorch.log_model(model, name="model", **common)
    import mlflow.keras

    def save_model(path, **kwargs):
        os.makedirs(path, exist_ok=True)  # mlflow/mlflow#16183: the input example is written before the folder
        return mlflow.keras.save_model(path=path, **kwargs)

    flavor_module = types.SimpleNamespace(__name__="mlflow.keras", save_model=save_model)
    return mlflow.models.Model.log(artifact_path=None, name="model", flavor=flavor_module, model=model, **common)
