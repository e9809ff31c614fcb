"""The logged-in FTP connections of one artifact repository (one per tracking server), shared by the threads of
its process: at most POOL_SIZE. A call waits GROW_AFTER for a busy connection before it logs in another;
connections idle for IDLE_SECONDS are closed by one sweeper thread per process; a forked child drops its
parent's connections."""

from __future__ import annotations

import ftplib
import os
import threading
import time
import weakref

POOL_SIZE = 4  # connections per repository (tracking server): as many as MLflow's client fetches at once on 2 cores
GROW_AFTER = 0.1  # seconds a call waits for a busy connection before it logs in another
IDLE_SECONDS = 30.0  # an idle connection is closed after this (vsftpd and pyftpdlib drop theirs after 300 s)


class ConnectionPool:
    """Logged-in FTP connections of one repository, shared by the threads of the process; at most POOL_SIZE."""

    def __init__(self, size: int = POOL_SIZE, grow_after: float = GROW_AFTER, idle_seconds: float = IDLE_SECONDS):
        self.size, self.grow_after, self.idle_seconds = size, grow_after, idle_seconds
        self._idle: list[tuple[ftplib.FTP, float]] = []  # (connection, when it was given back)
        self._open = 0  # idle, in use, or logging in
        self._changed = threading.Condition()
        _pools.add(self)
        _start_sweeper()

    def take(self, login, alive) -> ftplib.FTP:
        """An idle connection that is still ``alive``, or a new one from ``login()``. Waits up to grow_after for a
        busy one to come back before it logs in another, and for as long as it takes when POOL_SIZE are open."""
        while True:
            pooled = self._reserve()
            if pooled is None:
                try:
                    return login()
                except BaseException:
                    self._forget()
                    raise
            try:
                if alive(pooled):
                    return pooled
            except BaseException:
                self._discard(pooled)
                raise
            self._discard(pooled)  # closed by the server meanwhile: try the next, or log in

    def _reserve(self) -> ftplib.FTP | None:
        """A pooled connection, or None when the caller is to log in (counted as open already)."""
        grow_at = time.monotonic() + self.grow_after
        with self._changed:
            while True:
                self._close_expired()
                if self._idle:
                    return self._idle.pop()[0]
                now = time.monotonic()
                if self._open < self.size and (self._open == 0 or now >= grow_at):
                    self._open += 1
                    return None
                self._changed.wait(max(grow_at - now, 0.01) if self._open < self.size else None)

    def give_back(self, ftp: ftplib.FTP, reusable: bool) -> None:
        if not reusable:
            self._discard(ftp)
            return
        with self._changed:
            self._idle.append((ftp, time.monotonic()))
            self._changed.notify()

    def _discard(self, ftp: ftplib.FTP) -> None:
        ftp.close()
        self._forget()

    def _forget(self) -> None:
        with self._changed:
            self._open -= 1
            self._changed.notify()

    def _close_expired(self) -> None:
        """Close the connections idle for longer than idle_seconds (called with the lock held)."""
        oldest = time.monotonic() - self.idle_seconds
        expired = [ftp for ftp, since in self._idle if since < oldest]
        if expired:
            self._idle = [(ftp, since) for ftp, since in self._idle if since >= oldest]
            self._open -= len(expired)
            for ftp in expired:
                ftp.close()  # no QUIT: a hung server must not hold the lock; it sees the connection end

    def sweep(self) -> None:
        with self._changed:
            self._close_expired()

    def after_fork(self) -> None:
        """In a forked child: the parent's connections are not ours to use (or to close)."""
        self._idle, self._open, self._changed = [], 0, threading.Condition()


_pools: weakref.WeakSet[ConnectionPool] = weakref.WeakSet()
_sweeper: threading.Thread | None = None
_sweeper_lock = threading.Lock()


def _start_sweeper() -> None:
    """One daemon thread per process closes idle connections, so none lingers on the FTP server after use."""
    global _sweeper
    with _sweeper_lock:
        if _sweeper is not None and _sweeper.is_alive():
            return

        def sweep_forever() -> None:
            while True:
                time.sleep(IDLE_SECONDS / 3)
                for pool in list(_pools):
                    pool.sweep()

        _sweeper = threading.Thread(target=sweep_forever, name="flops-ftp-pool-sweeper", daemon=True)
        _sweeper.start()


def _after_fork_in_child() -> None:
    global _sweeper
    _sweeper = None
    for pool in list(_pools):
        pool.after_fork()


os.register_at_fork(after_in_child=_after_fork_in_child)
