"""Synthetic data for an FL project: generated locally from a seed, split non-IID across learners.

Every process derives the same data from the same seed, so nothing is downloaded or shipped: learner i
takes its own share, the aggregator takes the held-out set (for the model's input example and for
tests). The split is label-skewed: each class is divided among learners by a Dirichlet draw, so
learners see different class mixes (non-IID), and every learner still gets at least a few examples.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from sklearn.datasets import make_classification

FEATURES = 8
CLASSES = 3
SAMPLES = 1800
HELD_OUT_FRACTION = 0.2
VALIDATION_FRACTION = 0.2
DIRICHLET_ALPHA = 0.6
MIN_PER_LEARNER = 20


@dataclass(frozen=True)
class Split:
    x_train: np.ndarray
    y_train: np.ndarray
    x_eval: np.ndarray
    y_eval: np.ndarray


def _dataset(seed: int) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    x, y = make_classification(n_samples=SAMPLES, n_features=FEATURES, n_informative=5, n_redundant=1,
                               n_classes=CLASSES, n_clusters_per_class=1, class_sep=1.2, random_state=seed)
    x = x.astype(np.float32)
    order = np.random.default_rng(seed).permutation(len(y))
    x, y = x[order], y[order]
    cut = int(len(y) * (1 - HELD_OUT_FRACTION))
    return x[:cut], y[:cut], x[cut:], y[cut:]


def held_out(seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Examples no learner ever sees (the aggregator's input example; tests score the model on them)."""
    _, _, x, y = _dataset(seed)
    return x, y


def partition_indices(y: np.ndarray, learners: int, seed: int) -> list[np.ndarray]:
    """Label-skewed shares of ``y``'s indices, one per learner, disjoint and covering everything."""
    if learners < 1:
        raise ValueError("need at least one learner")
    if len(y) < learners * MIN_PER_LEARNER:
        raise ValueError(f"{len(y)} examples are too few for {learners} learners")
    rng = np.random.default_rng(seed + 1)
    shares: list[list[int]] = [[] for _ in range(learners)]
    for label in np.unique(y):
        members = rng.permutation(np.flatnonzero(y == label))
        weights = rng.dirichlet([DIRICHLET_ALPHA] * learners)
        cuts = (np.cumsum(weights)[:-1] * len(members)).astype(int)
        for learner, part in enumerate(np.split(members, cuts)):
            shares[learner].extend(part.tolist())
    # Guarantee a minimum per learner by moving examples from the largest share.
    for learner in range(learners):
        while len(shares[learner]) < MIN_PER_LEARNER:
            donor = max(range(learners), key=lambda i: len(shares[i]))
            shares[learner].append(shares[donor].pop())
    return [np.sort(np.array(share, dtype=int)) for share in shares]


def learner_split(seed: int, learners: int, index: int) -> Split:
    """Learner ``index``'s local training and evaluation data."""
    if not 0 <= index < learners:
        raise ValueError(f"learner index {index} is outside 0..{learners - 1}")
    x, y, _, _ = _dataset(seed)
    mine = partition_indices(y, learners, seed)[index]
    x, y = x[mine], y[mine]
    cut = max(1, int(len(y) * (1 - VALIDATION_FRACTION)))
    return Split(x[:cut], y[:cut], x[cut:], y[cut:])
