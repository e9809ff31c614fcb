"""Our FTP artifact repository for MLflow: schemes ftp and ftps.

MLflow registers the repositories of the ``mlflow.artifact_repository`` entry point group after its own
(mlflow/store/artifact/artifact_repository_registry.py, register_entrypoints), so in every process where this
package is installed ours replaces MLflow's FTPArtifactRepository for ftp://, and adds ftps://. The entry point
(pyproject.toml) is ftp_client.repository, which reads the settings below from the environment that
tracking.server.server_env builds. A tracking server reaches its artifacts destination through it.

Unlike MLflow's own, it:
- does all of a call's work (list_artifacts, download_artifacts, log_artifact(s), delete_artifacts) over one
  logged-in connection: the files of a listing or a download travel one after another;
- keeps logged-in connections for the next calls (ConnectionPool, ftp_pool.py): a tracking server answers a model download as
  one HTTP request per listing and per file, and those share one login. A call waits briefly (GROW_AFTER) for a
  busy connection before it logs in another, so a download of small files needs one login even when the client
  fetches files in parallel, while large transfers still run side by side (up to POOL_SIZE connections);
  connections idle for IDLE_SECONDS are closed;
- waits at most ``connect_timeout`` seconds to connect, be greeted and log in, and at most ``data_timeout``
  seconds on any later command or transfer, so a hung store fails the request instead of hanging it;
- deletes (files and folders, recursively), so `mlflow gc` removes the artifacts of deleted runs;
- speaks explicit TLS for ftps:// (AUTH TLS, then PROT P: the data connections are encrypted too), checking
  the server's certificate against ``ca_pem`` (the deployment's certificate) or, without it, the system's CAs;
- keeps the tenant's folder within its quota (artifact_store.quota; quota.py): an upload that would pass it is
  refused (HTTP 507) before a byte is written;
- never puts the password into a message: errors, logs and repr() name ftp://user@host:port/path.
"""

from __future__ import annotations

import ftplib
import os
import posixpath
import socket
import ssl
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from urllib.parse import unquote, urlsplit

from mlflow.entities.file_info import FileInfo
from mlflow.exceptions import MlflowException
from mlflow.protos.databricks_pb2 import INTERNAL_ERROR, RESOURCE_DOES_NOT_EXIST, TEMPORARILY_UNAVAILABLE
from mlflow.store.artifact.artifact_repo import ArtifactRepository
from mlflow.utils.file_utils import create_tmp_dir

from .ftp_pool import ConnectionPool
from .quota import Usage

BLOCK = 1024 * 1024


