"""A registered model version, fetched from a tenant's tracking server by a user with READ on that model only.

MLflow's proxied artifact routes (``/api/2.0/mlflow-artifacts/...``) are authorised by the experiment, which a
serving user has no grant on. The tracking server's own archive route (tracking/model_archive.py: ``GET
/flops/model-versions/archive?name=&version=``) is authorised as MLflow's ``/model-versions/get-artifact`` is, by
the registered model, and answers with every file of the version in one tar: one request per model instead of one
per file. Its members are checked before a byte is written: plain files and folders inside the model only.

A model that carries code (a flavour's ``code`` folder) is refused: the model server would run it.

Also the check that the model's requirements are met by this environment (no conda or virtualenv is created at
run time: the pinned environment either satisfies the model or the server does not start).
"""

from __future__ import annotations

import posixpath
import shutil
import tarfile
from dataclasses import dataclass
from pathlib import Path
from typing import IO

import requests
import urllib3
import yaml

from ..fl.environments import installed, unmet
from ..tracking.model_archive import ROUTE as ARCHIVE_ROUTE

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

    def _get(self, path: str, params: dict[str, str], stream: bool = False) -> requests.Response:
        url = f"{self.tracking_uri.rstrip('/')}{path}"
        try:
            response = requests.get(url, params=params, auth=(self.username, self.password), timeout=self.timeout,
                                    verify=self.verify, stream=stream)
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
        """One file of a version (MLflow's own route), e.g. its requirements.txt before anything is fetched."""
        return self._get("/model-versions/get-artifact", {"name": name, "version": version, "path": path}).content

    def fetch(self, name: str, version: str, destination: Path) -> Path:
        """Write the files of ``name`` version ``version`` to ``destination`` (replaced if present; left as it was
        when the fetch fails)."""
        what = f"{name} version {version}"
        partial = destination.with_name(destination.name + ".partial")
        shutil.rmtree(partial, ignore_errors=True)
        partial.mkdir(parents=True)
        try:
            with self._get(ARCHIVE_ROUTE, {"name": name, "version": version}, stream=True) as response:
                response.raw.decode_content = True
                try:
                    extract_model(response.raw, partial, what)
                except (tarfile.TarError, OSError, urllib3.exceptions.HTTPError) as exc:
                    raise FetchError(f"{what}: the archive from {self.tracking_uri} broke off or is not a tar "
                                     f"({type(exc).__name__}: {exc})") from None
            refuse_code(mlmodel_of(partial, what), what)
        except BaseException:
            shutil.rmtree(partial, ignore_errors=True)
            raise
        shutil.rmtree(destination, ignore_errors=True)
        partial.rename(destination)
        return destination


def extract_model(stream: IO[bytes], destination: Path, what: str) -> None:
    """The model files of a tar stream, written under ``destination``: every member must be a plain file or folder
    whose name stays inside it (no absolute names, no '..', no links or devices), or nothing more is written."""
    with tarfile.open(fileobj=stream, mode="r|") as tar:
        for member in tar:
            normal = posixpath.normpath(member.name)
            if (member.name.startswith("/") or normal in (".", "..") or normal.startswith("../")
                    or not (member.isfile() or member.isdir())):
                raise FetchError(f"{what}: the archive holds {member.name!r}, which is not a plain file or folder "
                                 "inside the model")
            target = destination / normal
            if member.isdir():
                target.mkdir(parents=True, exist_ok=True)
                continue
            target.parent.mkdir(parents=True, exist_ok=True)
            with tar.extractfile(member) as source, target.open("wb") as out:
                shutil.copyfileobj(source, out)


def mlmodel_of(model_dir: Path, what: str) -> dict:
    try:
        return yaml.safe_load((model_dir / "MLmodel").read_bytes()) or {}
    except (OSError, yaml.YAMLError) as exc:
        raise FetchError(f"{what}: its MLmodel is missing or unreadable ({type(exc).__name__})") from None


def refuse_code(mlmodel: dict, what: str) -> None:
    """A model whose flavours carry code (a ``code`` folder of Python modules) is refused: serving it would run it."""
    for flavor in (mlmodel.get("flavors") or {}).values():
        if isinstance(flavor, dict) and flavor.get("code"):
            raise FetchError(f"{what}: the model carries code ({flavor['code']!r}); the model server loads only "
                             "models without code of their own")


def unmet_requirements(model_dir: Path, packages: dict[str, str] | None = None) -> list[str]:
    """Each line of the model's requirements.txt that this Python environment (or ``packages``: name -> version of
    another one) does not satisfy, explained."""
    path = model_dir / "requirements.txt"
    if not path.exists():
        return []
    return unmet(path.read_text(encoding="utf-8").splitlines(), installed() if packages is None else packages)
