"""Pid files: a process is recognised by its pid and start time, stopped with its whole group."""

from __future__ import annotations

import json
import sys
import time

import psutil
from flops_mlops.processes import ManagedProcess


def test_recorded_process_is_recognised_and_stopped_with_its_children(tmp_path):
    process = ManagedProcess("sleeper", tmp_path)
    child_code = "import subprocess, sys, time; subprocess.Popen([sys.executable, '-c', 'import time; time.sleep(60)']); time.sleep(60)"
    pid = process.start([sys.executable, "-c", child_code], env={})
    assert process.recorded().pid == pid
    deadline = time.monotonic() + 30
    while not psutil.Process(pid).children() and time.monotonic() < deadline:
        time.sleep(0.05)
    group = [psutil.Process(pid), *psutil.Process(pid).children(recursive=True)]
    assert len(group) == 2
    assert process.stop(timeout=10)
    assert not [p for p in group if p.is_running() and p.status() != psutil.STATUS_ZOMBIE]
    # The pid is forgotten (no longer ours); when it was stopped is kept, for `status`.
    assert json.loads(process.pid_file.read_text()).keys() == {"stopped_at"}
    assert process.condition()[0] == "stopped"
    assert process.stop() is False  # nothing left to stop


def test_a_pid_that_started_at_another_time_is_not_ours(tmp_path):
    process = ManagedProcess("sleeper", tmp_path)
    pid = process.start([sys.executable, "-c", "import time; time.sleep(60)"], env={})
    try:
        record = json.loads(process.pid_file.read_text())
        process.pid_file.write_text(json.dumps({**record, "start_ticks": record["start_ticks"] - 1}))
        assert process.recorded() is None  # a reused pid: never signalled
        assert process.stop() is False
        assert psutil.pid_exists(pid)
    finally:
        psutil.Process(pid).kill()


def test_an_interrupted_run_whole_stops_the_whole_group_not_only_its_leader():
    """Ctrl-C (or SIGTERM, which the CLI turns into one) during a builder's run: the builder's own children stop too
    (subprocess.run would kill the leader alone and leave them running, as mmdebstrap's apt and dpkg were)."""
    import os
    import signal

    import pytest
    from flops_mlops.processes import run_whole

    pid_file = f"/tmp/flops-run-whole-{os.getpid()}"
    script = f"sleep 300 & echo $! > {pid_file}; trap '' TERM; sleep 300 & wait"  # a child, a leader that lingers

    def interrupt(*_):
        raise KeyboardInterrupt

    previous = signal.signal(signal.SIGALRM, interrupt)
    signal.alarm(2)
    started = time.monotonic()
    try:
        with pytest.raises(KeyboardInterrupt):
            run_whole(["sh", "-c", script], env=dict(os.environ), grace=3)
    finally:
        signal.alarm(0)
        signal.signal(signal.SIGALRM, previous)
    child = int(open(pid_file).read())
    os.unlink(pid_file)
    assert not psutil.pid_exists(child) or psutil.Process(child).status() == psutil.STATUS_ZOMBIE
    assert time.monotonic() - started < 30  # the leader ignored SIGTERM: SIGKILL after the grace
