"""The README's first command, as a new user runs it: `make demo` in a clean copy of the repository (its own venv,
configs/local.yaml as shipped), then the curl line it ends with, then `make down ARGS=--purge`.

The one change: this machine may run other stacks, so the demo runs on a copy of configs/local.yaml whose ports
(5000-5001, 2121, 30000-30009 as shipped) are free ones, and DEMO_PORT is a free port instead of 8080; both are the
Makefile's own knobs (CONFIG, DEMO_PORT). Nothing else of the configuration changes.
"""

from __future__ import annotations

import json
import os
import shlex
import subprocess
from pathlib import Path

import psutil
import pytest
import yaml
from conftest import free_port, free_port_range

pytestmark = [pytest.mark.timeout(1500)]


def test_make_demo_ends_with_a_curl_line_that_gets_predictions(clean_checkout):
    folder: Path = clean_checkout
    shipped = yaml.safe_load((folder / "configs" / "local.yaml").read_text(encoding="utf-8"))
    data = yaml.safe_load((folder / "configs" / "local.yaml").read_text(encoding="utf-8"))
    data["tracking"]["base_port"] = free_port_range(len(data["tenants"]))[0]
    data["artifact_store"]["port"] = free_port()
    data["artifact_store"]["passive_ports"] = list(free_port_range(4))
    changed = {(section, key) for section, values in data.items() if isinstance(values, dict)
               for key in values if values[key] != shipped[section][key]}
    assert changed == {("tracking", "base_port"), ("artifact_store", "port"), ("artifact_store", "passive_ports")}
    config = "configs/local-free-ports.yaml"  # beside local.yaml: its relative paths (.flops/local, .env) hold
    (folder / config).write_text(yaml.safe_dump(data, sort_keys=False), encoding="utf-8")
    # A new user's shell: none of our variables, and not inside another make (`make test` runs this test; its
    # MAKELEVEL and MAKEFLAGS would make the inner make print "Entering/Leaving directory" lines around the demo).
    env = {k: v for k, v in os.environ.items()
           if not k.startswith(("FLOPS_", "MLFLOW_", "VIRTUAL_ENV")) and k not in ("MAKELEVEL", "MAKEFLAGS", "MFLAGS")}
    knobs = [f"CONFIG={config}", f"DEMO_PORT={free_port()}"]

    def make(*args: str) -> subprocess.CompletedProcess:
        return subprocess.run(["make", *args, *knobs], cwd=folder, env=env, capture_output=True, text=True,
                              timeout=1200)

    try:
        demo = make("demo")
        assert demo.returncode == 0, f"make demo exited {demo.returncode}:\n{demo.stdout[-4000:]}\n{demo.stderr[-4000:]}"
        last = demo.stdout.strip().splitlines()[-1]
        assert last.startswith("predict:") and "curl " in last, demo.stdout[-2000:]
        answer = subprocess.run(shlex.split(last.removeprefix("predict:")), cwd=folder, capture_output=True,
                                text=True, timeout=60)
        assert answer.returncode == 0, answer.stderr
        predictions = json.loads(answer.stdout)["predictions"]
        # the served scikit-learn example: five held-out digits (5, 3, 9, 9, 6), answered with digits 0-9, and a
        # model that learnt something tells them apart
        assert len(predictions) == 5 and set(predictions) <= set(range(10)), answer.stdout
        assert len(set(predictions)) >= 3, answer.stdout
        status = subprocess.run([".venv/bin/flops-mlops", "--config", config, "status", "--json"], cwd=folder,
                                env=env, capture_output=True, text=True, timeout=120, check=True)
        pids = [s["pid"] for s in json.loads(status.stdout)["services"] if s["running"]]
        assert len(pids) == 4, status.stdout  # two tracking servers, the FTP store, the model server
    finally:
        down = make("down", "ARGS=--purge")
    assert down.returncode == 0, down.stderr
    assert not [pid for pid in pids if psutil.pid_exists(pid)]
    assert not (folder / ".flops" / "local").exists()
