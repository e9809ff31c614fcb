"""The one best global model the aggregator keeps on disk (``best.npz`` + ``best.json`` in the model folder).

"Better" is configurable: ``loss`` (default) means a strictly lower aggregated evaluation loss, ``accuracy`` a
strictly higher aggregated accuracy; ties keep the earlier round. The files are replaced (atomically) only by a
better round.
"""

from __future__ import annotations

import json
import os
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np

BETTER = {"loss": "lowest aggregated evaluation loss", "accuracy": "highest aggregated accuracy"}


@dataclass(frozen=True)
class RoundResult:
    round: int
    loss: float
    accuracy: float
    train_examples: int
    eval_examples: int
    wall_time: float


def is_better(candidate: RoundResult, best: RoundResult | None, criterion: str) -> bool:
    """Strictly better than ``best`` under ``criterion`` (ties keep the earlier round)."""
    if criterion not in BETTER:
        raise ValueError(f"better: {criterion!r} is not one of {', '.join(BETTER)}")
    if not np.isfinite(candidate.loss):
        return False
    if best is None:
        return True
    if criterion == "loss":
        return candidate.loss < best.loss
    return candidate.accuracy > best.accuracy


class BestModel:
    """The one best global model on disk: ``best.npz`` (parameter arrays) and ``best.json`` (its round)."""

    def __init__(self, folder: Path, criterion: str = "loss"):
        if criterion not in BETTER:
            raise ValueError(f"better: {criterion!r} is not one of {', '.join(BETTER)}")
        self.folder = Path(folder)
        self.criterion = criterion
        self.result: RoundResult | None = None

    @property
    def arrays_file(self) -> Path:
        return self.folder / "best.npz"

    @property
    def info_file(self) -> Path:
        return self.folder / "best.json"

    def reset(self) -> None:
        """Forget a previous training's best model (a new training starts from round 1)."""
        self.arrays_file.unlink(missing_ok=True)
        self.info_file.unlink(missing_ok=True)
        self.result = None

    def offer(self, result: RoundResult, params: list[np.ndarray]) -> bool:
        """Keep ``params`` if this round is better than the kept one; True if it replaced it."""
        if not is_better(result, self.result, self.criterion):
            return False
        self.folder.mkdir(parents=True, exist_ok=True)
        tmp = self.folder / ".best.npz.tmp"
        with open(tmp, "wb") as out:
            np.savez(out, *params)
        os.replace(tmp, self.arrays_file)
        info_tmp = self.folder / ".best.json.tmp"
        info_tmp.write_text(json.dumps({**asdict(result), "criterion": self.criterion}) + "\n", encoding="utf-8")
        os.replace(info_tmp, self.info_file)
        self.result = result
        return True

    def kept(self) -> RoundResult | None:
        """The round of the model on disk (a training's, this process's or an earlier one's), or None."""
        if not (self.arrays_file.exists() and self.info_file.exists()):
            return None
        info = json.loads(self.info_file.read_text(encoding="utf-8"))
        info.pop("criterion", None)
        return RoundResult(**info)

    def load(self) -> list[np.ndarray]:
        with np.load(self.arrays_file) as data:
            return [data[f"arr_{i}"] for i in range(len(data.files))]
