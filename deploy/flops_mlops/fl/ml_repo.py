"""An ML repository in FLOps' contract: where it comes from, what it depends on, and its ModelManager.

- Source: a local folder (used in place), or a git URL (https://, ssh://, git@host:path, file://, or a local
  repository with ``--revision``) cloned into ``<state_dir>/fl/repos/`` and checked out at the revision (default:
  the remote's default branch). Cloning a local or file:// repository needs no network.
- Its tag (the per-project image's tag): the checked-out commit of a clone, or ``c`` + a content hash of the
  folder's files (a local folder, whose edits a commit would not show).
- Dependencies: ``conda.yaml`` (FLOps' file) or ``requirements.txt``. conda.yaml's ``pip:`` section is taken as it
  is; its conda specs (``name=version``) become pip requirements (``name==version.*``, conda's prefix match;
  ``pytorch`` is ``torch``). Dropped, as FLOps does: ``python``, ``pip``, ``mlflow*`` (the FL runtime brings its
  own) and ``flops-utils`` (fl/compat provides it). A repository that imports
  ``flops_utils.ml_repo_building_blocks`` gets ``datasets>=3,<4``, which that module needs.
- Loading: the repository's folder and fl/compat (the FLOps-compatible ``flops_utils``) go first on ``sys.path``,
  then ``model_manager`` is imported; FLOps ran the files from their own folder the same way. FLOps' example
  repositories also import their own modules through the repository's name
  (``from flops_ml_repo_mnist_sklearn.data_manager import DataManager``, FLOps v0.3.2's image puts the repository
  in a folder of that name): every such top-level name that the repository's own files import with one of its
  modules after it, and that names no installed module, becomes a package whose folder is the repository's.
"""

from __future__ import annotations

import ast
import hashlib
import importlib
import importlib.util
import re
import subprocess
import sys
import types
from dataclasses import dataclass, field
from pathlib import Path

from packaging.requirements import InvalidRequirement, Requirement
from packaging.utils import canonicalize_name

from .. import bundled

DEPENDENCY_FILES = ("conda.yaml", "requirements.txt")
COMPAT_DIR = Path(__file__).resolve().parent / "compat"
# What the FL runtime or fl/compat brings: a repository's own line for these is dropped (FLOps drops mlflow too).
PROVIDED = ("mlflow", "flops-utils")
DATASETS = "datasets>=3,<4"  # flops_utils.ml_repo_building_blocks.load_dataset returns a datasets.Dataset
GIT_URL = re.compile(r"^(https?://|ssh://|git://|file://|[\w.-]+@[\w.-]+:)")
REVISION = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._/-]{0,199}$")
IGNORED_PARTS = {".git", "__pycache__", ".ipynb_checkpoints"}


class RepoError(ValueError):
    """The repository cannot be used; the message names the source, file or line, and what is expected."""


@dataclass(frozen=True)
class MLRepo:
    """A repository on disk, ready to load."""

    folder: Path
    source: str  # what the user gave: a folder or a URL
    revision: str | None
    commit: str | None  # the checked-out commit of a clone

    @property
    def tag(self) -> str:
        """The per-project image's tag: the commit of a clone, else a hash of the folder's content."""
        return self.commit[:12] if self.commit else "c" + content_hash(self.folder)[:12]

    def dependencies(self) -> Dependencies:
        return read_dependencies(self.folder)


def content_hash(folder: Path) -> str:
    digest = hashlib.sha256()
    for path in sorted(p for p in folder.rglob("*") if p.is_file() and not IGNORED_PARTS & set(p.parts)
                       and p.suffix != ".pyc"):
        digest.update(str(path.relative_to(folder)).encode() + b"\0" + path.read_bytes() + b"\0")
    return digest.hexdigest()


COMMIT = re.compile(r"^[0-9a-f]{40}$")


