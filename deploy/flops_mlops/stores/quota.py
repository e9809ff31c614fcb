"""A tenant's storage quota on its artifact store (artifact_store.quota): how much its folder holds, and the
refusal of an upload that would pass the quota.

The tracking server's FTP repository (ftp_repository.py) owns one Usage: the folder's total is counted once, by
walking the folder over FTP at the first upload (or the first question), then kept up to date by the uploads that
pass through the server; a delete makes the next question count again. Files put in the folder behind the
server's back are seen after its next restart or delete. The tracking app (tracking/app.py) asks before MLflow
reads an upload whose length is announced, so such an upload is refused before any byte reaches the store; the
repository asks again with the file's real size (chunked uploads) before it writes it.
"""

from __future__ import annotations

import threading
from collections.abc import Callable

from mlflow.exceptions import MlflowException
from mlflow.protos.databricks_pb2 import RESOURCE_EXHAUSTED

from ..configuration.values import size_text

STATUS = 507  # Insufficient Storage


class QuotaExceeded(MlflowException):
    """An upload that would pass the tenant's quota: HTTP 507, naming the quota and the usage."""

    def __init__(self, message: str):
        super().__init__(message, error_code=RESOURCE_EXHAUSTED)

    def get_http_status_code(self) -> int:
        return STATUS


class Usage:
    """Bytes in a tenant's folder of the store, against its quota (0: no limit)."""

    def __init__(self, quota: int, count: Callable[[], int]):
        self.quota = quota
        self._count = count  # walks the folder: the total size of its files
        self._total: int | None = None
        self._lock = threading.Lock()

    def total(self) -> int:
        with self._lock:
            if self._total is None:
                self._total = self._count()
            return self._total

    def admit(self, size: int) -> None:
        """Raise QuotaExceeded when ``size`` more bytes would pass the quota."""
        if not self.quota:
            return
        used = self.total()
        if used + size > self.quota:
            raise QuotaExceeded(
                f"storage quota exceeded: this upload of {size_text(size)} would take the tenant's artifact store "
                f"to {size_text(used + size)}, over its quota of {size_text(self.quota)} ({size_text(used)} used; "
                "artifact_store.quota). Delete runs or models, or ask the operator for a larger quota")

    def added(self, size: int) -> None:
        with self._lock:
            if self._total is not None:
                self._total += size

    def forget(self) -> None:
        """After a delete: count again at the next question."""
        with self._lock:
            self._total = None
