"""The pyinfra deploys on this machine as an @local host, at plan level (`--dry`): no systemd here, so nothing
native is applied (test_pyinfra_systemd.py applies the native roles to systemd hosts in containers;
test_pyinfra_docker.py applies docker mode here). Host data the deploys refuse, and docker mode's plan.
"""

from __future__ import annotations

import sys

import pytest
from conftest import run_cli
from pyinfra_hosts import PYINFRA_DIR, provision, sandbox_root, write_stack

pytestmark = [pytest.mark.services, pytest.mark.timeout(900)]

INVENTORY = PYINFRA_DIR / "inventories" / "sandbox.py"


def test_root_as_service_account_is_refused(tmp_path):
    config = write_stack(tmp_path, ["acme"])
    inventory = tmp_path / "root_service_user.py"
    data = {"flops_roles": ["tracking_server"], "flops_root": f"{tmp_path}/root", "flops_install_packages": False,
            "flops_service_user": "root", "flops_venv": sys.prefix, "flops_manage_venv": False}
    inventory.write_text(f"hosts = [('@local', {data!r})]\n")
    result = run_cli("provision", "--inventory", str(inventory), "--dry", config=config, timeout=300)
    assert result.returncode != 0
    assert "host @local: flops_service_user: tracking servers never run as root" in result.stdout + result.stderr
    assert not (tmp_path / "root").exists()


def test_docker_mode_plans_engine_bundle_and_compose_up(tmp_path):
    """docker mode at plan level (--dry): compose.yaml rendered, the image sources and .env copied, then `up -d`.

    Needs no Docker engine; test_pyinfra_docker.py applies it where the engine and the images are available.
    """
    config = write_stack(tmp_path, ["default"])
    with sandbox_root() as root_parent:
        root = root_parent / "root"
        env = {"FLOPS_SANDBOX_ROOT": str(root)}
        names = [op["name"] for op in provision(config, INVENTORY, "--dry", env=env)["plan"]]
        assert not root.exists()
    assert "FLOps docker host (Docker Engine + Compose) | Rendered compose.yaml" in names
    assert ("FLOps docker host (Docker Engine + Compose) | Rendered "
            "deploy/compose/backend-store/initdb.d/10-flops-tenants.sh") in names
    assert "FLOps docker host (Docker Engine + Compose) | Copy deploy/images" in names
    assert "FLOps docker host (Docker Engine + Compose) | Compose .env: the passwords compose.yaml reads (mode 0600)" in names
    assert names[-1] == "FLOps docker host (Docker Engine + Compose) | docker compose up -d"
    assert not any("MariaDB" in n or "vsftpd" in n for n in names)
