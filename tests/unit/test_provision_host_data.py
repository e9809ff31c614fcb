"""`flops-mlops provision` refuses bad host data before any host is contacted: exit 2 and one line naming the
inventory, the host and the key (deploy/pyinfra/check_inventory.py), never a pyinfra traceback."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
import yaml
from conftest import ROOT, run_cli

PYINFRA_DIR = ROOT / "deploy" / "pyinfra"

TRACKING = '("mlflow.example.org", {"flops_roles": ["tracking_server"]})'
CASES = {
    "wrong role name": (f'hosts = [("db.example.org", {{"flops_roles": ["backend"]}}), {TRACKING}]',
                        "host db.example.org: flops_roles: expected a list of backend_store, artifact_store, "
                        "tracking_server, model_server, docker_host, got ['backend']"),
    "store host without an address": (f'hosts = [("@local", {{"flops_roles": ["backend_store"]}}), {TRACKING}]',
                                      "host @local: flops_address: missing"),
    "address that is no host name": ('hosts = [("db", {"flops_roles": ["artifact_store"], '
                                     f'"flops_address": "10.0.0.1; rm -rf /"}}), {TRACKING}]',
                                     "host db: flops_address: '10.0.0.1; rm -rf /' is not a host name or IP address"),
    "host without systemd": ('hosts = [("db.example.org", {"flops_roles": ["backend_store"], '
                             '"flops_init": "start-stop-daemon"})]',
                             "host db.example.org: flops_init: expected one of systemd, got 'start-stop-daemon'"),
    "role on two hosts": ('hosts = [("a.example.org", {"flops_roles": ["backend_store"]}), '
                          '("b.example.org", {"flops_roles": ["backend_store"]})]',
                          "inventory: role backend_store is given to several hosts (a.example.org, b.example.org)"),
    "roles that do not fit docker mode": ('hosts = [("d.example.org", {"flops_mode": "docker", '
                                          '"flops_roles": ["backend_store"]})]',
                                          "host d.example.org: flops_roles: ['backend_store'] does not fit flops_mode"),
}


@pytest.fixture(scope="module")
def config(tmp_path_factory):
    folder = tmp_path_factory.mktemp("host-data")
    path = folder / "stack.yaml"
    path.write_text(yaml.safe_dump({
        "name": "hostdata", "state_dir": str(folder / "state"), "secrets_file": str(folder / "secrets.env"),
        "backend_store": {"kind": "mysql", "managed": False}, "artifact_store": {"kind": "vsftpd", "managed": False},
        "tenants": [{"id": "acme"}]}))
    run_cli("secrets", "init", config=path, check=True)
    return path


def write_inventory(folder: Path, text: str) -> Path:
    inventory = folder / "inventory.py"
    inventory.write_text(text + "\n")
    return inventory


@pytest.mark.parametrize("case", list(CASES))
def test_bad_host_data_is_named_by_host_and_key(tmp_path, config, case):
    inventory_text, expected = CASES[case]
    inventory = write_inventory(tmp_path, inventory_text)
    result = subprocess.run([sys.executable, "check_inventory.py", str(inventory), str(config)], cwd=PYINFRA_DIR,
                            capture_output=True, text=True, timeout=120)
    assert result.returncode == 2, (result.stdout, result.stderr)
    assert result.stderr.startswith(f"{inventory}: {expected}"), result.stderr


@pytest.mark.parametrize("case", ["wrong role name", "store host without an address"])
def test_provision_exits_2_before_pyinfra_runs(tmp_path, config, case):
    inventory_text, expected = CASES[case]
    inventory = write_inventory(tmp_path, inventory_text)
    result = run_cli("provision", "--inventory", str(inventory), config=config, timeout=120)
    assert result.returncode == 2, (result.stdout, result.stderr)
    assert result.stderr.startswith(f"error: {inventory}: {expected}"), result.stderr
    assert result.stderr.count("\n") == 1 and "Traceback" not in result.stderr
    assert result.stdout == ""  # pyinfra never ran: no host was contacted


def test_the_shipped_inventories_pass(config):
    for inventory in sorted((PYINFRA_DIR / "inventories").glob("*.py")):
        if inventory.name == "sandbox.py":
            continue  # needs FLOPS_SANDBOX_ROOT; the sandbox tests apply it
        result = subprocess.run([sys.executable, "check_inventory.py", str(inventory), str(config)],
                                cwd=PYINFRA_DIR, capture_output=True, text=True, timeout=120)
        assert result.returncode == 0, (inventory.name, result.stderr)
