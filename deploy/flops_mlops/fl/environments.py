"""The Python environment an FL project runs in on this machine: one virtualenv per dependency set, cached.

An environment holds the repository's dependencies plus our FL runtime (the dependencies of flops-mlops[fl]).
Its key hashes the repository's requirements (from its dependency file), the runtime's requirements and this
Python; the virtualenv lives in ``<cache>/<key>/`` and is built once, then reused by every project with the same
dependency set (``<cache>``: FLOPS_ENV_CACHE, else /var/cache/flops-mlops/fl-envs as root, else
~/.cache/flops-mlops/fl-envs). ``environment.json`` is written last: a half-built environment is built again.

- Versions: packages the repository names are resolved as it says; everything else is held at the version this
  interpreter runs (the CLI's own environment: the lock, deploy/images/constraints.txt, in a checkout).
- When this interpreter already meets the repository's requirements (and runs the FL runtime), no virtualenv is
  built: the project runs here (the scikit-learn example does).
- Our own package is not installed into the environment: processes get a folder on PYTHONPATH that holds only
  ``flops_mlops`` (a link to the code running now), so a cached environment never runs stale code.
- The CPU build of torch: pip finds a ``+cpu`` wheel through its configuration (find-links, or
  --extra-index-url https://download.pytorch.org/whl/cpu in the repository's requirements.txt); see
  examples/pytorch/README.md.
"""

from __future__ import annotations

import fcntl
import hashlib
import importlib.metadata
import json
import os
import platform
import re
import shutil
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

from packaging.requirements import InvalidRequirement, Requirement
from packaging.utils import canonicalize_name
from packaging.version import InvalidVersion, Version

from ..processes import StackError
from .ml_repo import Dependencies, RepoError

PACKAGE_DIR = Path(__file__).resolve().parent.parent  # flops_mlops
TOOLING = {"flops-mlops", "pip", "setuptools", "wheel"}  # never held: the venv's own, or the repository's to need
MISSING = re.compile(r"No matching distribution found for (\S+)")


class BuildError(StackError):
    """Building the environment failed for a reason outside the repository (pip, disk): exit 1."""


def default_cache() -> Path:
    if os.environ.get("FLOPS_ENV_CACHE"):
        return Path(os.environ["FLOPS_ENV_CACHE"])
    if os.geteuid() == 0:
        return Path("/var/cache/flops-mlops/fl-envs")
    return Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache")) / "flops-mlops" / "fl-envs"


@dataclass(frozen=True)
class Environment:
    """Where an FL project's processes run: a Python and what it says about itself."""

    python: Path
    key: str | None  # None: this interpreter
    description: str

    @property
    def bin_dir(self) -> Path:
        return self.python.parent

    def variables(self, runtime_dir: Path) -> dict[str, str]:
        """What a process of this environment needs besides its Python: our package on PYTHONPATH (before what
        PYTHONPATH holds already), and VIRTUAL_ENV. Nothing for this interpreter, which has it installed."""
        if self.key is None:
            return {}
        link = runtime_dir / "flops_mlops"
        runtime_dir.mkdir(parents=True, exist_ok=True)
        if not (link.is_symlink() and link.resolve() == PACKAGE_DIR):
            link.unlink(missing_ok=True)
            link.symlink_to(PACKAGE_DIR, target_is_directory=True)
        path = os.pathsep.join(p for p in (str(runtime_dir), os.environ.get("PYTHONPATH", "")) if p)
        return {"PYTHONPATH": path, "VIRTUAL_ENV": str(self.python.parent.parent)}


def runtime_requirements() -> list[str]:
    """flops-mlops' own dependencies and those of its [fl] extra, from this installation's metadata."""
    lines = []
    for text in importlib.metadata.requires("flops-mlops") or []:
        requirement = Requirement(text)
        marker = str(requirement.marker or "")
        if marker and marker != 'extra == "fl"':
            continue
        requirement.marker = None
        lines.append(str(requirement))
    return lines


def installed() -> dict[str, str]:
    """name -> version of every distribution in this interpreter's environment."""
    return {canonicalize_name(d.metadata["Name"]): d.version for d in importlib.metadata.distributions()
            if d.metadata["Name"]}


