"""What a failed training leaves behind, and how the project's next `round` finishes it.

- **Runs left RUNNING.** The aggregator marks the runs it started FAILED when its training fails, as long as the
  tracking server answers (round_tracker.RoundTracker.fail). A run it could not reach (the server or its
  database was down) stays RUNNING; the project's next `round` closes it first (``close_stale_runs``: FAILED,
  with a tag ``flops.failure`` that says why). Only runs an FL training made (tag ``flops.project``) are touched.
- `round` holds the project's lock (``project_lock``) while it trains, so the runs found are never those of a
  training still going on this machine, and a second `round` of the same project is refused, not interleaved.
"""

from __future__ import annotations

import fcntl
import os
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from ..processes import StackError, private_dir
from ..tracking.users import AuthAdmin
from .settings import validate_project

LOCK_FILE = ".round.lock"
STALE_NOTE = ("left RUNNING by a training that ended without closing it (its tracking server or database did not "
              "answer); marked FAILED by the project's next round")


@contextmanager
def project_lock(folder: Path, tenant: str, project: str) -> Iterator[None]:
    """Hold the project's lock (a file in its folder) for the block; StackError if another command holds it."""
    private_dir(folder)
    fd = os.open(folder / LOCK_FILE, os.O_RDWR | os.O_CREAT, 0o600)
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            raise StackError(f"another `round` of project {project} of tenant {tenant} is running on this machine; "
                             "wait until it ends") from None
        yield
    finally:
        os.close(fd)


def close_stale_runs(admin: AuthAdmin, project: str) -> list[str]:
    """Mark FAILED every run of the project's experiment that an earlier training left RUNNING (tag
    flops.project); their names and ids."""
    experiment = admin.experiment_id(validate_project(project))
    if experiment is None:
        return []
    _, found = admin.call("POST", "/api/2.0/mlflow/runs/search", json={
        "experiment_ids": [experiment], "max_results": 1000,
        "filter": f"attributes.status = 'RUNNING' and tags.`flops.project` = '{project}'"})
    closed = []
    for run in found.get("runs", []):
        info = run["info"]
        admin.call("POST", "/api/2.0/mlflow/runs/set-tag",
                   json={"run_id": info["run_id"], "key": "flops.failure", "value": STALE_NOTE})
        admin.call("POST", "/api/2.0/mlflow/runs/update",
                   json={"run_id": info["run_id"], "status": "FAILED", "end_time": int(time.time() * 1000)})
        closed.append(f"{info.get('run_name') or '?'} ({info['run_id']})")
    return closed
