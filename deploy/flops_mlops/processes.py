"""Background processes of a stack, tracked by pid files in the state dir.

Each process is started in its own session (so its children share its process group), its output
goes to ``logs/<name>.log`` and its pid and start time to ``pids/<name>.pid``. Stopping uses only
that recorded pid, and only if the process with that pid is still the one we started (same start time):
never a search by name.
"""

from __future__ import annotations

import json
import os
import pwd
import signal
import socket
import subprocess
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import psutil

# Where service binaries live on Debian: PATH plus the sbin folders, which a plain user's PATH lacks.
SERVICE_PATH = os.pathsep.join([os.environ.get("PATH", ""), "/usr/sbin", "/usr/local/sbin"])


class StackError(Exception):
    """Something in the running stack failed; the message says what and where its log is."""


@dataclass(frozen=True)
class ManagedProcess:
    name: str
    state_dir: Path

    @property
    def pid_file(self) -> Path:
        return self.state_dir / "pids" / f"{self.name}.pid"

    @property
    def log_file(self) -> Path:
        return self.state_dir / "logs" / f"{self.name}.log"

    def start(self, argv: list[str], env: dict[str, str], cwd: Path | None = None,
              account: pwd.struct_passwd | None = None) -> int:
        """Start ``argv`` in a session of its own, as ``account`` if given (then without root's groups)."""
        private_dir(self.pid_file.parent)
        with open_log(self.log_file) as log:
            log.write(f"\n--- {time.strftime('%Y-%m-%d %H:%M:%S')} starting {argv[0]}\n".encode())
            log.flush()
            proc = subprocess.Popen(
                argv, env=env, cwd=cwd, stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT,
                start_new_session=True, **as_account(account),
            )
        record = {"pid": proc.pid, "start_ticks": start_ticks(proc.pid), "argv0": argv[0], "started_at": time.time()}
        write_private(self.pid_file, json.dumps(record) + "\n")
        return proc.pid

    def _record(self) -> dict:
        try:
            return json.loads(self.pid_file.read_text(encoding="utf-8"))
        except (FileNotFoundError, ValueError):
            return {}

    def condition(self) -> tuple[str, float | None]:
        """(state, since): ``running`` since its start; ``stopped`` by `down` or `restart`, since then;
        ``down``: it exited on its own (crashed, killed), since its last sign of life (the last write to its
        log: it died then or a little later); ``never started``."""
        record = self._record()
        if self.recorded() is not None:
            return "running", record.get("started_at")
        if "stopped_at" in record:
            return "stopped", record["stopped_at"]
        if "pid" in record:
            times = [record.get("started_at") or 0.0]
            if self.log_file.exists():
                times.append(self.log_file.stat().st_mtime)
            return "down", max(times) or None
        return "never started", None

    def recorded(self) -> psutil.Process | None:
        """The process we started, if it is still alive (a reused pid does not count)."""
        try:
            record = self._record()
            if start_ticks(record["pid"]) != record["start_ticks"]:
                return None
            proc = psutil.Process(record["pid"])
            return None if proc.status() == psutil.STATUS_ZOMBIE else proc
        except (FileNotFoundError, ProcessLookupError, ValueError, KeyError, psutil.Error):
            return None

    def is_running(self) -> bool:
        return self.recorded() is not None

    def stop(self, timeout: float = 20.0) -> bool:
        """Stop the process group we started: SIGTERM, then SIGKILL after ``timeout``. True if it was running."""
        proc = self.recorded()
        if proc is None:
            if self.pid_file.exists():
                self._mark_stopped()
            return False
        group = [proc, *proc.children(recursive=True)]
        signal_group(proc.pid, signal.SIGTERM)
        _, alive = psutil.wait_procs(group, timeout=timeout)
        if alive:
            signal_group(proc.pid, signal.SIGKILL)
            for survivor in alive:
                try:
                    survivor.kill()
                except psutil.Error:
                    pass
            psutil.wait_procs(alive, timeout=5)
        self._mark_stopped()
        return True

    def _mark_stopped(self) -> None:
        """Keep when it was stopped (for `status`) instead of the pid, which is no longer ours."""
        write_private(self.pid_file, json.dumps({"stopped_at": time.time()}) + "\n")

    def log_tail(self, lines: int = 20) -> str:
        try:
            text = self.log_file.read_text(encoding="utf-8", errors="replace")
        except FileNotFoundError:
            return "(no log)"
        return "\n".join(text.rstrip().splitlines()[-lines:])

    def failure(self, what: str) -> StackError:
        indented = "\n".join("    " + line for line in self.log_tail().splitlines())
        return StackError(f"{what}\n  log: {self.log_file}\n  last lines:\n{indented}")


