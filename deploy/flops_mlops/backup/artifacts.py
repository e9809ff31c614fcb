"""A tenant's FTP folder in a backup: every file copied out, and put back byte for byte.

It talks to the artifact store as the tenant's own FTP user, through our FTP repository (stores/ftp_repository.py),
so it works against any store this machine reaches (the embedded server, vsftpd here or on another host).
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from pathlib import Path

from mlflow.exceptions import MlflowException

from ..configuration.certificates import ca_pem
from ..configuration.secrets import Secrets
from ..configuration.stack import StackConfig
from ..configuration.tracking import Tenant
from ..processes import StackError
from ..stores.ftp_repository import FTPRepository
from ..tracking.server import artifacts_destination

Progress = Callable[[str], None]
PROGRESS_SECONDS = 5  # at most one progress line this often


def repository(config: StackConfig, tenant: Tenant, secrets: Secrets) -> FTPRepository:
    store = config.artifact_store
    return FTPRepository(artifacts_destination(config, tenant, secrets), connect_timeout=store.connect_timeout,
                         data_timeout=store.data_timeout, ca_pem=ca_pem(config) if store.tls else None)


def _files(repo: FTPRepository, path: str = "") -> Iterator[tuple[str, int]]:
    for info in repo.list_artifacts(path or None):
        if info.is_dir:
            yield from _files(repo, info.path)
        else:
            yield info.path, info.file_size or 0


def files(repo: FTPRepository) -> list[tuple[str, int]]:
    """(path, size) of every file under the tenant's artifact folder."""
    try:
        return list(_files(repo))
    except MlflowException as exc:
        raise StackError(str(exc.message)) from None


class _Ticker:
    """Progress lines for long copies: every PROGRESS_SECONDS, and at the end."""

    def __init__(self, what: str, total: int, progress: Progress):
        self.what, self.total, self.progress = what, total, progress
        self.done = self.bytes = 0
        self.last = time.monotonic()

    def step(self, size: int) -> None:
        self.done += 1
        self.bytes += size
        if time.monotonic() - self.last >= PROGRESS_SECONDS or self.done == self.total:
            self.last = time.monotonic()
            self.progress(f"{self.what}: {self.done}/{self.total} files, {self.bytes / 2**20:.1f} MiB")


def download(repo: FTPRepository, target: Path, progress: Progress) -> list[str]:
    """Every file of the artifact folder into ``target`` (same relative paths); returns their paths."""
    listed = files(repo)
    ticker = _Ticker("artifacts", len(listed), progress)
    target.mkdir(parents=True, exist_ok=True, mode=0o700)
    try:
        for path, size in listed:
            repo.download_artifacts(path, str(target))  # to target/<path>, folders made on the way
            ticker.step(size)
    except MlflowException as exc:
        raise StackError(str(exc.message)) from None
    return [path for path, _ in listed]


def replace_all(repo: FTPRepository, source: Path, progress: Progress) -> None:
    """Empty the artifact folder, then upload every file under ``source`` to the same relative path."""
    local = sorted(p for p in source.rglob("*") if p.is_file())
    ticker = _Ticker("artifacts", len(local), progress)
    try:
        repo.delete_artifacts()
        for path in local:
            relative = path.relative_to(source)
            parent = relative.parent.as_posix()
            repo.log_artifact(str(path), None if parent == "." else parent)
            ticker.step(path.stat().st_size)
    except MlflowException as exc:
        raise StackError(str(exc.message)) from None
