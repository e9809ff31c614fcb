"""FLOps' ML-repository contract, checked: before a project starts (the pre-flight), and on every call while it runs.

The contract (flops_utils.ml_repo_templates, FLOps v0.3.2): ``model_manager.py`` at the repository's root with a
class ``ModelManager`` that takes no arguments and has ``set_model_data()``, ``get_model()``,
``get_model_parameters()``, ``set_model_parameters(parameters)``, ``fit_model() -> int`` and
``evaluate_model() -> (loss, accuracy, n)``; a dependency file (conda.yaml or requirements.txt). Optional:
``get_input_example()`` (rows the model predicts: the logged model's signature and input example).

The pre-flight (``python -m flops_mlops.fl.contract --ml-repo DIR``, run by ``round`` in the project's environment
as learner 0) loads the repository and reports every violation with its file, class and method; exit 2 if any:
- a missing file, class or method, or one with the wrong arguments; a repository that fails to import;
- parameters that do not survive get -> set -> get with the same number, shapes, dtypes and values;
- a model whose flavour cannot be told (or is not the one asked for);
- ``fit_model``/``evaluate_model`` returning the wrong types, on the first learner's first call (its own data).
``ManagedModel`` holds the same checks for the running learners and aggregator: a value of the wrong type is a
ContractError naming the method, never a crash deep in Flower.
"""

from __future__ import annotations

import argparse
import inspect
import json
import numbers
import os
import sys
import traceback
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from . import flavors
from .ml_repo import DEPENDENCY_FILES, dependency_file, import_model_manager

FILE, CLASS = "model_manager.py", "ModelManager"
METHODS = {"set_model_data": 0, "get_model": 0, "get_model_parameters": 0, "set_model_parameters": 1,
           "fit_model": 0, "evaluate_model": 0}
OPTIONAL = {"get_input_example": 0}


@dataclass(frozen=True)
class Violation:
    file: str
    method: str | None
    message: str
    cls: str | None = CLASS

    def __str__(self) -> str:
        where = self.file + (f": {self.cls}" if self.cls else "") + (f".{self.method}" if self.method else "")
        return f"{where}: {self.message}"


class ContractError(Exception):
    """A ModelManager call broke the contract; ``violation`` says where and how."""

    def __init__(self, violation: Violation):
        super().__init__(str(violation))
        self.violation = violation


def failure(exc: BaseException, folder: Path | None = None) -> str:
    """``Type: last line of the message`` (at file:line, the innermost frame inside the repository)."""
    text = str(exc).strip().splitlines()
    where = ""
    if folder is not None:
        frames = [f for f in traceback.extract_tb(exc.__traceback__) if f.filename.startswith(str(folder))]
        if frames:
            where = f" (at {Path(frames[-1].filename).name}:{frames[-1].lineno})"
    return f"{type(exc).__name__}: {text[-1] if text else ''}{where}"


def as_arrays(value: Any, method: str) -> list[np.ndarray]:
    """A parameter list as plain numpy arrays (copies: torch's .numpy() shares memory with the live model)."""
    if not isinstance(value, (list, tuple)):
        raise ContractError(Violation(FILE, method, f"returned {type(value).__name__}, expected a list of numpy "
                                                    "arrays"))
    arrays = []
    for index, item in enumerate(value):
        try:
            array = np.array(item, copy=True)
        except Exception as exc:  # noqa: BLE001 - anything numpy cannot take
            raise ContractError(Violation(FILE, method, f"item {index} is not an array ({failure(exc)})")) from None
        if array.dtype == object or array.dtype.kind == "V":
            raise ContractError(Violation(FILE, method, f"item {index} has dtype {array.dtype}: parameters must be "
                                                        "numeric numpy arrays (they travel without pickle)"))
        arrays.append(array)
    return arrays


def count(value: Any, method: str, what: str) -> int:
    if isinstance(value, bool) or not isinstance(value, numbers.Integral) or int(value) < 0:
        raise ContractError(Violation(FILE, method, f"returned {value!r} ({type(value).__name__}) as {what}, "
                                                    "expected a whole number >= 0"))
    return int(value)


def real(value: Any, method: str, what: str) -> float:
    if isinstance(value, bool) or not isinstance(value, numbers.Real):
        if isinstance(value, np.ndarray) and value.shape == () and value.dtype.kind in "fiu":
            return float(value)
        raise ContractError(Violation(FILE, method, f"returned {value!r} ({type(value).__name__}) as {what}, "
                                                    "expected a number"))
    return float(value)


