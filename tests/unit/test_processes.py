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
