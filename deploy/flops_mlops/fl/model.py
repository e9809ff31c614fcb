"""The model: multinomial logistic regression whose parameters travel as two numpy arrays.

Parameters are ``[coef (classes x features), intercept (classes)]``. Learners train them locally with
full-batch gradient descent on the softmax cross-entropy (plain numpy: fast, deterministic, no
estimator state to carry between rounds); the aggregator turns the global parameters into a fitted
scikit-learn ``LogisticRegression`` for logging and serving.
"""

from __future__ import annotations

import numpy as np
from sklearn.linear_model import LogisticRegression

from .data import CLASSES, FEATURES

Parameters = list[np.ndarray]


def initial_parameters() -> Parameters:
    return [np.zeros((CLASSES, FEATURES), dtype=np.float64), np.zeros(CLASSES, dtype=np.float64)]


def _probabilities(params: Parameters, x: np.ndarray) -> np.ndarray:
    logits = x @ params[0].T + params[1]
    logits -= logits.max(axis=1, keepdims=True)
    exp = np.exp(logits)
    return exp / exp.sum(axis=1, keepdims=True)


def train(params: Parameters, x: np.ndarray, y: np.ndarray, epochs: int, learning_rate: float,
          l2: float = 1e-3) -> Parameters:
    """``epochs`` steps of full-batch gradient descent from ``params``; returns new arrays."""
    coef, intercept = params[0].astype(np.float64).copy(), params[1].astype(np.float64).copy()
    onehot = np.eye(CLASSES)[y]
    for _ in range(epochs):
        error = _probabilities([coef, intercept], x) - onehot
        coef -= learning_rate * (error.T @ x / len(y) + l2 * coef)
        intercept -= learning_rate * error.mean(axis=0)
    return [coef, intercept]


def evaluate(params: Parameters, x: np.ndarray, y: np.ndarray) -> tuple[float, float]:
    """(mean cross-entropy loss, accuracy) of ``params`` on ``x``, ``y``."""
    if len(y) == 0:
        return 0.0, 0.0
    probs = _probabilities(params, x)
    loss = float(-np.log(np.clip(probs[np.arange(len(y)), y], 1e-12, None)).mean())
    accuracy = float((probs.argmax(axis=1) == y).mean())
    return loss, accuracy


def to_sklearn(params: Parameters) -> LogisticRegression:
    """A fitted LogisticRegression that predicts exactly like ``params``."""
    model = LogisticRegression()
    model.classes_ = np.arange(CLASSES)
    model.coef_ = np.asarray(params[0], dtype=np.float64)
    model.intercept_ = np.asarray(params[1], dtype=np.float64)
    model.n_features_in_ = FEATURES
    model.n_iter_ = np.array([0], dtype=np.int32)
    return model