# MLflow writes its own version into every model it logs as a pin (mlflow==X.Y.Z); a later release of the same major
# version loads those models, so an upgrade (docs/backup.md) does not strand the models logged before it.
MLFLOW_PACKAGES = {"mlflow", "mlflow-skinny"}


def newer_mlflow_loads(requirement: Requirement, have: str) -> bool:
    """Whether ``have`` is an MLflow of the same major version as, and not older than, the one ``requirement`` pins."""
    pinned = [spec.version for spec in requirement.specifier if spec.operator == "=="]
    if canonicalize_name(requirement.name) not in MLFLOW_PACKAGES or len(pinned) != 1:
        return False
    try:
        wanted, got = Version(pinned[0]), Version(have)
    except InvalidVersion:
        return False
    return got.major == wanted.major and got >= wanted


def unmet(requirements: list[str] | tuple[str, ...], packages: dict[str, str]) -> list[str]:
    """The requirements that ``packages`` (name -> version) do not meet, each with what is there instead."""
    problems = []
    for line in requirements:
        line = line.split(" #", 1)[0].strip()
        if not line or line.startswith("#") or line.startswith("-"):
            continue
        try:
            requirement = Requirement(line)
        except InvalidRequirement:
            problems.append(f"{line!r}: not a requirement this check understands (pip options, URLs)")
            continue
        if requirement.marker is not None and not requirement.marker.evaluate({"extra": ""}):
            continue
        have = packages.get(canonicalize_name(requirement.name))
        if have is None:
            problems.append(f"{line}: not installed")
        elif not requirement.specifier.contains(have, prereleases=True) and not newer_mlflow_loads(requirement, have):
            problems.append(f"{line}: this environment has {requirement.name}=={have}")
    return problems


def held_versions(dependencies: Dependencies) -> list[str]:
    """Constraints: this interpreter's version of every package, but of those the repository names only where
    that version meets the repository's requirement (its own pins win)."""
    own = {}
    for line in dependencies.requirements:
        if not line.startswith("-"):
            own.setdefault(canonicalize_name(Requirement(line).name), []).append(line)
    held = []
    for name, version in sorted(installed().items()):
        if name in TOOLING or (name in own and unmet(own[name], {name: version})):
            continue
        held.append(f"{name}=={version}")
    return held


def key_of(dependencies: Dependencies) -> str:
    digest = hashlib.sha256()
    for part in (f"{sys.version_info.major}.{sys.version_info.minor}", platform.machine(),
                 *sorted(runtime_requirements()), "--", *dependencies.requirements):
        digest.update(part.encode() + b"\n")
    return digest.hexdigest()[:16]


def for_repository(dependencies: Dependencies, cache: Path | None = None, progress=print) -> Environment:
    """This interpreter if it meets the repository's requirements, else the cached virtualenv of its dependency
    set (built now if missing)."""
    if not unmet([*dependencies.requirements, *runtime_requirements()], installed()):
        return Environment(Path(sys.executable), None, f"this interpreter ({sys.executable}) already meets "
                           f"{dependencies.file.name}; no virtualenv needed")
    cache = cache or default_cache()
    key = key_of(dependencies)
    folder = cache / key
    python = folder / "bin" / "python"
    if (folder / "environment.json").is_file():
        return Environment(python, key, f"virtualenv {folder} (cached, for {dependencies.file.name} of this "
                                        "dependency set)")
    cache.mkdir(parents=True, exist_ok=True)
    os.chmod(cache, 0o755)  # the model server runs as the tracking servers' account and reads it
    with open(cache / f"{key}.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)  # another process may be building the same environment
        if not (folder / "environment.json").is_file():
            _build(folder, dependencies, progress)
    return Environment(python, key, f"virtualenv {folder} (built now for {dependencies.file.name})")


def _build(folder: Path, dependencies: Dependencies, progress) -> None:
    started = time.monotonic()
    shutil.rmtree(folder, ignore_errors=True)
    progress(f"building a virtualenv for {dependencies.file.name} in {folder} (once per dependency set; a minute "
             "or more, mostly the FL runtime and the repository's frameworks)", flush=True)
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(folder)], check=True)
    constraints = held_versions(dependencies)
    (folder / "requirements.txt").write_text("\n".join([*dependencies.requirements, *runtime_requirements()])
                                             + "\n", encoding="utf-8")
    (folder / "constraints.txt").write_text("\n".join(constraints) + "\n", encoding="utf-8")
    log = folder.with_suffix(".log")
    with open(log, "w") as out:
        done = subprocess.run([sys.executable, "-m", "pip", "--python", str(folder / "bin" / "python"), "install",
                               "--disable-pip-version-check", "--progress-bar", "off", "-r",
                               str(folder / "requirements.txt"), "-c", str(folder / "constraints.txt")],
                              stdout=out, stderr=subprocess.STDOUT, cwd=dependencies.file.parent)
    if done.returncode != 0:
        shutil.rmtree(folder, ignore_errors=True)  # a broken environment is never reused; pip's log stays
        raise _pip_failure(log.read_text(encoding="utf-8", errors="replace"), dependencies, log)
    packages = json.loads(subprocess.run(
        [str(folder / "bin" / "python"), "-c", "import importlib.metadata as m, json; print(json.dumps("
         "{d.metadata['Name']: d.version for d in m.distributions() if d.metadata['Name']}))"],
        check=True, capture_output=True, text=True).stdout)
    record = {"key": folder.name, "python": sys.version.split()[0], "machine": platform.machine(),
              "dependency_file": str(dependencies.file.resolve()), "requirements": list(dependencies.requirements),
              "packages": {canonicalize_name(k): v for k, v in packages.items()},
              "seconds": round(time.monotonic() - started, 1)}
    (folder / "environment.json").write_text(json.dumps(record, indent=1) + "\n", encoding="utf-8")
    progress(f"virtualenv ready in {record['seconds']:.0f} s ({_size(folder)})", flush=True)


