"""Multinomial logistic regression on the digits, trained by full-batch gradient descent in plain numpy.

Parameters travel as ``[coef (10 x 64), intercept (10)]``; learners take FLOPS' global parameters, run
EPOCHS steps on their own share, and return them. ``get_model()`` is a fitted scikit-learn LogisticRegression
that predicts exactly like the parameters (what MLflow's sklearn flavour logs and serves).
"""

import numpy as np
from data_manager import DataManager, held_out
from flops_utils.ml_repo_templates import ModelManagerTemplate
from sklearn.linear_model import LogisticRegression

CLASSES, FEATURES = 10, 64
EPOCHS, LEARNING_RATE, L2 = 20, 0.5, 1e-3


def _probabilities(coef, intercept, x):
    logits = x @ coef.T + intercept
    logits -= logits.max(axis=1, keepdims=True)
    exp = np.exp(logits)
    return exp / exp.sum(axis=1, keepdims=True)


class ModelManager(ModelManagerTemplate):
    def __init__(self):
        self.coef = np.zeros((CLASSES, FEATURES), dtype=np.float64)
        self.intercept = np.zeros(CLASSES, dtype=np.float64)

    def set_model_data(self):
        (self.x_train, self.y_train), (self.x_test, self.y_test) = DataManager().get_data()

    def get_model(self):
        model = LogisticRegression()
        model.classes_ = np.arange(CLASSES)
        model.coef_, model.intercept_ = self.coef.copy(), self.intercept.copy()
        model.n_features_in_ = FEATURES
        model.n_iter_ = np.array([0], dtype=np.int32)
        return model

    def get_model_parameters(self):
        return [self.coef.copy(), self.intercept.copy()]

    def set_model_parameters(self, parameters):
        self.coef, self.intercept = (np.array(p, dtype=np.float64) for p in parameters)

    def fit_model(self):
        onehot = np.eye(CLASSES)[self.y_train]
        for _ in range(EPOCHS):
            error = _probabilities(self.coef, self.intercept, self.x_train) - onehot
            self.coef -= LEARNING_RATE * (error.T @ self.x_train / len(self.y_train) + L2 * self.coef)
            self.intercept -= LEARNING_RATE * error.mean(axis=0)
        return len(self.y_train)

    def evaluate_model(self):
        probabilities = _probabilities(self.coef, self.intercept, self.x_test)
        rows = np.arange(len(self.y_test))
        loss = float(-np.log(np.clip(probabilities[rows, self.y_test], 1e-12, None)).mean())
        accuracy = float((probabilities.argmax(axis=1) == self.y_test).mean())
        return loss, accuracy, len(self.y_test)

    def get_input_example(self):
        """Five held-out digits (no learner's data): the logged model's input example and signature."""
        return held_out()[0][:5]
