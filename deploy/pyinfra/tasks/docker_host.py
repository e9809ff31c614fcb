"""The docker_host role (mode docker): Docker Engine with the Compose plugin, and the compose stack running.

The compose bundle (compose.yaml and the folders it builds from or mounts, host data ``flops_compose_paths``,
relative to the repository) is copied to ``<data>/compose``, the stack's secrets file becomes its ``.env``
(mode 0600), and ``docker compose up -d`` runs when a copied file changed or a service is not running.
"""

from __future__ import annotations

import shlex

from pyinfra import host
from pyinfra.api import deploy
from pyinfra.facts.server import Command
from pyinfra.operations import apt, files, server, systemd

from . import settings
from .settings import PYINFRA_DIR, HostDataError

REPOSITORY = PYINFRA_DIR.parent.parent
DOCKER_APT = "https://download.docker.com/linux/debian"


def compose_dir(s: settings.HostSettings) -> str:
    return f"{s.data}/compose"


def _compose(s: settings.HostSettings, *args: str) -> str:
    return shlex.join(["docker", "compose", "--project-directory", compose_dir(s), *args])


@deploy("FLOps docker host (Docker Engine + Compose)")
def docker_host() -> None:
    s = settings.current()
    if s.install_packages:
        # Debian 12 has no Compose v2 package: use Docker's own repository (key and suite from host data).
        files.directory(name="apt keyrings folder", path="/etc/apt/keyrings", mode="755")
        files.download(name="Docker's apt signing key", src=f"{DOCKER_APT}/gpg", dest="/etc/apt/keyrings/docker.asc",
                       mode="644")
        apt.repo(name="Docker's apt repository", filename="docker",
                 src=f"deb [signed-by=/etc/apt/keyrings/docker.asc] {DOCKER_APT} "
                     f"{host.data.get('flops_debian_suite')} stable")
        apt.packages(name="Docker Engine and the Compose plugin", packages=list(host.data.get("flops_docker_packages")),
                     update=True, cache_time=3600)
        if s.systemd:
            systemd.service(name="Docker Engine running", service="docker.service", running=True, enabled=True)

    target = compose_dir(s)
    files.directory(name="Compose folder", path=target, mode="755")
    copied = []
    for relative in host.data.get("flops_compose_paths") or []:
        source = (REPOSITORY / relative).resolve()
        if REPOSITORY not in source.parents or not source.exists():
            raise HostDataError(f"host {host.name}: flops_compose_paths: {relative!r} is not a file or folder "
                                f"inside {REPOSITORY}")
        if source.is_dir():
            copied.append(files.sync(name=f"Copy {relative}", src=str(source), dest=f"{target}/{relative}",
                                     delete=True, exclude=["*.pyc", "*.whl"],
                                     exclude_dir=["__pycache__", "*.egg-info"]))
        else:
            copied.append(files.put(name=f"Copy {relative}", src=str(source), dest=f"{target}/{relative}",
                                    mode="644"))
    copied.append(files.put(name="Secrets as the compose .env (mode 0600)", src=str(s.secrets.path),
                            dest=f"{target}/.env", user="root", group="root", mode="600"))

    def not_all_running() -> bool:
        wanted = host.get_fact(Command, _compose(s, "config", "--services") + " | wc -l")
        running = host.get_fact(Command, _compose(s, "ps", "--status", "running", "--services") + " | wc -l")
        return str(wanted).strip() != str(running).strip()

    server.shell(name="docker compose up -d", commands=[_compose(s, "up", "-d", "--wait")],
                 _if=lambda: any(op.did_change() for op in copied) or not_all_running())


@deploy("Stop FLOps docker host's stack")
def stop_docker_host() -> None:
    s = settings.current()
    server.shell(name="docker compose down (volumes stay)",
                 commands=[f"if [ -f {shlex.quote(compose_dir(s))}/compose.yaml ]; then {_compose(s, 'down')}; fi"])