def _size(folder: Path) -> str:
    total = sum(p.stat().st_size for p in folder.rglob("*") if p.is_file() and not p.is_symlink())
    return f"{total / 2**20:.0f} MB"


def _pip_failure(text: str, dependencies: Dependencies, log: Path) -> Exception:
    missing = MISSING.search(text)
    if missing:
        name = canonicalize_name(re.split(r"[<>=!~;\[ ]", missing.group(1))[0])
        origin = next((dependencies.origins.get(line, dependencies.file.name) for line in dependencies.requirements
                       if not line.startswith("-") and canonicalize_name(Requirement(line).name) == name), None)
        if origin is not None:
            conda = " conda-only packages cannot be installed: list the package's PyPI name under pip:, or drop " \
                    "it" if dependencies.file.name == "conda.yaml" else ""
            return RepoError(f"{origin}: {missing.group(1)}: pip finds no such package (on PyPI or this machine's "
                             f"indexes).{conda}")
    conflict = [line.strip() for line in text.splitlines()
                if "conflict" in line.lower() or line.strip().startswith(("The user requested", "flwr", "mlflow"))]
    if "ResolutionImpossible" in text or conflict:
        return RepoError(f"{dependencies.file}: its requirements conflict with each other or with the FL runtime "
                         "(flwr, mlflow and their dependencies); relax these pins:\n  " + "\n  ".join(conflict[:12]))
    tail = "\n  ".join(text.strip().splitlines()[-12:])
    return BuildError(f"pip could not build the environment (log: {log}):\n  {tail}")


def recorded(cache: Path | None = None) -> list[tuple[Environment, dict[str, str]]]:
    """The cached environments and their packages, newest first (for serving a model whose requirements this
    interpreter does not meet)."""
    found = []
    folder = cache or default_cache()
    for record in sorted(folder.glob("*/environment.json"), key=lambda p: p.stat().st_mtime, reverse=True):
        try:
            data = json.loads(record.read_text(encoding="utf-8"))
        except ValueError:
            continue
        found.append((Environment(record.parent / "bin" / "python", record.parent.name,
                                  f"virtualenv {record.parent}"), data.get("packages", {})))
    return found


def meeting(requirements: list[str], cache: Path | None = None) -> tuple[Environment | None, list[str]]:
    """The environment that meets ``requirements`` (a model's requirements.txt): this interpreter if it does, else
    the newest cached virtualenv that does; with what this interpreter lacks (empty when it meets them)."""
    lacking = unmet(requirements, installed())
    if not lacking:
        return Environment(Path(sys.executable), None, f"this interpreter ({sys.executable})"), []
    for environment, packages in recorded(cache):
        if not unmet(requirements, packages):
            return environment, lacking
    return None, lacking
