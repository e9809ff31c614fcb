"""The baked model image without a Docker daemon: the model-server recipe (images.catalog) with the model's files
in /srv/model/baked as a layer of their own (`build-model-image --out`). Same inputs (model files, lock, mirror
state, SOURCE_DATE_EPOCH) give the same index digest.
"""

from __future__ import annotations

import os
import shutil
from dataclasses import replace
from pathlib import Path

from ..images import recipe
from ..images.catalog import RECIPES
from ..images.platforms import Platform

MODEL_SERVER = RECIPES["model-server"]
(ACCOUNT,) = MODEL_SERVER.accounts


def build(model: Path, platforms: list[Platform], out: Path, tag: str, environment: dict[str, str],
          labels: dict[str, str], progress=print) -> str:
    """Write the image index of ``model`` baked on the model server to ``out``; returns its digest.
    ``environment`` is added to the model server's (the served model's FLOPS_SERVE_* settings)."""
    env = [line for line in MODEL_SERVER.config["Env"] if line.split("=", 1)[0] not in environment]
    env += [f"{name}={value}" for name, value in environment.items()]
    baked = replace(MODEL_SERVER, config={**MODEL_SERVER.config, "Env": env})

    def model_layer(arch: Platform, work: Path) -> list[tuple[Path, str]]:
        place_model(model, work / "model")
        return [(work / "model", "the model's files in /srv/model/baked")]

    return recipe.build(baked, platforms, out, tag, labels, model_layer, progress)


def place_model(model: Path, layer: Path) -> None:
    """The model's files at /srv/model/baked in the layer, owned by the user (its home's owner and mode kept)."""
    home = layer / ACCOUNT.home.lstrip("/")
    shutil.copytree(model, home / "baked", ignore=shutil.ignore_patterns("__pycache__"))
    for path in [home, *home.rglob("*")]:
        os.chown(path, ACCOUNT.uid, ACCOUNT.uid, follow_symlinks=False)
        if not path.is_symlink():
            path.chmod(0o755 if path.is_dir() else 0o644)
    (layer / "srv").chmod(0o755)
    home.chmod(0o755)
