"""This learner's share of scikit-learn's bundled digits (8x8 images of 0-9; nothing is downloaded), non-IID.

The digits are shuffled with FLOPS_SEED (default 42); a fifth is held out (no learner gets it: the input example
comes from there), and the rest is split across FLOPS_LEARNERS learners by label: each label's examples are
divided by a Dirichlet draw (alpha 0.5), so learners see different mixes of digits. Learner FLOPS_LEARNER_INDEX
keeps 80% of its share for training and 20% for evaluation.

When FLOPS_DATA_DIR (``round --data DIR`` gives learner i DIR/learner-<i>/) holds ``digits.npz``, the learner reads
its share from there instead; ``python data_manager.py DIR --learners K`` writes those folders.
"""

import argparse
import os
from pathlib import Path

import numpy as np
from sklearn.datasets import load_digits

try:
    from flops_utils.ml_repo_templates import DataManagerTemplate
except ImportError:  # run as a script (writing the learners' folders) outside the FL runtime, which provides it
    DataManagerTemplate = object

ALPHA = 0.5
MIN_PER_LEARNER = 20


def _shuffled(seed):
    x, y = load_digits(return_X_y=True)
    order = np.random.default_rng(seed).permutation(len(y))
    x, y = (x[order] / 16.0).astype(np.float32), y[order].astype(np.int64)
    cut = int(len(y) * 0.8)
    return (x[:cut], y[:cut]), (x[cut:], y[cut:])


def held_out(seed=42):
    """Digits no learner holds."""
    return _shuffled(seed)[1]


def share(index, learners, seed=42):
    """Learner ``index``'s (x, y): per label, a Dirichlet share; at least MIN_PER_LEARNER examples each."""
    (x, y), _ = _shuffled(seed)
    rng = np.random.default_rng(seed + 1)
    shares = [[] for _ in range(learners)]
    for label in range(10):
        members = rng.permutation(np.flatnonzero(y == label))
        cuts = (np.cumsum(rng.dirichlet([ALPHA] * learners))[:-1] * len(members)).astype(int)
        for learner, part in enumerate(np.split(members, cuts)):
            shares[learner].extend(part.tolist())
    for learner in range(learners):
        while len(shares[learner]) < MIN_PER_LEARNER:
            shares[learner].append(shares[max(range(learners), key=lambda i: len(shares[i]))].pop())
    mine = np.sort(np.array(shares[index], dtype=int))
    return x[mine], y[mine]


class DataManager(DataManagerTemplate):
    def __init__(self):
        (self.x_train, self.y_train), (self.x_test, self.y_test) = self._prepare_data()

    def _prepare_data(self):
        own = Path(os.environ.get("FLOPS_DATA_DIR") or "/nonexistent") / "digits.npz"
        if own.is_file():
            with np.load(own) as data:
                x, y = data["x"], data["y"]
        else:
            x, y = share(int(os.environ["FLOPS_LEARNER_INDEX"]), int(os.environ.get("FLOPS_LEARNERS", "2")),
                         int(os.environ.get("FLOPS_SEED", "42")))
        cut = int(len(y) * 0.8)
        return (x[:cut], y[:cut]), (x[cut:], y[cut:])

    def get_data(self):
        return (self.x_train, self.y_train), (self.x_test, self.y_test)


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description="write each learner's share to DIR/learner-<i>/digits.npz")
    parser.add_argument("folder")
    parser.add_argument("--learners", type=int, default=2)
    parser.add_argument("--seed", type=int, default=42)
    args = parser.parse_args()
    for i in range(args.learners):
        x, y = share(i, args.learners, args.seed)
        (Path(args.folder) / f"learner-{i}").mkdir(parents=True, exist_ok=True)
        np.savez(Path(args.folder) / f"learner-{i}" / "digits.npz", x=x, y=y)
        print(f"learner-{i}: {len(y)} digits, labels {sorted(set(y.tolist()))}")