def tag_of(source: str, revision: str | None, clones: Path) -> str:
    """The tag of ``source`` at ``revision`` (the per-project image's tag): a full commit names it without cloning;
    anything else is resolved (a git URL cloned, a folder hashed)."""
    if revision and COMMIT.fullmatch(revision) and is_git_url(source):
        return revision[:12]
    return resolve(source, revision, clones).tag


def is_git_url(source: str) -> bool:
    return bool(GIT_URL.match(source)) or source.endswith(".git")


def resolve(source: str, revision: str | None, clones: Path) -> MLRepo:
    """The repository ``source`` (a folder or a git URL) at ``revision``, cloned under ``clones`` if needed."""
    if revision is not None and not REVISION.fullmatch(revision):
        raise RepoError(f"--revision: {revision!r} is not a branch, tag or commit name")
    folder = Path(source).expanduser()
    if not is_git_url(source):
        if not folder.is_dir():
            raise RepoError(f"--ml-repo: {source} is neither a folder nor a git URL (https://, ssh://, file://, "
                            "git@host:path)")
        if revision is None:
            return MLRepo(folder.resolve(), source, None, None)
        if not (folder / ".git").exists():
            raise RepoError(f"--revision: {source} is a folder, not a git repository; drop --revision or give a "
                            "repository")
        source = folder.resolve().as_uri()
    return _clone(source, revision, clones)


def _git(*args: str, cwd: Path | None = None, timeout: float = 300) -> str:
    done = subprocess.run(["git", *args], cwd=cwd, capture_output=True, text=True, timeout=timeout,
                          env={"GIT_TERMINAL_PROMPT": "0", "PATH": "/usr/local/bin:/usr/bin:/bin",
                               "HOME": str(Path.home())})
    if done.returncode != 0:
        last = (done.stderr.strip().splitlines() or ["(no message)"])[-1]
        raise RepoError(f"git {args[0]} failed: {last}")
    return done.stdout.strip()


def _clone(url: str, revision: str | None, clones: Path) -> MLRepo:
    folder = clones / hashlib.sha256(url.encode()).hexdigest()[:16]
    if (folder / ".git").is_dir():
        try:
            _git("fetch", "--quiet", "--tags", "origin", cwd=folder)
        except RepoError as exc:  # offline: what was fetched before may still hold the revision
            print(f"ml repo: {url}: {exc}; using the clone from before ({folder})", file=sys.stderr)
    else:
        clones.mkdir(parents=True, exist_ok=True)
        partial = folder.with_name(folder.name + ".partial")
        subprocess.run(["rm", "-rf", str(partial)], check=False)
        try:
            _git("clone", "--quiet", "--no-checkout", url, str(partial))
        except RepoError as exc:
            raise RepoError(f"--ml-repo: cannot clone {url}: {exc}") from None
        partial.rename(folder)
    target = revision or "origin/HEAD"
    try:
        commit = _git("rev-parse", "--verify", "--quiet", f"{target}^{{commit}}", cwd=folder)
    except RepoError:
        try:
            commit = _git("rev-parse", "--verify", "--quiet", f"origin/{target}^{{commit}}", cwd=folder)
        except RepoError:
            raise RepoError(f"--revision: {url} has no branch, tag or commit {target!r}") from None
    _git("checkout", "--quiet", "--force", "--detach", commit, cwd=folder)
    _git("clean", "--quiet", "-fdx", cwd=folder)
    return MLRepo(folder, url, revision, commit)


# --- the dependency file -----------------------------------------------------------------------------------


@dataclass(frozen=True)
class Dependencies:
    """The pip requirements of a repository, read from its dependency file."""

    file: Path
    requirements: tuple[str, ...]
    origins: dict[str, str] = field(default_factory=dict)  # requirement -> where it came from (file: line)
    notes: tuple[str, ...] = ()  # what was dropped or translated, for the user

    @property
    def names(self) -> set[str]:
        return {canonicalize_name(Requirement(line).name) for line in self.requirements
                if not line.startswith("-")}

    def digest(self) -> str:
        return hashlib.sha256("\n".join(self.requirements).encode()).hexdigest()


