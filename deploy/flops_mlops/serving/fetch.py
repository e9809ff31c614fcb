"""A registered model version, fetched from a tenant's tracking server by a user with READ on that model only.

MLflow's proxied artifact routes (``/api/2.0/mlflow-artifacts/...``) are authorised by the experiment, which a
serving user has no grant on. The registry's own file route, ``GET /model-versions/get-artifact?name=&version=
&path=``, is authorised by the registered model; it serves one file at a time and lists nothing. So the files
are named from the version's ``MLmodel``: the environment files, each flavour's model file, the input example.
A model whose flavour keeps its model in a folder (not one file) is refused with a message saying so.

Also the check that the model's requirements are met by this environment (no conda or virtualenv is created at
run time: the pinned environment either satisfies the model or the server does not start).
"""

from __future__ import annotations

import importlib.metadata
import posixpath
import shutil
from dataclasses import dataclass
from pathlib import Path

import requests
import yaml
from packaging.requirements import InvalidRequirement, Requirement

ENVIRONMENT_FILES = ("requirements.txt", "python_env.yaml", "conda.yaml")
# Keys of a flavour's MLmodel section that name a file of the model (sklearn: pickled_model; pyfunc: model_path).
FILE_KEYS = ("pickled_model", "model_path", "data")


class FetchError(Exception):
    """The model could not be resolved or fetched; the message says which call and why."""


@dataclass(frozen=True)
class Registry:
    """A tenant's model registry, as one user (basic auth)."""

    tracking_uri: str
    username: str
    password: str
    timeout: float = 30

    def _get(self, path: str, params: dict[str, str]) -> requests.Response:
        url = f"{self.tracking_uri.rstrip('/')}{path}"
        try:
            response = requests.get(url, params=params, auth=(self.username, self.password), timeout=self.timeout)
        except requests.RequestException as exc:
            raise FetchError(f"GET {url}: the tracking server does not answer ({type(exc).__name__})") from None
        if response.status_code != 200:
            try:
                message = response.json().get("message", "")
            except ValueError:
                message = response.text[:200]
            hint = {401: f" (user {self.username!r} or its password was refused)",
                    403: f" (user {self.username!r} has no READ on registered model {params.get('name')!r})",
                    404: f" (no such model, version or alias yet: has FL project {params.get('name')!r} registered "
                         "its model?)"}
            raise FetchError(f"GET {url} {params}: HTTP {response.status_code}{hint.get(response.status_code, '')}: "
                             f"{message}")
        return response

    def version_of(self, name: str, alias: str) -> str:
        """The version ``alias`` points at now."""
        body = self._get("/api/2.0/mlflow/registered-models/alias", {"name": name, "alias": alias}).json()
        return str(body["model_version"]["version"])

    def file(self, name: str, version: str, path: str) -> bytes:
        return self._get("/model-versions/get-artifact", {"name": name, "version": version, "path": path}).content

    def fetch(self, name: str, version: str, destination: Path) -> Path:
        """Write the files of ``name`` version ``version`` to ``destination`` (replaced if present)."""
        mlmodel = self.file(name, version, "MLmodel")
        files = model_files(yaml.safe_load(mlmodel), f"{name} version {version}")
        partial = destination.with_name(destination.name + ".partial")
        shutil.rmtree(partial, ignore_errors=True)
        partial.mkdir(parents=True)
        (partial / "MLmodel").write_bytes(mlmodel)
        for path in sorted(files):
            try:
                content = self.file(name, version, path)
            except FetchError:
                if path in ENVIRONMENT_FILES[1:]:
                    continue  # optional: requirements.txt is what the check reads
                raise
            target = partial / path
            target.parent.mkdir(parents=True, exist_ok=True)
            target.write_bytes(content)
        shutil.rmtree(destination, ignore_errors=True)
        partial.rename(destination)
        return destination


def model_files(mlmodel: dict, what: str) -> set[str]:
    """The files of a model besides MLmodel, as named by its MLmodel (relative paths, checked)."""
    files = {*ENVIRONMENT_FILES}
    for flavor in (mlmodel.get("flavors") or {}).values():
        for key in FILE_KEYS:
            if isinstance(flavor.get(key), str):
                files.add(flavor[key])
        if flavor.get("code"):
            raise FetchError(f"{what}: the model carries code ({flavor['code']!r}); only models whose files are "
                             "named in MLmodel can be fetched with a read-only registry user")
    example = mlmodel.get("saved_input_example_info") or {}
    files |= {example[key] for key in ("artifact_path", "serving_input_path") if isinstance(example.get(key), str)}
    for path in files:
        normal = posixpath.normpath(path)
        if path.startswith("/") or normal.startswith("..") or normal != path:
            raise FetchError(f"{what}: MLmodel names the file {path!r}, which is not a plain path inside the model")
    return files


def unmet_requirements(model_dir: Path) -> list[str]:
    """Each line of the model's requirements.txt that this Python environment does not satisfy, explained."""
    path = model_dir / "requirements.txt"
    if not path.exists():
        return []
    problems = []
    for line in path.read_text(encoding="utf-8").splitlines():
        line = line.split("#", 1)[0].strip()
        if not line:
            continue
        try:
            requirement = Requirement(line)
        except InvalidRequirement:
            problems.append(f"{line!r}: not a requirement this check understands (pip options, URLs)")
            continue
        if requirement.marker is not None and not requirement.marker.evaluate():
            continue
        try:
            installed = importlib.metadata.version(requirement.name)
        except importlib.metadata.PackageNotFoundError:
            problems.append(f"{line}: not installed")
            continue
        if requirement.specifier and not requirement.specifier.contains(installed, prereleases=True):
            problems.append(f"{line}: this environment has {requirement.name}=={installed}")
    return problems