class FTPRepository(ArtifactRepository):
    """Artifacts in a folder of an FTP server: ftp://user:password@host[:port]/path (ftps:// for TLS)."""

    def __init__(self, artifact_uri: str, tracking_uri: str | None = None, registry_uri: str | None = None, *,
                 connect_timeout: float = 10, data_timeout: float = 60, ca_pem: str | None = None,
                 quota: int = 0) -> None:
        parts = urlsplit(artifact_uri)
        self._tls = parts.scheme == "ftps"
        self._host = parts.hostname or "localhost"
        self._port = parts.port or 21
        self._user = unquote(parts.username or "anonymous")
        self._password = unquote(parts.password or "")
        self._root = posixpath.normpath(parts.path or "/")
        # What messages and repr() show: the URI without the password.
        shown = f"{parts.scheme}://{self._user}@{self._host}:{self._port}{self._root}"
        super().__init__(shown, tracking_uri, registry_uri)
        self.where = shown
        self.connect_timeout = connect_timeout
        self.data_timeout = data_timeout
        self._ca_pem = ca_pem
        self._local = threading.local()  # the server shares one repository between its request threads
        self._pool = ConnectionPool()
        self.usage = Usage(quota, self._stored_bytes)  # the folder's bytes against its quota (0: no limit)

    # --- the connection: one login, reused by later calls --------------------------------------------

    @contextmanager
    def _session(self) -> Iterator[ftplib.FTP]:
        """The calling thread's FTP connection, logged in; a nested use shares it. The outermost use takes it from
        the pool (or logs in) and gives it back when the call ends cleanly; after a failure it is closed."""
        current = getattr(self._local, "ftp", None)
        if current is not None:
            yield current
            return
        with self._errors("connect"):
            ftp = self._pool.take(self._login, self._alive)
        self._local.ftp = ftp
        clean = False
        try:
            with self._errors("transfer"):
                try:
                    yield ftp
                except (ftplib.error_perm, MlflowException):
                    clean = True  # refused or invalid, but answered: the connection is still in step
                    raise
            clean = True
        finally:
            self._local.ftp = None
            self._pool.give_back(ftp, reusable=clean)

    def _alive(self, ftp: ftplib.FTP) -> bool:
        """Whether a pooled connection still answers (NOOP); False when the server has closed it. A server that
        does not answer within connect_timeout raises TimeoutError: it is hung, and a new login would hang too."""
        ftp.sock.settimeout(self.connect_timeout)
        try:
            ftp.voidcmd("NOOP")
        except (TimeoutError, socket.timeout):
            raise
        except (*ftplib.all_errors, ssl.SSLError):
            return False
        ftp.sock.settimeout(self.data_timeout)
        return True

    def _login(self) -> ftplib.FTP:
        if self._tls:
            context = ssl.create_default_context(cadata=self._ca_pem) if self._ca_pem else ssl.create_default_context()
            ftp: ftplib.FTP = ftplib.FTP_TLS(context=context)
        else:
            ftp = ftplib.FTP()
        try:
            ftp.connect(self._host, self._port, timeout=self.connect_timeout)
            ftp.login(self._user, self._password)  # FTP_TLS: AUTH TLS first
            if self._tls:
                ftp.prot_p()
            # From here on every command and data connection waits at most data_timeout.
            ftp.timeout = self.data_timeout
            ftp.sock.settimeout(self.data_timeout)
            ftp.voidcmd("TYPE I")
        except BaseException:
            ftp.close()
            raise
        return ftp

    @contextmanager
    def _errors(self, stage: str) -> Iterator[None]:
        """FTP, socket and TLS errors as an MlflowException naming the store (never the password)."""
        try:
            yield
        except MlflowException:
            raise
        except (TimeoutError, socket.timeout):
            limit = self.connect_timeout if stage == "connect" else self.data_timeout
            key = "connect_timeout" if stage == "connect" else "data_timeout"
            raise self._failure(f"no answer within {limit:g} s (artifact_store.{key}); is the FTP server hung?",
                                TEMPORARILY_UNAVAILABLE) from None
        except ftplib.error_perm as exc:
            code = RESOURCE_DOES_NOT_EXIST if str(exc).startswith("550") else INTERNAL_ERROR
            raise self._failure(f"refused: {exc}", code) from None
        except (ConnectionError, socket.gaierror) as exc:
            raise self._failure(f"cannot {stage}: {exc.strerror or exc}", TEMPORARILY_UNAVAILABLE) from None
        except (*ftplib.all_errors, ssl.SSLError) as exc:
            raise self._failure(f"{stage} failed: {type(exc).__name__}: {exc}", INTERNAL_ERROR) from None

    def _failure(self, message: str, code: int) -> MlflowException:
        text = f"FTP artifact store {self.where}: {message}"
        if self._password:
            text = text.replace(self._password, "***")
        return MlflowException(text, error_code=code)

    # --- paths ----------------------------------------------------------------------------------------

    def _remote(self, path: str | None) -> str:
        """The absolute FTP path of ``path`` (relative to the root); never outside the root."""
        if not path:
            return self._root
        if path.startswith("/") or any(part == ".." for part in path.split("/")):
            raise MlflowException(f"FTP artifact store {self.where}: invalid artifact path {path!r}",
                                  error_code=RESOURCE_DOES_NOT_EXIST)
        return posixpath.normpath(posixpath.join(self._root, path))

    @staticmethod
    def _is_dir(ftp: ftplib.FTP, remote: str) -> bool:
        try:
            ftp.cwd(remote)
        except ftplib.error_perm:
            return False
        return True

    def _entries(self, ftp: ftplib.FTP, remote: str, sizes: bool = True) -> list[tuple[str, bool, int | None]]:
        """(name, is folder, size) of what the folder ``remote`` holds (NLST and CWD: vsftpd has no MLSD); without
        ``sizes`` a file's size is None (a SIZE command, one round trip per file, saved)."""
        names = [posixpath.basename(name.rstrip("/")) for name in ftp.nlst(remote)]
        ftp.voidcmd("TYPE I")  # NLST switched to ASCII; SIZE and RETR need binary
        found = []
        for name in sorted(n for n in names if n not in ("", ".", "..")):
            full = posixpath.join(remote, name)
            if self._is_dir(ftp, full):
                found.append((name, True, None))
            else:
                found.append((name, False, ftp.size(full) if sizes else None))
        return found

    def _walk(self, ftp: ftplib.FTP, path: str) -> Iterator[tuple[str, bool]]:
        """(relative path, is an empty folder) of every file and empty folder under the folder ``path``."""
        entries = self._entries(ftp, self._remote(path), sizes=False)
        if not entries:
            yield path, True
        for name, is_dir, _ in entries:
            child = posixpath.join(path, name) if path else name
            if is_dir:
                yield from self._walk(ftp, child)
            else:
                yield child, False

    def _stored_bytes(self) -> int:
        """The total size of the files in the folder (a walk over one connection)."""
        with self._session() as ftp:
            return sum(self._sizes(ftp, self._root))

    def _sizes(self, ftp: ftplib.FTP, remote: str) -> Iterator[int]:
        for name, is_dir, size in self._entries(ftp, remote):
            if is_dir:
                yield from self._sizes(ftp, posixpath.join(remote, name))
            else:
                yield size or 0

    def _store(self, ftp: ftplib.FTP, local_file: str, remote_file: str) -> None:
        """Upload one file, within the quota."""
        size = os.path.getsize(local_file)
        self.usage.admit(size)
        with open(local_file, "rb") as data:
            ftp.storbinary(f"STOR {remote_file}", data, BLOCK)
        self.usage.added(size)

    def _make_dirs(self, ftp: ftplib.FTP, remote: str) -> None:
        if self._is_dir(ftp, remote):
            return
        self._make_dirs(ftp, posixpath.dirname(remote))
        try:
            ftp.mkd(remote)
        except ftplib.error_perm:
            if not self._is_dir(ftp, remote):  # made meanwhile by another request: fine
                raise

    # --- MLflow's ArtifactRepository ------------------------------------------------------------------

    def log_artifact(self, local_file, artifact_path=None):
        with self._session() as ftp:
            folder = self._remote(artifact_path)
            self._make_dirs(ftp, folder)
            self._store(ftp, local_file, posixpath.join(folder, os.path.basename(local_file)))

    def log_artifacts(self, local_dir, artifact_path=None):
        local_dir = os.path.abspath(local_dir)
        with self._session() as ftp:
            for folder, _, files in os.walk(local_dir):
                relative = os.path.relpath(folder, local_dir)
                parts = [artifact_path] if artifact_path else []
                if relative != ".":
                    parts += relative.split(os.sep)
                remote = self._remote("/".join(parts))
                self._make_dirs(ftp, remote)
                for name in files:
                    self._store(ftp, os.path.join(folder, name), posixpath.join(remote, name))

    def list_artifacts(self, path=None):
        with self._session() as ftp:
            remote = self._remote(path)
            if not self._is_dir(ftp, remote):
                return []
            return [FileInfo(posixpath.join(path, name) if path else name, is_dir, size)
                    for name, is_dir, size in self._entries(ftp, remote)]

    def _is_directory(self, artifact_path):
        with self._session() as ftp:
            return self._is_dir(ftp, self._remote(artifact_path))

    def _download_file(self, remote_file_path, local_path):
        with self._session() as ftp, open(local_path, "wb") as out:
            ftp.retrbinary(f"RETR {self._remote(remote_file_path)}", out.write, BLOCK)

    def download_artifacts(self, artifact_path, dst_path=None):
        """Download a file or a folder (recursively) over one connection; returns the local path."""
        if dst_path:
            dst_path = os.path.abspath(dst_path)
            if not os.path.isdir(dst_path):
                raise MlflowException(f"download destination {dst_path} is not an existing folder",
                                      error_code=RESOURCE_DOES_NOT_EXIST)
        else:
            dst_path = create_tmp_dir()
        with self._session() as ftp:
            if not artifact_path or self._is_dir(ftp, self._remote(artifact_path)):
                for relative, empty_folder in self._walk(ftp, artifact_path or ""):
                    if empty_folder:
                        os.makedirs(os.path.join(dst_path, os.path.normpath(relative or ".")), exist_ok=True)
                    else:
                        self._download_file(relative, self._create_download_destination(relative, dst_path))
            else:
                self._download_file(artifact_path, self._create_download_destination(artifact_path, dst_path))
        return os.path.join(dst_path, os.path.normpath(artifact_path)) if artifact_path else dst_path

    def delete_artifacts(self, artifact_path=None):
        """Delete a file, or a folder with everything in it; the root folder itself stays. Missing: no-op."""
        try:
            self._delete(artifact_path)
        finally:
            self.usage.forget()

    def _delete(self, artifact_path: str | None) -> None:
        with self._session() as ftp:
            remote = self._remote(artifact_path)
            if self._is_dir(ftp, remote):
                self._delete_folder(ftp, remote)
                if remote != self._root:
                    ftp.rmd(remote)
                return
            try:
                ftp.delete(remote)
            except ftplib.error_perm as exc:
                if not str(exc).startswith("550"):  # 550: there is nothing to delete
                    raise

    def _delete_folder(self, ftp: ftplib.FTP, remote: str) -> None:
        """Empty the folder ``remote``."""
        for name, is_dir, _ in self._entries(ftp, remote):
            full = posixpath.join(remote, name)
            if is_dir:
                self._delete_folder(ftp, full)
                ftp.rmd(full)
            else:
                ftp.delete(full)