class ManagedModel:
    """A repository's ModelManager behind the contract's checks; what learners and the aggregator call."""

    def __init__(self, manager: Any):
        self.manager = manager

    def parameters(self) -> list[np.ndarray]:
        return as_arrays(self.manager.get_model_parameters(), "get_model_parameters")

    def set_parameters(self, parameters: list[np.ndarray]) -> None:
        self.manager.set_model_parameters(list(parameters))

    def load_data(self) -> None:
        self.manager.set_model_data()

    def fit(self) -> int:
        return count(self.manager.fit_model(), "fit_model", "the number of training examples")

    def evaluate(self) -> tuple[float, float, int]:
        result = self.manager.evaluate_model()
        if not isinstance(result, (tuple, list)) or len(result) != 3:
            raise ContractError(Violation(FILE, "evaluate_model", f"returned {result!r}, expected (loss, accuracy, "
                                                                  "number of test examples)"))
        return (real(result[0], "evaluate_model", "the loss"), real(result[1], "evaluate_model", "the accuracy"),
                count(result[2], "evaluate_model", "the number of test examples"))

    def model(self) -> Any:
        return self.manager.get_model()

    def input_example(self) -> Any | None:
        method = getattr(self.manager, "get_input_example", None)
        if method is None:
            return None
        example = method()
        if not hasattr(example, "shape") or len(example.shape) < 1 or example.shape[0] < 1:
            raise ContractError(Violation(FILE, "get_input_example", f"returned {type(example).__name__}, expected "
                                                                     "a numpy array or DataFrame of one or more rows"))
        return example


def same_layout(before: list[np.ndarray], after: list[np.ndarray], method: str, values: bool) -> None:
    if len(before) != len(after):
        raise ContractError(Violation(FILE, method, f"{len(after)} arrays after get -> set -> get, {len(before)} "
                                                    "before"))
    for index, (a, b) in enumerate(zip(before, after)):
        if a.shape != b.shape or a.dtype != b.dtype:
            raise ContractError(Violation(FILE, method, f"array {index} is {b.dtype}{list(b.shape)} after get -> set "
                                                        f"-> get, {a.dtype}{list(a.shape)} before"))
        if values and not np.array_equal(a, b, equal_nan=True):
            raise ContractError(Violation(FILE, "set_model_parameters", f"does not take the parameters it is given "
                                                                        f"(array {index} differs after get -> set "
                                                                        "-> get)"))


def _changed(arrays: list[np.ndarray]) -> list[np.ndarray]:
    return [np.logical_not(a) if a.dtype == bool else (a + 1).astype(a.dtype) for a in arrays]


def check_repository(folder: Path, flavor: str | None = None, learner: bool = True) -> tuple[list[Violation], dict]:
    """Every violation of the contract in ``folder`` (empty: it holds), and what the check learnt (the flavour,
    parameter count, whether there is an input example). ``learner``: also load learner 0's data and train and
    evaluate once (this process must be learner 0: FLOPS_LEARNER_INDEX and the data settings)."""
    folder = folder.resolve()
    violations = []
    if not (folder / FILE).is_file():
        violations.append(Violation(FILE, None, "missing: the repository's root must hold it", cls=None))
    if dependency_file(folder) is None:
        violations.append(Violation(" or ".join(DEPENDENCY_FILES), None, "missing: the repository's root must hold "
                                    "a dependency file", cls=None))
    if violations and not (folder / FILE).is_file():
        return violations, {}
    try:
        module = import_model_manager(folder)
    except Exception as exc:  # noqa: BLE001 - whatever the repository raises while importing
        hint = " (a package missing from the dependency file?)" if isinstance(exc, ImportError) else ""
        return [*violations, Violation(FILE, None, f"importing it failed: {failure(exc, folder)}{hint}",
                                       cls=None)], {}
    cls = getattr(module, CLASS, None)
    if not inspect.isclass(cls):
        return [*violations, Violation(FILE, None, f"no class {CLASS} (FLOps' learners and aggregator build "
                                                   f"{CLASS}())", cls=None)], {}
    violations += _method_violations(cls)
    if violations:
        return violations, {}
    return _behaviour(folder, cls, flavor, learner)


