"""The pyinfra deploys on this machine as an @local sandbox host: no systemd (start-stop-daemon with pid files),
its own ports (from a test stack configuration) and every path under a private root folder.

One fresh host goes through: dry run (plans, changes nothing), apply, second apply (0 changes), a tenant's
tracking server end to end as its admin (model files on FTP as the tenant, rows in MySQL as the tenant), its
login, account and private files, then stop.
"""

from __future__ import annotations

import stat
import sys
from pathlib import Path

import pytest
import yaml
from conftest import run_cli
from pyinfra_hosts import (
    PYINFRA_DIR,
    changed_operations,
    check_login_and_private_files,
    check_tenant_end_to_end,
    need_native_services,
    pid_files,
    provision,
    recorded_processes,
    sandbox_root,
    stop_leftovers,
    wait_gone,
    write_stack,
)

pytestmark = [pytest.mark.services, pytest.mark.timeout(900)]

INVENTORY = PYINFRA_DIR / "inventories" / "sandbox.py"


@pytest.fixture(scope="module")
def sandbox(tmp_path_factory):
    need_native_services()
    folder = tmp_path_factory.mktemp("pyinfra-sandbox")
    config = write_stack(folder, ["acme"])
    with sandbox_root() as root_parent:
        yield from _run(config, root_parent / "root")


def _run(config, root):
    env = {"FLOPS_SANDBOX_ROOT": str(root), "FLOPS_SANDBOX_VENV": sys.prefix}
    state = {"config": config, "root": root, "env": env, "name": yaml.safe_load(config.read_text())["name"]}
    try:
        state["dry"] = provision(config, INVENTORY, "--dry", env=env)
        state["root_after_dry"] = root.exists()
        state["first"] = provision(config, INVENTORY, env=env)
        state["second"] = provision(config, INVENTORY, env=env)
        yield state
    finally:
        provision(config, INVENTORY, "--stop", env=env, check=False)
        stop_leftovers(root, state["name"])


def test_dry_run_plans_on_a_fresh_host_and_changes_nothing(sandbox):
    plan = sandbox["dry"]["plan"]
    names = [op["name"] for op in plan]
    assert any("Create the MariaDB system tables" in n for n in names)
    assert any("Create or update tenants' databases and users" in n for n in names)
    assert any("Start" in n and "tracking-acme" in n for n in names)
    assert sandbox["root_after_dry"] is False  # nothing was written


def test_apply_then_second_apply_reports_no_changes(sandbox):
    first = sandbox["first"]["results"]["totals"]
    assert first["error"] == 0 and first["success"] > 0, first
    second = sandbox["second"]["results"]
    assert second["totals"]["error"] == 0
    assert second["totals"]["success"] == 0, changed_operations(sandbox["second"])


def test_secrets_stay_out_of_output_process_arguments_and_files_for_others(sandbox):
    from flops_mlops import config as config_module
    from flops_mlops.secrets import Secrets

    secrets = Secrets.load(config_module.load(sandbox["config"]))
    root = sandbox["root"]
    for private in [*root.glob("etc/flops-mlops/*/tracking/*.env"), *root.glob("etc/flops-mlops/*/tenants.sql"),
                    *root.glob("etc/flops-mlops/*/vsftpd/passwd")]:
        assert stat.S_IMODE(private.stat().st_mode) == 0o600, private
    for run in ("dry", "first", "second"):
        assert not any(value in sandbox[run]["output"] for value in secrets.values.values() if value), run
    processes = recorded_processes(root)
    assert len(processes) == 3  # MariaDB, vsftpd, one tracking server
    for proc in processes:
        argv = " ".join(proc.cmdline())
        assert not any(value in argv for value in secrets.values.values() if value), proc.pid


def test_tenant_tracking_server_end_to_end(sandbox):
    check_tenant_end_to_end(sandbox["config"], "127.0.0.1", "127.0.0.1", "127.0.0.1")


