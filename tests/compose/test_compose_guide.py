"""The compose guide (docs/compose.md), run as a newcomer runs it: every command block of the page, line by line
and as written (`make venv` included), in a clean copy of the repository, then a check that no container,
network or volume of the project remains.

Only what cannot be the user's is changed, through the environment compose reads: the project name and free
ports (this machine may run other stacks), fewer rounds, and, with FLOPS_COMPOSE_OVERRIDE, COMPOSE_FILE naming the
override, which the guide tells readers without a registry to export (`scripts/compose-ci.sh` prints it).
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import uuid
from pathlib import Path

import pytest
import requests
from compose_stack import need_engine
from conftest import ROOT, free_port, free_port_range

pytestmark = [pytest.mark.docker, pytest.mark.services, pytest.mark.timeout(1800)]
GUIDE = ROOT / "docs" / "compose.md"


def guide_commands(text: str | None = None) -> list[str]:
    """Every command of every command block (indented by four spaces after a blank line), in order, as written
    (a trailing comment is the shell's to ignore)."""
    text = GUIDE.read_text(encoding="utf-8") if text is None else text
    commands = []
    for block in re.findall(r"(?:^|\n)\n((?: {4}.*\n)+)", text):
        commands += [line[4:].rstrip() for line in block.splitlines() if line.strip()]
    return commands


def without_comment(command: str) -> str:
    return re.sub(r"\s+#.*$", "", command)


def test_the_guide_is_the_sequence_this_test_checks():
    assert [without_comment(c) for c in guide_commands()] == [
        "make venv",
        ".venv/bin/flops-mlops --config configs/compose.yaml secrets init",
        "docker compose up -d",
        "docker compose run --rm --use-aliases fl-aggregator",
        "docker compose --profile serve up -d --wait",
        "curl -s -X POST \"http://$(docker compose port model-server 8080)/invocations\" -H 'Content-Type: "
        "application/json' -d @examples/sklearn/two_digits.json",
        "docker compose --profile '*' down",
        "docker compose --profile serve up -d --wait",
        "curl -s \"http://$(docker compose port model-server 8080)/model\"",
        "docker compose --profile '*' down -v",
        # Your own ML repository: the PyTorch example in its own image.
        ".venv/bin/flops-mlops --config configs/compose.yaml build-fl-image --project digitscnn --ml-repo "
        "examples/pytorch --compose-env .env",
        ".venv/bin/python examples/pytorch/data_manager.py .flops/fl-data --learners 2",
        "docker compose up -d --wait",
        "docker compose run --rm --use-aliases fl-aggregator",
        "docker compose --profile serve up -d --wait",
        "curl -s -X POST \"http://$(docker compose port model-server 8080)/invocations\" -H 'Content-Type: "
        "application/json' -d @examples/pytorch/two_digits.json",
        "docker compose --profile '*' down -v",
    ]


def leftovers(kind: str, project: str) -> list[str]:
    """The project's containers (any state), networks or volumes."""
    argv = {"container": ["docker", "ps", "--all"], "network": ["docker", "network", "ls"],
            "volume": ["docker", "volume", "ls"]}[kind]
    return subprocess.run([*argv, "--quiet", "--filter", f"label=com.docker.compose.project={project}"],
                          capture_output=True, text=True, check=True).stdout.split()


def test_the_guide_runs_as_written(clean_checkout):
    need_engine()
    folder: Path = clean_checkout
    pasv_min, pasv_max = free_port_range(5)
    tracking_port, serve_port = free_port(), free_port()
    project = f"flopsguide-{uuid.uuid4().hex[:8]}"
    env = {k: v for k, v in os.environ.items() if not k.startswith(("FLOPS_", "MLFLOW_", "COMPOSE_", "VIRTUAL_ENV"))}
    if os.environ.get("FLOPS_BASE_IMAGE"):  # the local base image, which the guide tells readers without a registry
        env["FLOPS_BASE_IMAGE"] = os.environ["FLOPS_BASE_IMAGE"]  # to export (scripts/compose-ci.sh prints it)
    env.update({
        "COMPOSE_PROJECT_NAME": project,
        "FLOPS_TRACKING_PORT": str(tracking_port), "FLOPS_MYSQL_PORT": str(free_port()),
        "FLOPS_FTP_PORT": str(free_port()), "FLOPS_FTP_PASV_MIN_PORT": str(pasv_min),
        "FLOPS_FTP_PASV_MAX_PORT": str(pasv_max), "FLOPS_SERVE_PORT": str(serve_port), "FLOPS_FL_ROUNDS": "2",
    })
    override = os.environ.get("FLOPS_COMPOSE_OVERRIDE", "").strip()
    if override:
        env["COMPOSE_FILE"] = f"compose.yaml{os.pathsep}{override}"
    served, projects = [], iter(["composedemo", "digitscnn"])
    try:
        for command in guide_commands():
            result = subprocess.run(["bash", "-c", command], cwd=folder, env=env, capture_output=True, text=True,
                                    timeout=900)
            output = result.stdout + result.stderr
            assert result.returncode == 0, f"{command!r} exited {result.returncode}:\n{output[-4000:]}"
            plain = without_comment(command)
            if plain.startswith("docker compose run"):
                # The aggregator prints a summary for a person (no FLOPS_EVENT lines), whose links a browser on
                # this machine opens, as the tenant's admin.
                project_name = next(projects)
                assert f"summary of {project_name}" in result.stdout and "FLOPS_EVENT" not in output, output[-3000:]
                links = re.findall(r"https?://[^\s\"',]+/#/experiments/\d+[^\s]*", result.stdout)
                assert len(links) == 2 and all(link.startswith(f"https://127.0.0.1:{tracking_port}/") for link in links)
                admin = dict(line.split("=", 1) for line in (folder / ".env").read_text().splitlines()
                             if "=" in line and not line.startswith("#"))["FLOPS_TENANT_DEFAULT_ADMIN_PASSWORD"]
                # HTTPS verified against the deployment's CA, as the guide tells a browser to trust it
                assert requests.get(links[-1].split("#")[0], auth=("admin", admin), timeout=30,
                                    verify=str(folder / ".env.ca.crt")).status_code == 200
            if plain.startswith("curl") and "/invocations" in plain:
                assert len(json.loads(result.stdout)["predictions"]) == 2, output
            if plain.startswith(".venv/bin/flops-mlops") and "build-fl-image" in plain:
                # The project's image is named in .env, for the fl and serve profiles.
                image = re.search(r"^built (flops-mlops/fl-digitscnn:\S+) ", result.stdout, re.MULTILINE).group(1)
                settings = (folder / ".env").read_text().splitlines()
                assert {"FLOPS_FL_PROJECT=digitscnn", f"FLOPS_FL_IMAGE={image}",
                        f"FLOPS_SERVE_IMAGE={image}"} <= set(settings), settings[-5:]
            if plain.startswith("curl") and plain.endswith('/model"'):
                served.append(json.loads(result.stdout))
            if plain == "docker compose --profile '*' down":
                assert leftovers("container", project) == [], "containers left behind by the guide's stop"
                assert len(leftovers("volume", project)) == 3  # the data stays
        # After `up` again the champion trained before was served: the project did not run again.
        assert [(s["name"], s["version"], s["alias"]) for s in served] == [("composedemo", "1", "champion")]
        for kind in ("container", "network", "volume"):
            assert leftovers(kind, project) == [], f"{kind}s of project {project} left after the guide's last stop"
    finally:
        subprocess.run(["docker", "compose", "--profile", "*", "down", "--volumes", "--remove-orphans", "--timeout",
                        "20"], cwd=folder, env=env, capture_output=True, timeout=300)
