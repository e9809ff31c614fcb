"""The docker_host role (mode docker): Docker Engine with the Compose plugin, and the compose stack running.

The compose files (host data ``flops_compose_files``) and what they build from or mount (``flops_compose_paths``),
relative to the repository, are copied to ``<data>/compose``; its ``.env`` (mode 0600) holds the secrets compose.yaml
reads (store passwords, the tracking server's admin password and secret key, the FL project user's password)
from the secrets file and compose.yaml's knobs (ports, addresses) from the stack configuration; and
``docker compose up -d --wait`` runs when something changed or a service is not running.
"""

from __future__ import annotations

import shlex

from pyinfra import host
from pyinfra.api import deploy
from pyinfra.facts.server import Command
from pyinfra.operations import apt, files, server, systemd

from flops_mlops import secrets as secret_keys
from flops_mlops.config import ConfigError

from . import settings
from .settings import PYINFRA_DIR, TEMPLATES, TRIM, HostDataError

REPOSITORY = PYINFRA_DIR.parent.parent
DOCKER_APT = "https://download.docker.com/linux/debian"
COMPOSE_TENANT = "default"  # compose.yaml's one tenant


def compose_secret_keys() -> list[str]:
    """The secrets compose.yaml reads from .env (``${KEY:?}``): store passwords, and the tracking server's admin
    password and secret key and the FL project user's password (its login)."""
    return [secret_keys.MYSQL_ADMIN_KEY, secret_keys.db_password_key(COMPOSE_TENANT),
            secret_keys.ftp_password_key(COMPOSE_TENANT), secret_keys.admin_password_key(COMPOSE_TENANT),
            secret_keys.secret_key_key(COMPOSE_TENANT), secret_keys.fl_password_key(COMPOSE_TENANT)]


def compose_dir(s: settings.HostSettings) -> str:
    return f"{s.data}/compose"


def project(s: settings.HostSettings) -> str:
    """Compose project name: one per stack (and root folder), so stacks on one host keep apart."""
    return s.service_prefix


def compose_files() -> list[str]:
    value = host.data.get("flops_compose_files") or []
    if isinstance(value, str) or not value:
        raise HostDataError(f"host {host.name}: flops_compose_files: expected a list of compose files, got {value!r}")
    return list(value)


def compose(s: settings.HostSettings, *args: str) -> str:
    files = [arg for name in compose_files() for arg in ("-f", f"{compose_dir(s)}/{name}")]
    return shlex.join(["docker", "compose", "--project-directory", compose_dir(s), "-p", project(s), *files, *args])


def env_data(s: settings.HostSettings) -> dict:
    """compose.yaml's .env: the passwords, and its knobs (ports, addresses) from the stack configuration."""
    config = s.config
    if [t.id for t in config.tenants] != [COMPOSE_TENANT]:
        raise ConfigError(f"{config.source}: tenants: compose.yaml runs one tenant, {COMPOSE_TENANT!r}; "
                          f"docker mode needs exactly that tenant (as in configs/compose.yaml)")
    store, tracking = config.artifact_store, config.tracking
    knobs = {
        # The stores are reached inside the compose network: publish them on loopback only, whatever
        # address the UI gets.
        "FLOPS_BIND_ADDRESS": "127.0.0.1",
        "FLOPS_TRACKING_BIND_ADDRESS": tracking.host,
        "FLOPS_TRACKING_PORT": config.tracking_port(config.tenants[0]),
        "FLOPS_PUBLIC_HOST": tracking.public_host,
        "FLOPS_ALLOWED_HOSTS": ",".join(tracking.allowed_hosts),
        "FLOPS_TRACKING_WORKERS": tracking.workers,
        "FLOPS_MYSQL_PORT": config.backend_store.port,
        "FLOPS_FTP_PORT": store.port,
        "FLOPS_FTP_PASV_MIN_PORT": store.passive_ports[0],
        "FLOPS_FTP_PASV_MAX_PORT": store.passive_ports[1],
        "FLOPS_FTP_PASV_ADDRESS": store.pasv_address,
    }
    missing = [key for key in compose_secret_keys() if not s.secrets.values.get(key)]
    if missing:
        raise ConfigError(f"{s.secrets.path}: compose.yaml needs {', '.join(missing)} (docker mode runs MySQL; "
                          f"use a configuration like configs/compose.yaml and `flops-mlops secrets init`)")
    secrets = {key: s.secrets.values[key] for key in compose_secret_keys()}
    return {"stack": config.name, "secrets": secrets, "knobs": {k: str(v) for k, v in knobs.items()}}


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
    for relative in dict.fromkeys([*compose_files(), *(host.data.get("flops_compose_paths") or [])]):
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
    copied.append(files.template(
        name="Compose .env: passwords and ports (mode 0600)", src=str(TEMPLATES / "compose.env.j2"),
        dest=f"{target}/.env", user="root", group="root", mode="600", jinja_env_kwargs=dict(TRIM), **env_data(s)))

    def not_all_running() -> bool:
        wanted = host.get_fact(Command, compose(s, "config", "--services") + " | wc -l")
        running = host.get_fact(Command, compose(s, "ps", "--status", "running", "--services") + " | wc -l")
        return str(wanted).strip() != str(running).strip()

    server.shell(name="docker compose up -d", commands=[compose(s, "up", "-d", "--wait")],
                 _if=lambda: any(op.did_change() for op in copied) or not_all_running())


@deploy("Stop FLOps docker host's stack")
def stop_docker_host() -> None:
    s = settings.current()
    first = shlex.quote(f"{compose_dir(s)}/{compose_files()[0]}")
    server.shell(name="docker compose down (volumes stay)",
                 commands=[f"if [ -f {first} ]; then {compose(s, 'down')}; fi"])
