"""The two classes an ML repository implements, as FLOps declares them (addon-FLOps v0.3.2,
``utils_library/flops_utils/ml_repo_templates.py``): the same names, methods and signatures, all abstract.

flops-mlops adds one optional method, which these templates do not require: ``ModelManager.get_input_example()``
returns a few rows the model can predict (not a learner's data: the aggregator calls it); the best model is then
logged with a signature and that input example.
"""

from abc import ABC, abstractmethod
from typing import Any, Tuple


class DataManagerTemplate(ABC):
    """Loads and prepares one learner's data."""

    @abstractmethod
    def _prepare_data(self) -> Any:
        """Load this learner's data (e.g. with ``flops_utils.ml_repo_building_blocks.load_dataset``), then
        preprocess it."""

    @abstractmethod
    def get_data(self) -> Tuple[Any, Any]:
        """The prepared data, e.g. ``(training_data, testing_data)``; called by the ModelManager."""


class ModelManagerTemplate(ABC):
    """The model: built in ``__init__`` (no data there: the aggregator builds it too), trained by learners."""

    @abstractmethod
    def set_model_data(self) -> None:
        """Load this learner's data (e.g. ``DataManager().get_data()``). Learners call it; the aggregator never
        does."""

    @abstractmethod
    def get_model(self) -> Any:
        """The framework's own model object (what MLflow's flavour logs)."""

    @abstractmethod
    def get_model_parameters(self) -> Any:
        """The model's parameters as a list of numpy arrays."""

    @abstractmethod
    def set_model_parameters(self, parameters) -> None:
        """Take the parameters (a list of numpy arrays as ``get_model_parameters`` returns them)."""

    @abstractmethod
    def fit_model(self) -> int:
        """Train on this learner's data; return the number of training examples."""

    @abstractmethod
    def evaluate_model(self) -> Tuple[Any, Any, int]:
        """Evaluate on this learner's test data; return ``(loss, accuracy, number of test examples)``."""
