"""A tenant added to a compose stack that already has data: the user adds it to the configuration, runs
`secrets init` (which keeps every existing value) and `render --target compose` again, then `docker compose up -d`.

The backend-store volume exists, so the official MySQL contract would not run initdb.d again; our image runs the
tenants script again on every later start (FLOPS_RERUN_ON_START), so the new tenant's databases and user appear,
its tracking server starts and works, and the first tenant's records are untouched (docs/compose.md).
"""

from __future__ import annotations

import pytest
import requests
import yaml
from compose_stack import compose_files, start_stack
from conftest import free_port, run_cli

pytestmark = [pytest.mark.docker, pytest.mark.services, pytest.mark.timeout(1800)]

NEW = "acme"


def test_a_tenant_added_to_a_stack_with_data_gets_its_database_and_server(tmp_path_factory):
    from flops_mlops.configuration.secrets import read_env
    from tracking_checks import log_example

    stacks = start_stack(tmp_path_factory)
    stack = next(stacks)
    try:
        before = log_example(stack.tracking_uri, experiment="before-acme", login=stack.admin)
        folder = stack.env_file.parent
        config_path = folder / "compose-stack.yaml"
        data = yaml.safe_load(config_path.read_text(encoding="utf-8"))
        data["tenants"].append({"id": NEW})
        config_path.write_text(yaml.safe_dump(data), encoding="utf-8")
        run_cli("secrets", "init", config=config_path, check=True)
        run_cli("render", "--target", "compose", "--out", str(folder), config=config_path, check=True)
        secrets = read_env(stack.env_file)
        assert {k: secrets[k] for k in stack.secrets} == stack.secrets  # the first tenant's passwords are kept
        port_key = f"FLOPS_TENANT_{NEW.upper()}_TRACKING_PORT"
        stack.ports[port_key] = free_port()
        stack.env[port_key] = str(stack.ports[port_key])
        stack.secrets, stack.files = secrets, compose_files(folder / "compose.yaml")

        stack.up()

        logs = stack.compose("logs", "--no-color", "backend-store").stdout
        assert "10-flops-tenants.sh again" in logs, logs[-3000:]
        logged = log_example(stack.tenant_uri(NEW), experiment="acme-first", login=stack.tenant_admin(NEW))
        assert logged.run_id
        # The first tenant's data and server are as they were, and its admin is not the new tenant's.
        names = {e["name"] for e in requests.get(f"{stack.tracking_uri}/api/2.0/mlflow/experiments/search",
                                                 auth=stack.admin, params={"max_results": 100},
                                                 timeout=30).json()["experiments"]}
        assert {"before-acme"} <= names and "acme-first" not in names, names
        run = requests.get(f"{stack.tracking_uri}/api/2.0/mlflow/runs/get", params={"run_id": before.run_id},
                           auth=stack.admin, timeout=30)
        assert run.status_code == 200, run.text
        assert requests.get(f"{stack.tenant_uri(NEW)}/api/2.0/mlflow/experiments/search", auth=stack.admin,
                            params={"max_results": 1}, timeout=30).status_code == 401
    finally:
        stacks.close()
