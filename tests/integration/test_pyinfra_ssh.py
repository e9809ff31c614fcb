"""The three-host inventory over SSH: backend store, artifact store and tracking server each on its own host.

The hosts are this machine reached through a private sshd (its own host and client keys, started by the
test) at three loopback addresses, 127.0.0.2-4, each with its own root folder. The tracking server host
learns the store hosts' addresses from the inventory. Apply, a second apply with 0 changes, the end-to-end
check of a tenant (as its admin), its tracking server's login, account and private files, then stop; the test
stops its sshd by its recorded pid.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml
from conftest import free_port, need_binary
from flops_mlops.processes import port_answers
from pyinfra_hosts import (
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

HOSTS = {"backend": ("127.0.0.2", "backend_store"), "artifacts": ("127.0.0.3", "artifact_store"),
         "tracking": ("127.0.0.4", "tracking_server")}


@pytest.fixture(scope="module")
def sshd(tmp_path_factory):
    """A private sshd on loopback addresses, for root with a key of its own; stopped by its pid."""
    need_native_services()
    sshd_binary = need_binary("sshd")
    need_binary("ssh-keygen")
    folder = tmp_path_factory.mktemp("sshd")
    home = folder / "home"  # a clean HOME: root's own start-up files are slow here
    home.mkdir()
    subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", str(folder / "host_key")], check=True)
    subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", str(folder / "client_key")], check=True)
    client_pub = (folder / "client_key.pub").read_text().strip()
    (folder / "authorized_keys").write_text(f'environment="HOME={home}" {client_pub}\n')
    port = free_port()
    host_pub = " ".join((folder / "host_key.pub").read_text().split()[:2])
    (folder / "known_hosts").write_text("".join(f"[{address}]:{port} {host_pub}\n" for address, _ in HOSTS.values()))
    listen = "".join(f"ListenAddress {address}:{port}\n" for address, _ in HOSTS.values())
    (folder / "sshd_config").write_text(
        f"{listen}HostKey {folder / 'host_key'}\nPidFile {folder / 'sshd.pid'}\n"
        f"AuthorizedKeysFile {folder / 'authorized_keys'}\nPermitRootLogin prohibit-password\n"
        "PasswordAuthentication no\nKbdInteractiveAuthentication no\nUsePAM no\nPermitUserEnvironment yes\n"
        "StrictModes no\nSubsystem sftp internal-sftp\nLogLevel ERROR\n")
    made_run_dir = not Path("/run/sshd").exists()
    Path("/run/sshd").mkdir(mode=0o755, exist_ok=True)  # privilege separation folder sshd insists on
    proc = subprocess.Popen([sshd_binary, "-D", "-f", str(folder / "sshd_config"), "-E", str(folder / "sshd.log")],
                            stdin=subprocess.DEVNULL, start_new_session=True)
    try:
        deadline = time.monotonic() + 20
        while not all(port_answers(address, port) for address, _ in HOSTS.values()):
            if proc.poll() is not None or time.monotonic() > deadline:
                raise AssertionError(f"sshd did not come up: {(folder / 'sshd.log').read_text()}")
            time.sleep(0.2)
        yield {"port": port, "key": folder / "client_key", "known_hosts": folder / "known_hosts"}
    finally:
        os.killpg(proc.pid, signal.SIGTERM)  # the session this test started for sshd, by its recorded pid
        proc.wait(timeout=20)
        if made_run_dir:
            Path("/run/sshd").rmdir()


def write_inventory(path: Path, sshd: dict, root: Path) -> dict[str, Path]:
    roots = {name: root / name for name in HOSTS}
    common = {"ssh_user": "root", "ssh_port": sshd["port"], "ssh_key": str(sshd["key"]),
              "ssh_known_hosts_file": str(sshd["known_hosts"]), "ssh_strict_host_key_checking": "yes",
              "flops_init": "start-stop-daemon", "flops_install_packages": False, "flops_service_user": "flops-mlops",
              "flops_venv": sys.prefix, "flops_manage_venv": False}
    lines = [f'"""Three hosts, one role each, on this machine over SSH (written by {Path(__file__).name})."""\n']
    for name, (address, role) in HOSTS.items():
        data = {**common, "ssh_hostname": address, "flops_root": str(roots[name]), "flops_roles": [role]}
        lines.append(f"{name} = [({name!r}, {data!r})]\n")
    path.write_text("".join(lines), encoding="utf-8")
    return roots


@pytest.fixture(scope="module")
def three_hosts(sshd, tmp_path_factory):
    folder = tmp_path_factory.mktemp("pyinfra-ssh")
    config = write_stack(folder, ["acme"])
    data = yaml.safe_load(config.read_text())
    data["backend_store"]["host"] = HOSTS["backend"][0]
    data["artifact_store"]["host"] = HOSTS["artifacts"][0]
    data["artifact_store"]["pasv_address"] = HOSTS["artifacts"][0]
    data["tracking"]["host"] = data["tracking"]["public_host"] = HOSTS["tracking"][0]
    config.write_text(yaml.safe_dump(data))
    inventory = folder / "three_hosts.py"
    with sandbox_root() as root:
        roots = write_inventory(inventory, sshd, root)
        state = {"config": config, "inventory": inventory, "roots": roots, "name": data["name"]}
        try:
            state["first"] = provision(config, inventory)
            state["second"] = provision(config, inventory)
            yield state
        finally:
            provision(config, inventory, "--stop", check=False)
            for host_root in roots.values():
                stop_leftovers(host_root, data["name"])


def test_each_role_runs_on_its_own_host(three_hosts):
    totals = three_hosts["first"]["results"]["totals"]
    assert totals["error"] == 0 and three_hosts["first"]["results"]["failed_hosts"] == []
    roots = three_hosts["roots"]
    names = {name: [p.name for p in pid_files(root)] for name, root in roots.items()}
    assert [n.endswith("-mariadb.pid") for n in names["backend"]] == [True]
    assert [n.endswith("-vsftpd.pid") for n in names["artifacts"]] == [True]
    assert [n.endswith("-tracking-acme.pid") for n in names["tracking"]] == [True]
    env_file = next(roots["tracking"].glob("etc/flops-mlops/*/tracking/acme.env")).read_text()
    assert f"@{HOSTS['backend'][0]}:" in env_file and f"@{HOSTS['artifacts'][0]}:" in env_file


def test_second_apply_over_ssh_reports_no_changes(three_hosts):
    second = three_hosts["second"]["results"]
    assert second["totals"]["error"] == 0
    assert second["totals"]["success"] == 0, changed_operations(three_hosts["second"])


def test_tenant_end_to_end_across_hosts(three_hosts):
    check_tenant_end_to_end(three_hosts["config"], HOSTS["tracking"][0], HOSTS["backend"][0], HOSTS["artifacts"][0])


def test_tracking_host_asks_for_a_login_runs_as_its_account_and_keeps_secrets_private(three_hosts):
    check_login_and_private_files(three_hosts["config"], HOSTS["tracking"][0], three_hosts["roots"]["tracking"])


def test_stop_over_ssh_ends_every_service(three_hosts):
    processes = [p for root in three_hosts["roots"].values() for p in recorded_processes(root)]
    assert len(processes) == 3
    provision(three_hosts["config"], three_hosts["inventory"], "--stop")
    assert wait_gone(processes) == []
    assert all(pid_files(root) == [] for root in three_hosts["roots"].values())
    assert list(Path("/etc/pam.d").glob(f"flops-mlops-{three_hosts['name']}-*")) == []