def _method_violations(cls: type) -> list[Violation]:
    found = []
    for name, arguments in {**METHODS, **OPTIONAL}.items():
        method = getattr(cls, name, None)
        if method is None:
            if name in METHODS:
                found.append(Violation(FILE, name, "missing"))
            continue
        if getattr(method, "__isabstractmethod__", False):
            found.append(Violation(FILE, name, "not implemented (still the template's abstract method)"))
            continue
        try:
            parameters = list(inspect.signature(method).parameters.values())[1:]  # without self
        except (TypeError, ValueError):
            continue
        required = [p for p in parameters if p.default is p.empty and p.kind in (p.POSITIONAL_ONLY,
                                                                              p.POSITIONAL_OR_KEYWORD)]
        takes = any(p.kind == p.VAR_POSITIONAL for p in parameters) or len(parameters) >= arguments
        if len(required) > arguments or not takes:
            found.append(Violation(FILE, name, f"takes ({', '.join(p.name for p in parameters)}), expected "
                                               f"({'parameters' if arguments else ''}) besides self"))
    return found


def _call(folder: Path, method: str, call, *args):
    try:
        return call(*args)
    except ContractError:
        raise
    except Exception as exc:  # noqa: BLE001 - the repository's own failure, reported where it happened
        raise ContractError(Violation(FILE, method, f"raised {failure(exc, folder)}")) from None


def _behaviour(folder: Path, cls: type, flavor: str | None, learner: bool) -> tuple[list[Violation], dict]:
    violations: list[Violation] = []
    info: dict[str, Any] = {}
    try:
        managed = ManagedModel(_call(folder, "__init__", cls))
        initial = _call(folder, "get_model_parameters", managed.parameters)
        info.update(arrays=len(initial), parameters=int(sum(a.size for a in initial)),
                    bytes=int(sum(a.nbytes for a in initial)))
        _call(folder, "set_model_parameters", managed.set_parameters, _changed(initial))
        same_layout(_changed(initial), _call(folder, "get_model_parameters", managed.parameters),
                    "set_model_parameters", values=True)
        _call(folder, "set_model_parameters", managed.set_parameters, initial)
    except ContractError as exc:
        return [exc.violation], info
    try:
        model = _call(folder, "get_model", managed.model)
        info["flavor"] = flavors.check(model, flavor) if flavor else flavors.infer(model)
        example = _call(folder, "get_input_example", managed.input_example)
        info["input_example"] = example is not None
        if example is not None:
            _call(folder, "get_input_example", flavors.predict, info["flavor"], model, example)
    except flavors.FlavorError as exc:
        violations.append(Violation(FILE, "get_model", str(exc)))
    except ContractError as exc:
        violations.append(exc.violation)
    if learner:
        try:
            trainee = ManagedModel(_call(folder, "__init__", cls))
            _call(folder, "set_model_data", trainee.load_data)
            _call(folder, "set_model_parameters", trainee.set_parameters, initial)
            info["train_examples"] = _call(folder, "fit_model", trainee.fit)
            same_layout(initial, _call(folder, "get_model_parameters", trainee.parameters), "fit_model",
                        values=False)
            info["eval"] = _call(folder, "evaluate_model", trainee.evaluate)
        except ContractError as exc:
            violations.append(exc.violation)
    return violations, info


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m flops_mlops.fl.contract",
                                     description="check an ML repository against FLOps' contract (exit 2: "
                                                 "violations, each with its file, class and method)")
    parser.add_argument("--ml-repo", required=True, type=Path, help="the repository's folder")
    parser.add_argument("--flavor", choices=flavors.FLAVORS, default=None, help="default: inferred from get_model()")
    parser.add_argument("--no-learner", action="store_true",
                        help="skip loading learner 0's data and training once (no data on this machine)")
    parser.add_argument("--json", action="store_true", help="one JSON line: violations and what was learnt")
    args = parser.parse_args(argv)
    if not args.no_learner:
        os.environ.setdefault("FLOPS_LEARNER_INDEX", "0")
    violations, info = check_repository(args.ml_repo, args.flavor, learner=not args.no_learner)
    if args.json:
        print(json.dumps({"violations": [str(v) for v in violations], **info}, default=str), flush=True)
    else:
        for violation in violations:
            print(f"violation: {violation}", file=sys.stderr)
        if not violations:
            print(f"{args.ml_repo}: the contract holds ({json.dumps(info, default=str)})")
    return 2 if violations else 0


if __name__ == "__main__":
    sys.exit(main())
