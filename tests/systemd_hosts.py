"""Debian 12 hosts with systemd as PID 1, as containers, for the pyinfra tests: reached over SSH at their own
addresses on a network of their own, restarted like a reboot, removed by the ids this module recorded.

The image is built without a registry by `scripts/compose-ci.sh build_systemd_host_image` (debootstrap, then
`docker import`). `--privileged` is refused on these machines ("unable to apply caps"); systemd runs with
CAP_SYS_ADMIN, no seccomp and AppArmor profile, the host's cgroup tree read-only and tmpfs on /run, /run/lock and
/tmp. Each container makes its own SSH host keys at first boot; root logs in with a key made for the test.
"""

from __future__ import annotations

import contextlib
import random
import subprocess
import time
import uuid
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

from conftest import missing_service

IMAGE = "flops-local/debian-systemd:bookworm"  # scripts/compose-ci.sh SYSTEMD_HOST_IMAGE
RUN_FLAGS = ["--cap-add", "SYS_ADMIN", "--security-opt", "seccomp=unconfined", "--security-opt",
             "apparmor=unconfined", "-v", "/sys/fs/cgroup:/sys/fs/cgroup:ro", "--tmpfs", "/run", "--tmpfs",
             "/run/lock", "--tmpfs", "/tmp", "--stop-signal", "SIGRTMIN+3"]


def docker(*args: str, check: bool = True, timeout: float = 120, stdin: str | None = None) -> str:
    result = subprocess.run(["docker", *args], capture_output=True, text=True, timeout=timeout, input=stdin)
    if check and result.returncode != 0:
        raise AssertionError(f"docker {' '.join(args[:3])} ... exited {result.returncode}: {result.stderr.strip()}")
    return result.stdout


@dataclass(frozen=True)
class SystemdHost:
    name: str        # inventory name, also the container's host name
    container: str   # container id
    address: str     # its own address on the test network (fixed: it survives a restart)

    def run(self, command: str, check: bool = True, timeout: float = 120) -> str:
        """A shell command on the host (as root), through the engine, not SSH."""
        return docker("exec", self.container, "sh", "-c", command, check=check, timeout=timeout)

    def unit_property(self, unit: str, prop: str) -> str:
        return self.run(f"systemctl show -p {prop} --value {unit}").strip()

    def wait_booted(self, timeout: float = 90) -> None:
        """systemd runs as PID 1 and sshd answers (other units may still be starting)."""
        deadline = time.monotonic() + timeout
        state = ""
        while time.monotonic() < deadline:
            state = self.run("systemctl is-system-running 2>/dev/null || true", check=False).strip()
            if state in ("starting", "running", "degraded") and self.run(
                    "systemctl is-active ssh || true", check=False).strip() == "active":
                return
            time.sleep(1)
        raise AssertionError(f"{self.name}: systemd state {state!r} after {timeout} s; failed units:\n"
                             + self.run("systemctl --failed --no-legend || true", check=False))

    def reboot(self) -> None:
        """Stop the container as systemd shuts down (SIGRTMIN+3), start it again; /run and /tmp start empty."""
        docker("restart", "--time", "60", self.container, timeout=180)
        self.wait_booted()


def need_engine_and_image() -> None:
    if subprocess.run(["docker", "info"], capture_output=True).returncode != 0:
        missing_service("no Docker engine answers (scripts/compose-ci.sh starts dockerd)")
    if subprocess.run(["docker", "image", "inspect", IMAGE], capture_output=True).returncode != 0:
        missing_service(f"image {IMAGE} missing (scripts/compose-ci.sh build_systemd_host_image builds it)")


def _network(label: str) -> tuple[str, str]:
    """A bridge network with a subnet given here (fixed addresses need one); another if that one is taken."""
    for _ in range(20):
        prefix = f"172.31.{random.randrange(64, 250)}"
        result = subprocess.run(["docker", "network", "create", "--subnet", f"{prefix}.0/24", "--label", label,
                                 f"{label}-net"], capture_output=True, text=True)
        if result.returncode == 0:
            return result.stdout.strip(), prefix
        if "overlap" not in result.stderr:
            raise AssertionError(f"docker network create: {result.stderr.strip()}")
    raise AssertionError("no free 172.31.x.0/24 subnet for the test network")


@contextlib.contextmanager
def systemd_hosts(names: list[str], folder: Path, mounts: dict[str, list[str]] | None = None):
    """Start one container per name, each at its own address, with root's SSH key from ``folder``.

    Yields (hosts by name, ssh data for the inventory: key, known_hosts file). ``mounts``: docker -v values per
    host name. Removes the containers and the network at the end, by their recorded ids.
    """
    need_engine_and_image()
    label = f"flops-pyinfra-{uuid.uuid4().hex[:8]}"
    subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-C", label, "-f", str(folder / "client_key")],
                   check=True)
    network, prefix = _network(label)
    hosts: dict[str, SystemdHost] = {}
    try:
        for number, name in enumerate(names, start=10):
            address = f"{prefix}.{number}"
            volumes = [arg for mount in (mounts or {}).get(name, []) for arg in ("-v", mount)]
            container = docker("run", "-d", "--name", f"{label}-{name}", "--hostname", name, "--label", label,
                               "--network", network, "--ip", address, *RUN_FLAGS, *volumes, IMAGE).strip()
            hosts[name] = SystemdHost(name, container, address)
        with ThreadPoolExecutor(len(hosts)) as pool:
            list(pool.map(SystemdHost.wait_booted, hosts.values()))
        public_key = (folder / "client_key.pub").read_text()
        known = []
        for host in hosts.values():
            host_key = " ".join(host.run("cat /etc/ssh/ssh_host_ed25519_key.pub").split()[:2])
            known.append(f"{host.address} {host_key}\n")
            docker("exec", "-i", host.container, "sh", "-c",
                   "mkdir -p -m 700 /root/.ssh && cat > /root/.ssh/authorized_keys", stdin=public_key)
        (folder / "known_hosts").write_text("".join(known))
        yield hosts, {"ssh_user": "root", "ssh_key": str(folder / "client_key"),
                      "ssh_known_hosts_file": str(folder / "known_hosts"), "ssh_strict_host_key_checking": "yes"}
    finally:
        if hosts:
            docker("rm", "-f", "-v", *(host.container for host in hosts.values()), check=False, timeout=300)
        docker("network", "rm", network, check=False)