def dependency_file(folder: Path) -> Path | None:
    return next((folder / name for name in DEPENDENCY_FILES if (folder / name).is_file()), None)


def read_dependencies(folder: Path) -> Dependencies:
    path = dependency_file(folder)
    if path is None:
        raise RepoError(f"{folder}: no dependency file: expected {' or '.join(DEPENDENCY_FILES)}")
    lines, origins, notes = (_conda(path) if path.name == "conda.yaml" else _requirements(path))
    kept: list[str] = []
    for line in lines:
        if line.startswith("-"):
            kept.append(line)
            continue
        name = canonicalize_name(Requirement(line).name)
        if name in PROVIDED or name.startswith("mlflow-"):
            notes.append(f"{origins[line]}: {line} dropped (the FL runtime provides {name})")
            continue
        kept.append(line)
    if _imports_building_blocks(folder) and "datasets" not in {canonicalize_name(Requirement(x).name)
                                                               for x in kept if not x.startswith("-")}:
        kept.append(DATASETS)
        origins[DATASETS] = "added: the repository imports flops_utils.ml_repo_building_blocks"
    return Dependencies(path, tuple(kept), origins, tuple(notes))


def _requirement(line: str, where: str) -> str:
    try:
        Requirement(line)
    except InvalidRequirement as exc:
        raise RepoError(f"{where}: {line!r} is not a pip requirement ({exc})") from None
    return line


def _requirements(path: Path) -> tuple[list[str], dict[str, str], list[str]]:
    lines, origins = [], {}
    for number, raw in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
        line = raw.split(" #", 1)[0].strip()
        if not line or line.startswith("#"):
            continue
        where = f"{path.name}:{number}"
        if line.startswith("-"):
            if not line.startswith(("--extra-index-url", "--find-links", "--index-url", "-f ", "--prefer-binary")):
                raise RepoError(f"{where}: {line!r}: only requirements and index options are supported (no -r, -c "
                                "or -e: list the packages here)")
        else:
            line = _requirement(line, where)
        lines.append(line)
        origins[line] = where
    return lines, origins, []


CONDA_SPEC = re.compile(r"^(?:[\w.-]+::)?(?P<name>[A-Za-z0-9_.-]+)\s*(?P<rest>.*)$")
NOT_INSTALLED = {"python", "pip"}  # conda lists them; the venv has its own


def _conda(path: Path) -> tuple[list[str], dict[str, str], list[str]]:
    import yaml

    try:
        data = yaml.safe_load(path.read_text(encoding="utf-8")) or {}
    except yaml.YAMLError as exc:
        raise RepoError(f"{path.name}: not YAML: {exc}") from None
    dependencies = data.get("dependencies") if isinstance(data, dict) else None
    if not isinstance(dependencies, list):
        raise RepoError(f"{path.name}: dependencies: expected a list of packages")
    lines, origins, notes = [], {}, []
    for index, entry in enumerate(dependencies):
        where = f"{path.name}: dependencies[{index}]"
        if isinstance(entry, dict) and set(entry) == {"pip"}:
            for pip_index, line in enumerate(entry["pip"] or []):
                line = _requirement(str(line).strip(), f"{where}.pip[{pip_index}]")
                lines.append(line)
                origins[line] = f"{where}.pip[{pip_index}]"
            continue
        if not isinstance(entry, str):
            raise RepoError(f"{where}: expected a package spec or a pip: list, got {entry!r}")
        match = CONDA_SPEC.match(entry.strip())
        if not match:
            raise RepoError(f"{where}: {entry!r} is not a conda package spec (name, name=version)")
        name, rest = match["name"].lower(), match["rest"].strip()
        if name in NOT_INSTALLED:
            if name == "python" and rest:
                notes.append(f"{where}: {entry} noted: the environment uses this machine's Python "
                             f"{sys.version_info.major}.{sys.version_info.minor}")
            continue
        line = _requirement(("torch" if name == "pytorch" else name) + _conda_version(rest), where)
        lines.append(line)
        origins[line] = f"{where} ({entry}, a conda spec installed with pip)"
    return lines, origins, notes


