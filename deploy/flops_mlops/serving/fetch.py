"""A registered model version, fetched from a tenant's tracking server by a user with READ on that model only.

MLflow's proxied artifact routes (``/api/2.0/mlflow-artifacts/...``) are authorised by the experiment, which a
serving user has no grant on. The registry's own file route, ``GET /model-versions/get-artifact?name=&version=
&path=``, is authorised by the registered model; it serves one file at a time and lists nothing. So the files
are named from the version's ``MLmodel``: the environment files, each flavour's model file, the input example.
A flavour that keeps its model in a folder (keras, pytorch) has its files asked for by the names MLflow gives them.

Also the check that the model's requirements are met by this environment (no conda or virtualenv is created at
run time: the pinned environment either satisfies the model or the server does not start).
"""

from __future__ import annotations

import posixpath
import shutil
from dataclasses import dataclass
from pathlib import Path

import requests
import yaml

from ..fl.environments import installed, unmet

ENVIRONMENT_FILES = ("requirements.txt", "python_env.yaml", "conda.yaml")
# Keys of a flavour's MLmodel section that name a file of the model (sklearn: pickled_model; pyfunc: model_path),
# or a folder of it (keras: data; pytorch: model_data).
FILE_KEYS = ("pickled_model", "model_path", "data", "model_data")
# The files a flavour keeps in its model folder (mlflow 3.17: keras' model.keras and keras_module.txt; pytorch's
# model.pt2 (torch.export), or model.pth and pickle_module_info.txt (pickle)): the registry's file route lists
# nothing, so they are asked for by name; those a model does not have are skipped.
FOLDER_FILES = {"keras": ("model.keras", "keras_module.txt"),
                "pytorch": ("model.pt2", "model.pth", "pickle_module_info.txt")}


class FetchError(Exception):
    """The model could not be resolved or fetched; the message says which call and why. ``status``: the tracking
    server's HTTP status, if it answered; ``retry_after``: its Retry-After in seconds (a 429), if any."""

    def __init__(self, message: str, status: int | None = None, retry_after: float | None = None):
        super().__init__(message)
        self.status = status
        self.retry_after = retry_after


@dataclass(frozen=True)
class Registry:
    """A tenant's model registry, as one user (basic auth)."""

    tracking_uri: str
    username: str
    password: str
    timeout: float = 30
    verify: str | bool = True  # the CA an HTTPS tracking server is checked against (MLFLOW_TRACKING_SERVER_CERT_PATH)

    def _get(self, path: str, params: dict[str, str]) -> requests.Response:
        url = f"{self.tracking_uri.rstrip('/')}{path}"
        try:
            response = requests.get(url, params=params, auth=(self.username, self.password), timeout=self.timeout,
                                    verify=self.verify)
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
            try:
                retry_after = float(response.headers.get("Retry-After", ""))
            except ValueError:
                retry_after = None
            raise FetchError(f"GET {url} {params}: HTTP {response.status_code}{hint.get(response.status_code, '')}: "
                             f"{message}", status=response.status_code, retry_after=retry_after)
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
        folders = model_folders(yaml.safe_load(mlmodel))
        optional = {*ENVIRONMENT_FILES[1:], *(f"{folder}/{file}" for folder, names in folders.items()
                                              for file in names)}
        partial = destination.with_name(destination.name + ".partial")
        shutil.rmtree(partial, ignore_errors=True)
        partial.mkdir(parents=True)
        (partial / "MLmodel").write_bytes(mlmodel)
        for path in sorted(files):
            try:
                content = self.file(name, version, path)
            except FetchError:
                if path in optional:
                    continue  # requirements.txt is what the check reads; a flavour's folder holds some of its files
                raise
            target = partial / path
            target.parent.mkdir(parents=True, exist_ok=True)
            target.write_bytes(content)
        for folder in folders:
            if not [p for p in (partial / folder).glob("model.*")]:
                raise FetchError(f"{name} version {version}: its model folder {folder}/ holds none of "
                                 f"{', '.join(f for names in folders.values() for f in names if f.startswith('model.'))}")
        shutil.rmtree(destination, ignore_errors=True)
        partial.rename(destination)
        return destination


def model_folders(mlmodel: dict) -> dict[str, tuple[str, ...]]:
    """The model folders a flavour declares (keras' data, pytorch's model_data), with the files they may hold."""
    folders = {}
    for name, flavor in (mlmodel.get("flavors") or {}).items():
        if name in FOLDER_FILES:
            for key in ("data", "model_data"):
                if isinstance(flavor.get(key), str):
                    folders[flavor[key]] = FOLDER_FILES[name]
    return folders


def model_files(mlmodel: dict, what: str) -> set[str]:
    """The files of a model besides MLmodel, as named by its MLmodel (relative paths, checked)."""
    files = {*ENVIRONMENT_FILES}
    folders = model_folders(mlmodel)
    for flavor in (mlmodel.get("flavors") or {}).values():
        for key in FILE_KEYS:
            value = flavor.get(key)
            if isinstance(value, str):
                files |= {f"{value}/{name}" for name in folders[value]} if value in folders else {value}
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


def unmet_requirements(model_dir: Path, packages: dict[str, str] | None = None) -> list[str]:
    """Each line of the model's requirements.txt that this Python environment (or ``packages``: name -> version of
    another one) does not satisfy, explained."""
    path = model_dir / "requirements.txt"
    if not path.exists():
        return []
    return unmet(path.read_text(encoding="utf-8").splitlines(), installed() if packages is None else packages)
