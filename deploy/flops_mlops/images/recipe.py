"""Build one of our images without a Docker daemon, from a recipe: what its Dockerfile target holds, said as data.

Per platform: a Debian minbase root filesystem with the recipe's packages and its account (images.debian); when
the recipe has a Python requirement, a venv at /opt/venv with that platform's wheels installed without emulation,
minus what the image's process never imports (images.wheels); the recipe's own files; then any layers the caller
adds (the baked model). Written as one OCI image index (images.oci). Same inputs (files, lock, Debian mirror
state, SOURCE_DATE_EPOCH) give the same digest.
"""

from __future__ import annotations

import os
import re
import shutil
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from .. import bundled
from ..processes import StackError
from . import debian, oci, wheels
from .platforms import Platform

EPOCH = 1735689600  # 2025-01-01: every timestamp in the image, unless SOURCE_DATE_EPOCH says otherwise
PATH = "PATH=/opt/venv/bin:/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"
QUIET_PYTHON = ["PYTHONUNBUFFERED=1", "MLFLOW_DISABLE_TELEMETRY=true", "DO_NOT_TRACK=true"]


@dataclass(frozen=True)
class Account:
    """A system account of the image, written into /etc/passwd and /etc/group (what useradd --system writes,
    without running it under emulation); ``home`` None: no home folder (/nonexistent)."""
    name: str
    uid: int
    home: str | None = None
    private: tuple[str, ...] = ()  # folders under home the account owns with mode 0700


@dataclass(frozen=True)
class Recipe:
    name: str  # the image's name after flops-mlops/, and its Dockerfile target
    packages: tuple[str, ...]  # Debian packages beyond minbase
    accounts: tuple[Account, ...]
    config: dict  # the OCI config's "config": Env, User, Entrypoint, ...
    requirement: str | None = None  # installed into /opt/venv, pinned by the lock; None: no venv
    pip_requirements: tuple[str, ...] = ()  # pip's arguments for it when not its name (-r FILE)
    constraints: Path | None = None  # the pins (default: the lock, deploy/images/constraints.txt)
    find_links: tuple[Path, ...] = ()  # wheel folders pip looks in besides ours and the images' wheelhouse
    leave_out: frozenset[str] = frozenset()  # distributions the image's process never imports
    compile_for: tuple[str, ...] = ()  # bytecode for what importing these loads (none named: for every module)
    files: tuple[tuple[str, str, int], ...] = ()  # (path in the checkout, path in the image, mode)
    summary: list[str] = field(default_factory=list)


def epoch() -> int:
    return int(os.environ.get("SOURCE_DATE_EPOCH", EPOCH))


def project_name(wheel: Path) -> str:
    return re.sub(r"[-_.]+", "-", wheel.name.split("-")[0]).lower()


Layers = Callable[[Platform, Path], list[tuple[Path, str]]]


def build(recipe: Recipe, platforms: list[Platform], out: Path, tag: str, labels: dict[str, str] | None = None,
          more_layers: Layers | None = None, progress=print) -> str:
    """Write the image index of ``recipe`` for ``platforms`` to ``out``; returns its digest. ``more_layers``
    gives, per platform and work folder, further (folder, history line) layers on top."""
    stamp = epoch()
    constraints = recipe.constraints or bundled.CHECKOUT / "deploy" / "images" / "constraints.txt"
    requirements = list(recipe.pip_requirements) or [recipe.requirement or ""]
    with tempfile.TemporaryDirectory(prefix=f"flops-{recipe.name}-oci-") as folder:
        work = Path(folder)
        own, pure = work / "own", work / "host-wheels"
        if recipe.requirement:
            wheels.own_wheel(own)
            progress("wheels for this machine (pure-Python ones serve every platform)", flush=True)
            wheels.host_wheels(requirements, constraints,
                               [own, bundled.CHECKOUT / "deploy" / "images" / "wheelhouse", *recipe.find_links], pure)
        # what the server's start imports, found once in this machine's venv: the same names on every platform
        compile_only = wheels.imported_files(recipe.compile_for) if recipe.compile_for else None
        images = []
        for arch in platforms:
            started = time.monotonic()
            here = work / arch.debian
            base = here / "base"
            packages = ("python3", *recipe.packages) if recipe.requirement else recipe.packages
            progress(f"{arch.name}: Debian {debian.SUITE} minbase with {', '.join(packages)} (mmdebstrap)",
                     flush=True)
            debian.root_filesystem(base, arch, list(packages), stamp)
            for account in recipe.accounts:
                add_account(base, account)
            layers = [(base, f"Debian {debian.SUITE} minbase, {', '.join(packages)}, accounts "
                             f"{', '.join(f'{a.name} ({a.uid})' for a in recipe.accounts)}")]
            if recipe.requirement:
                found = here / "wheels"
                wheels.platform_wheels(arch, requirements, constraints, [own, pure], found)
                chosen = sorted(w for w in found.glob("*.whl") if project_name(w) not in recipe.leave_out)
                progress(f"{arch.name}: {len(chosen)} wheels into /opt/venv", flush=True)
                wheels.install_venv(here / "venv", arch, chosen, stamp, compile_only)
                layers.append((here / "venv", f"/opt/venv: {len(chosen)} wheels for {arch.name} "
                                              f"({recipe.requirement} without {len(recipe.leave_out)})"))
            if recipe.files:
                place_files(recipe.files, here / "files")
                layers.append((here / "files", ", ".join(dest for _, dest, _ in recipe.files)))
            if more_layers is not None:
                layers += more_layers(arch, here)
            config = {**recipe.config, "Labels": {**recipe.config.get("Labels", {}), **(labels or {})}}
            images.append(oci.PlatformImage(arch, [folder for folder, _ in layers], config,
                                            [line for _, line in layers]))
            progress(f"{arch.name}: prepared in {time.monotonic() - started:.0f} s", flush=True)
        progress(f"writing the image index to {out}", flush=True)
        return oci.write(out, images, tag, stamp)


def add_account(root: Path, account: Account) -> None:
    home = account.home or "/nonexistent"
    with open(root / "etc" / "passwd", "a", encoding="utf-8") as passwd:
        passwd.write(f"{account.name}:x:{account.uid}:{account.uid}::{home}:/usr/sbin/nologin\n")
    with open(root / "etc" / "group", "a", encoding="utf-8") as group:
        group.write(f"{account.name}:x:{account.uid}:\n")
    if account.home is None:
        return
    folder = root / account.home.lstrip("/")
    folder.mkdir(parents=True)
    os.chown(folder, account.uid, account.uid)
    for name in account.private:
        private = folder / name
        private.mkdir(parents=True)
        os.chown(private, account.uid, account.uid)
        private.chmod(0o700)


def place_files(files: tuple[tuple[str, str, int], ...], layer: Path) -> None:
    """The recipe's files from the checkout at their places in the image, owned by root, with their modes (the
    folders created for them 0755)."""
    for source, dest, mode in files:
        if not (bundled.CHECKOUT / source).is_file():
            raise StackError(f"{source}: not found in {bundled.CHECKOUT}; images are built from a checkout")
        target = layer / dest.lstrip("/")
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(bundled.CHECKOUT / source, target)
        target.chmod(mode)
    for folder in [layer, *(p for p in layer.rglob("*") if p.is_dir())]:
        folder.chmod(0o755)