def test_tracking_server_asks_for_a_login_runs_as_its_account_and_keeps_secrets_private(sandbox):
    check_login_and_private_files(sandbox["config"], "127.0.0.1", sandbox["root"])


def test_stop_ends_every_service_by_its_pid_file(sandbox):
    processes = recorded_processes(sandbox["root"])
    assert processes
    provision(sandbox["config"], INVENTORY, "--stop", env=sandbox["env"])
    assert wait_gone(processes) == []
    assert pid_files(sandbox["root"]) == []
    assert list(Path("/etc/pam.d").glob(f"flops-mlops-{sandbox['name']}-*")) == []


def test_root_as_service_account_is_refused(tmp_path):
    config = write_stack(tmp_path, ["acme"])
    inventory = tmp_path / "root_service_user.py"
    data = {"flops_roles": ["tracking_server"], "flops_init": "start-stop-daemon", "flops_root": f"{tmp_path}/root",
            "flops_install_packages": False, "flops_service_user": "root", "flops_venv": sys.prefix,
            "flops_manage_venv": False}
    inventory.write_text(f"hosts = [('@local', {data!r})]\n")
    result = run_cli("provision", "--inventory", str(inventory), "--dry", config=config, timeout=300)
    assert result.returncode != 0
    assert "host @local: flops_service_user: tracking servers never run as root" in result.stdout + result.stderr
    assert not (tmp_path / "root").exists()


def test_managed_venv_plans_flops_mlops_itself(tmp_path):
    """With flops_manage_venv the venv gets flops-mlops (the servers' login app), not only MLflow (plan level;
    applied by hand once: a second apply changed nothing)."""
    config = write_stack(tmp_path, ["acme"])
    inventory = tmp_path / "managed_venv.py"
    data = {"flops_roles": ["tracking_server"], "flops_init": "start-stop-daemon", "flops_root": f"{tmp_path}/root",
            "flops_install_packages": False, "flops_venv": f"{tmp_path}/root/opt/venv", "flops_manage_venv": True}
    inventory.write_text(f"hosts = [('@local', {data!r})]\n")
    names = [op["name"] for op in provision(config, inventory, "--dry")["plan"]]
    assert not (tmp_path / "root").exists()
    prefix = "FLOps tracking servers (MLflow) | "
    assert f"{prefix}Copy deploy/flops_mlops" in names
    assert names.index(f"{prefix}MLflow and store drivers (pinned)") < names.index(
        f"{prefix}flops-mlops in the venv (pinned by the lock)") < next(
        i for i, n in enumerate(names) if n.startswith(f"{prefix}Start ") and n.endswith("-tracking-acme"))


def test_docker_mode_plans_engine_bundle_and_compose_up(tmp_path):
    """docker mode at plan level (--dry): compose.yaml rendered, the image sources and .env copied, then `up -d`.

    Needs no Docker engine; test_pyinfra_docker.py applies it where the engine and the images are available.
    """
    config = write_stack(tmp_path, ["default"])
    with sandbox_root() as root_parent:
        root = root_parent / "root"
        env = {"FLOPS_SANDBOX_ROOT": str(root), "FLOPS_SANDBOX_MODE": "docker"}
        names = [op["name"] for op in provision(config, INVENTORY, "--dry", env=env)["plan"]]
        assert not root.exists()
    assert "FLOps docker host (Docker Engine + Compose) | Rendered compose.yaml" in names
    assert ("FLOps docker host (Docker Engine + Compose) | Rendered "
            "deploy/compose/backend-store/initdb.d/10-flops-tenants.sh") in names
    assert "FLOps docker host (Docker Engine + Compose) | Copy deploy/images" in names
    assert "FLOps docker host (Docker Engine + Compose) | Compose .env: the passwords compose.yaml reads (mode 0600)" in names
    assert names[-1] == "FLOps docker host (Docker Engine + Compose) | docker compose up -d"
    assert not any("MariaDB" in n or "vsftpd" in n for n in names)