def private_dir(path: Path, mode: int = 0o700) -> Path:
    """A folder of the state dir: created if missing, and only for its owner (``mode``)."""
    path.mkdir(parents=True, exist_ok=True)
    os.chmod(path, mode)
    return path


def open_log(path: Path):
    """A log file opened for appending, readable by its owner only: logs may quote what a service saw."""
    private_dir(path.parent)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600)
    os.fchmod(fd, 0o600)
    return os.fdopen(fd, "ab")


def write_private(path: Path, text: str, mode: int = 0o600) -> None:
    """Write a file with ``mode`` (owner only by default), atomically: a crash leaves the old file intact."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, mode)
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as handle:
            handle.write(text)
            handle.flush()
            os.fsync(handle.fileno())
        os.chmod(tmp, mode)
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


def as_account(account: pwd.struct_passwd | None) -> dict:
    """subprocess keyword arguments that run a child as ``account``, with a private umask."""
    if account is None:
        return {"umask": 0o077}
    return {"user": account.pw_uid, "group": account.pw_gid, "extra_groups": [], "umask": 0o077}


def can_traverse(path: Path, account: pwd.struct_passwd) -> bool:
    """Whether ``account`` may enter every folder above ``path`` (pytest's tmp dirs are root-only).

    Folders that do not exist yet do not count: whoever creates them (the stack, with its own modes) decides.
    """
    for folder in path.resolve().parents:
        if not folder.exists():
            continue
        st = folder.stat()
        if st.st_uid == account.pw_uid:
            continue
        if st.st_mode & 0o001 or (st.st_gid == account.pw_gid and st.st_mode & 0o010):
            continue
        return False
    return True


def start_ticks(pid: int) -> int:
    """When the process started, in clock ticks since boot (/proc/<pid>/stat field 22).

    Unlike a wall-clock start time this does not move when NTP steps the clock, so a recorded pid is
    recognised exactly, and a reused pid is not mistaken for ours.
    """
    with open(f"/proc/{pid}/stat", encoding="ascii", errors="replace") as handle:
        fields_after_name = handle.read().rsplit(")", 1)[1].split()
    return int(fields_after_name[19])  # field 22 overall; fields 1-2 (pid, name) are before ")"


def signal_group(pid: int, sig: int) -> None:
    try:
        os.killpg(pid, sig)  # the group of the session we created at start; its leader is the pid we recorded
    except ProcessLookupError:
        pass


def run_whole(argv: list[str], env: dict[str, str], grace: float = 30.0) -> subprocess.CompletedProcess:
    """Run ``argv`` to its end (output captured, text) in a session of its own. When this process is interrupted
    (Ctrl-C, or SIGTERM, which the CLI turns into one), the whole group is stopped, not only its leader:
    SIGTERM (a builder such as mmdebstrap then cleans up its mounts), SIGKILL after ``grace`` seconds."""
    process = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env,
                               start_new_session=True)
    try:
        stdout, stderr = process.communicate()
    except BaseException:
        signal_group(process.pid, signal.SIGTERM)
        try:
            process.wait(grace)
        except subprocess.TimeoutExpired:
            pass
        signal_group(process.pid, signal.SIGKILL)  # what is left of the group, leader gone or not
        process.wait()
        raise
    return subprocess.CompletedProcess(argv, process.returncode, stdout, stderr)


def port_is_free(host: str, port: int) -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind((host, port))
        except OSError:
            return False
    return True


def port_answers(host: str, port: int) -> bool:
    try:
        with socket.create_connection((host, port), timeout=1):
            return True
    except OSError:
        return False


REPORT_EVERY = 5.0  # seconds between "still waiting" lines


def wait_until(ready: Callable[[], bool], process: ManagedProcess, what: str, timeout: float,
               interval: float = 0.3, progress: Callable[[str], None] | None = None, waiting_for: str = "",
               since: float | None = None) -> None:
    """Poll ``ready`` until it is true; fail early if ``process`` dies, or after ``timeout`` seconds.

    With ``progress``: tell it which service (``waiting_for``) is awaited, every REPORT_EVERY seconds, with the
    seconds elapsed since ``since`` (a time.monotonic() value, such as the service's start; default: now), and
    when it is ready.
    """
    began = time.monotonic() if since is None else since
    deadline = time.monotonic() + timeout
    next_report = time.monotonic()  # the first line comes before the first poll: it names the service
    while time.monotonic() < deadline:
        if progress and time.monotonic() >= next_report:
            progress(f"waiting for {waiting_for}: {time.monotonic() - began:.0f} s (gives up at {timeout:.0f} s)")
            next_report += REPORT_EVERY
        if ready():
            if progress:
                progress(f"{waiting_for}: ready after {time.monotonic() - began:.1f} s")
            return
        if not process.is_running():
            raise process.failure(f"{what}: the process exited")
        time.sleep(interval)
    raise process.failure(f"{what}: not ready after {timeout:.0f} s")
