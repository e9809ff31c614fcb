"""Backup and restore of a compose stack's tenant (docs/backup.md, "Docker Compose"): `flops-mlops backup` and
`restore` run on the host against the stores compose publishes, with the configuration of that stack.

The drill as a user runs it: a model logged and registered, a user with a grant; `backup`; the stack deleted with
its volumes and started again, empty; `docker compose stop tracking-server`, `restore`, `docker compose start
tracking-server`. Everything reads back the same through the tracking server (HTTPS, verified against the deployment's CA), the FTP files byte for byte (FTPS), and
the registered model loads.
"""

from __future__ import annotations

import stat
from pathlib import Path

import pytest
import yaml
from backup_checks import ftp_hashes, tenant_snapshot
from compose_stack import TENANT, ComposeStack, ftp_password, stack  # noqa: F401 (the stack fixture)
from conftest import run_cli
from tracking_checks import log_example, logged_in

pytestmark = [pytest.mark.docker, pytest.mark.services, pytest.mark.timeout(1200)]


def host_config(stack: ComposeStack) -> Path:
    """The stack's configuration with the ports this test's compose project publishes (the user's own stack
    publishes the ones in configs/compose.yaml, or sets them there)."""
    folder = stack.env_file.parent
    data = yaml.safe_load((folder / "compose-stack.yaml").read_text(encoding="utf-8"))
    data["backend_store"]["port"] = stack.ports["FLOPS_MYSQL_PORT"]
    data["artifact_store"]["port"] = stack.ports["FLOPS_FTP_PORT"]
    data["artifact_store"]["passive_ports"] = [stack.ports["FLOPS_FTP_PASV_MIN_PORT"],
                                               stack.ports["FLOPS_FTP_PASV_MAX_PORT"]]
    data["tenants"] = [{"id": TENANT, "port": stack.ports["FLOPS_TRACKING_PORT"]}]
    path = folder / "host-stack.yaml"
    path.write_text(yaml.safe_dump(data), encoding="utf-8")
    return path


def snapshot(stack: ComposeStack) -> dict:
    files = ftp_hashes("127.0.0.1", stack.ports["FLOPS_FTP_PORT"], f"flops_{TENANT}", ftp_password(stack), stack.ca)
    return tenant_snapshot(stack.tracking_uri, stack.admin[1], files)


def test_a_tenant_backed_up_and_restored_into_an_emptied_stack_reads_back_the_same(stack, tmp_path):
    import mlflow

    config = host_config(stack)
    with logged_in(stack.admin):
        logged = log_example(stack.tracking_uri, experiment="Kept")
        mlflow.set_tracking_uri(stack.tracking_uri)
        version = mlflow.register_model(logged.model_uri, "Kept").version
        (tmp_path / "alice.pw").write_text("alice-has-a-long-password\n")
        run_cli("user", "add", "--tenant", TENANT, "--name", "alice", "--password-file", str(tmp_path / "alice.pw"),
                config=config, check=True)
        run_cli("user", "grant", "--tenant", TENANT, "--name", "alice", "--project", "Kept", config=config,
                check=True)
        before = snapshot(stack)
        assert before["runs"] and before["files"] and len(before["users"]) >= 2  # admin, alice (and fl users)

        done = run_cli("backup", "--tenant", TENANT, "--out", str(tmp_path / "backups"), config=config)
        assert done.returncode == 0, done.stderr
        archive = Path(done.stdout.strip().splitlines()[-1])
        assert stat.S_IMODE(archive.stat().st_mode) == 0o600

        # A lost installation: the volumes go, the stack comes back empty.
        stack.compose("down", "--volumes", "--timeout", "20")
        stack.up()
        assert snapshot(stack)["runs"] == {}

        stack.compose("stop", "tracking-server")
        restored = run_cli("restore", "--tenant", TENANT, str(archive), config=config)
        assert restored.returncode == 0, restored.stderr
        stack.up()  # starts the tracking server again and waits until it is healthy
        after = snapshot(stack)
        for key in before:
            assert after[key] == before[key], key
        model = mlflow.pyfunc.load_model(f"models:/Kept/{version}")
        assert model.metadata.run_id == logged.run_id

        # The tenant has data now: a second restore without --force is refused.
        again = run_cli("restore", "--tenant", TENANT, str(archive), config=config)
        assert again.returncode == 2 and "already has data" in again.stderr