def _conda_version(rest: str) -> str:
    """conda's version part as pip's: ``=1.2`` or ``1.2`` (a prefix match) -> ``==1.2.*``, ``==1.2`` stays; a build
    string (``=1.2=py311_0``) is dropped; ranges (``>=1.2``) stay."""
    rest = rest.replace(" ", "")
    exact = re.fullmatch(r"(==?)?([0-9][^=<>!,]*)(=.*)?", rest)
    if not exact:
        return rest
    operator, version = exact[1] or "=", exact[2]
    return f"=={version}" if operator == "==" or version.endswith("*") else f"=={version}.*"


def _imports_building_blocks(folder: Path) -> bool:
    return any("ml_repo_building_blocks" in path.read_text(encoding="utf-8", errors="replace")
               for path in folder.rglob("*.py") if not IGNORED_PARTS & set(path.parts))


# --- loading -------------------------------------------------------------------------------------------------


def repository_folder(ml_repo: str) -> Path:
    """The folder FLOPS_ML_REPO names, or the bundled scikit-learn example (what `round` trains by default)."""
    return Path(ml_repo) if ml_repo else bundled.folder("examples") / "sklearn"


def import_model_manager(folder: Path):
    """Import ``model_manager`` of the repository in ``folder``; returns the module. A repository loaded in this
    process before is forgotten first (its modules and its sys.path entry). ImportError and the module's own
    errors propagate."""
    folder = folder.resolve()
    for previous in _LOADED:
        for name, module in list(sys.modules.items()):
            origin = getattr(module, "__file__", None)
            if origin and Path(origin).resolve().is_relative_to(previous):
                del sys.modules[name]
        while str(previous) in sys.path:
            sys.path.remove(str(previous))
    _LOADED.clear()
    for name in ("model_manager", "data_manager", *_ALIASES):
        sys.modules.pop(name, None)
    _ALIASES.clear()
    while str(COMPAT_DIR) in sys.path:
        sys.path.remove(str(COMPAT_DIR))
    sys.path[0:0] = [str(folder), str(COMPAT_DIR)]
    _LOADED.append(folder)
    importlib.invalidate_caches()
    for name in self_import_names(folder):
        if importlib.util.find_spec(name) is None:
            package = types.ModuleType(name, f"the ML repository in {folder}, under the name its files import it by")
            package.__path__ = [str(folder)]
            sys.modules[name] = package
            _ALIASES.append(name)
    return importlib.import_module("model_manager")


def self_import_names(folder: Path) -> list[str]:
    """Top-level names the repository's own files import one of its modules through (``from <name>.<module>
    import ...`` or ``import <name>.<module>``, where <module>.py or the package <module>/ is in ``folder``)."""
    names: list[str] = []
    for path in sorted(folder.glob("*.py")):
        try:
            tree = ast.parse(path.read_text(encoding="utf-8", errors="replace"), filename=str(path))
        except SyntaxError:
            continue  # importing the file reports it
        for node in ast.walk(tree):
            if isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
                dotted = [node.module]
            elif isinstance(node, ast.Import):
                dotted = [alias.name for alias in node.names]
            else:
                continue
            for module in dotted:
                first, _, rest = module.partition(".")
                own = rest.split(".")[0]
                if own and ((folder / f"{own}.py").is_file() or (folder / own).is_dir()) and first not in names:
                    names.append(first)
    return names


_LOADED: list[Path] = []  # the repository folders imported in this process
_ALIASES: list[str] = []  # the packages self_import_names made of the last one
