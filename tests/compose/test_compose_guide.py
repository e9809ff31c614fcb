"""The compose guide's commands, run as written (docs/compose.md), the way a new user runs them: in a folder
with compose.yaml and configs/compose.yaml, one after the other, a stop and a start again included.

Only what cannot be the user's is changed, through the environment compose reads: the project name and free
ports (this machine may run other stacks), and, with FLOPS_COMPOSE_OVERRIDE, COMPOSE_FILE adds CI's image
override (no registry here). The commands themselves are the guide's lines.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
import uuid
from pathlib import Path

import pytest
import requests
from compose_stack import need_engine
from conftest import ROOT, free_port, free_port_range

pytestmark = [pytest.mark.docker, pytest.mark.services, pytest.mark.timeout(1800)]
GUIDE = ROOT / "docs" / "compose.md"


def guide_commands() -> list[str]:
    """The first indented block of the guide: its commands, without comments."""
    block = re.search(r"\n\n((?: {4}.*\n)+)", GUIDE.read_text(encoding="utf-8")).group(1)
    commands = []
    for line in block.splitlines():
        command = line.strip().split("#", 1)[0].strip()
        if command:
            commands.append(command)
    return commands


def test_the_guide_is_the_sequence_this_test_runs():
    assert guide_commands() == [
        "flops-mlops --config configs/compose.yaml secrets init",
        "docker compose up -d",
        "docker compose --profile fl up -d",
        "docker compose logs -f fl-aggregator",
        "docker compose --profile fl down",
        "docker compose --profile fl up -d",
        "docker compose --profile fl down -v",
    ]


def user_folder(tmp_path: Path) -> Path:
    """What a user has after cloning: compose.yaml, configs/compose.yaml and what compose mounts or builds."""
    folder = tmp_path / "checkout"
    (folder / "configs").mkdir(parents=True)
    shutil.copy(ROOT / "compose.yaml", folder / "compose.yaml")
    shutil.copy(ROOT / "configs" / "compose.yaml", folder / "configs" / "compose.yaml")
    (folder / "deploy").symlink_to(ROOT / "deploy")
    override = os.environ.get("FLOPS_COMPOSE_OVERRIDE", "").strip()
    if override:
        shutil.copy(ROOT / override, folder / override)
        (folder / ".ci").symlink_to(ROOT / ".ci")
    return folder


def test_the_guide_runs_as_written(tmp_path):
    need_engine()
    folder = user_folder(tmp_path)
    pasv_min, pasv_max = free_port_range(5)
    tracking_port = free_port()
    project = f"flopsguide-{uuid.uuid4().hex[:8]}"
    env = {k: v for k, v in os.environ.items() if not k.startswith(("FLOPS_", "MLFLOW_", "COMPOSE_"))}
    env.update({
        "PATH": f"{Path(sys.executable).parent}{os.pathsep}{env.get('PATH', '')}",  # flops-mlops
        "COMPOSE_PROJECT_NAME": project,
        "FLOPS_TRACKING_PORT": str(tracking_port), "FLOPS_MYSQL_PORT": str(free_port()),
        "FLOPS_FTP_PORT": str(free_port()), "FLOPS_FTP_PASV_MIN_PORT": str(pasv_min),
        "FLOPS_FTP_PASV_MAX_PORT": str(pasv_max), "FLOPS_FL_ROUNDS": "2",
    })
    override = os.environ.get("FLOPS_COMPOSE_OVERRIDE", "").strip()
    if override:
        env["COMPOSE_FILE"] = f"compose.yaml{os.pathsep}{override}"
    outputs = []
    try:
        for command in guide_commands():
            result = subprocess.run(command, shell=True, cwd=folder, env=env, capture_output=True, text=True,
                                    timeout=900)
            outputs.append(result.stdout + result.stderr)
            assert result.returncode == 0, f"{command!r} exited {result.returncode}:\n{outputs[-1][-4000:]}"
            if command == "docker compose logs -f fl-aggregator":
                # The summary's link is one a browser on this machine opens, as the tenant's admin.
                links = re.findall(r"https?://[^\s\"',]+/#/experiments/\d+", outputs[-1])
                assert links, outputs[-1][-3000:]
                assert all(link.startswith(f"http://127.0.0.1:{tracking_port}/") for link in links), links
                admin = dict(line.split("=", 1) for line in (folder / ".env").read_text().splitlines()
                             if "=" in line and not line.startswith("#"))["FLOPS_TENANT_DEFAULT_ADMIN_PASSWORD"]
                page = requests.get(links[-1].split("#")[0], auth=("admin", admin), timeout=30)
                assert page.status_code == 200
            if command == "docker compose --profile fl down":
                left = subprocess.run(["docker", "ps", "--all", "--quiet", "--filter",
                                       f"label=com.docker.compose.project={project}"],
                                      capture_output=True, text=True, check=True).stdout.split()
                assert left == [], "containers left behind by the guide's stop"
        volumes = subprocess.run(["docker", "volume", "ls", "--quiet", "--filter",
                                  f"label=com.docker.compose.project={project}"],
                                 capture_output=True, text=True, check=True).stdout.split()
        assert volumes == []
    finally:
        subprocess.run(["docker", "compose", "--profile", "fl", "down", "--volumes", "--remove-orphans",
                        "--timeout", "20"], cwd=folder, env=env, capture_output=True, timeout=300)
