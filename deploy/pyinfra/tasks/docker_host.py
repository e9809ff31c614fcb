"""The docker_host role (mode docker): Docker Engine with the Compose plugin, and the compose stack running.

The compose project is the render of the stack configuration (flops_mlops.compose, as `flops-mlops render
--target compose`), for every tenant in it, written to ``<data>/compose``. What its images build from
(host data ``flops_compose_paths``) and extra compose files such as an override (``flops_compose_files`` after
the first, ``compose.yaml``), relative to the repository, are copied beside it (from a checkout only; see
FROM_CHECKOUT). Its ``.env`` (mode 0600) holds
exactly the secrets the rendered compose.yaml reads, from the secrets file; ports and addresses are the
configuration's, in compose.yaml. With TLS on a hop the deployment's CA certificate (``.env.ca.crt``, 0644) and the
servers' certificates and keys sit beside it, root's and 0600: the FTPS store's with artifact_store.tls
(``.env.ftp-tls.crt``/``.key``), the MySQL server's with backend_store.tls (``.env.mysql-tls.*``), each tenant's
tracking server's with tracking.tls (``.env.tracking-<tenant>.*``), where compose.yaml's secrets find them
(FLOPS_SECRETS_FILE). ``docker
compose up -d --wait`` runs when something changed or a service is not running.
"""

from __future__ import annotations

import io
import shlex
from pathlib import Path

from flops_mlops.compose import render as compose_project
from flops_mlops.configuration import certificates
from flops_mlops.configuration.schema import ConfigError
from flops_mlops.rendered import RenderedFile
from pyinfra import host
from pyinfra.api import deploy
from pyinfra.facts.server import Command
from pyinfra.operations import apt, files, server, systemd

from . import settings
from .settings import PYINFRA_DIR, SOURCE_EXCLUDE_DIRS, TEMPLATES, TRIM, HostDataError

REPOSITORY = PYINFRA_DIR.parent.parent
# Run from a checkout, the host builds our images from copies of their build contexts (flops_compose_paths). Run
# from an installed flops-mlops, there are none: compose.yaml has no build sections, and the images come from
# images.* (a registry, or loaded on the host beforehand).
FROM_CHECKOUT = (REPOSITORY / "deploy/images/python/Dockerfile").is_file()
DOCKER_APT = "https://download.docker.com/linux/debian"


def compose_dir(s: settings.HostSettings) -> str:
    return f"{s.data}/compose"


def project(s: settings.HostSettings) -> str:
    """Compose project name: one per stack (and root folder), so stacks on one host keep apart."""
    return s.service_prefix


def compose_files() -> list[str]:
    value = host.data.get("flops_compose_files") or []
    if isinstance(value, str) or not value or value[0] != compose_project.COMPOSE_FILE:
        raise HostDataError(f"host {host.name}: flops_compose_files: expected a list of compose files that starts "
                            f"with {compose_project.COMPOSE_FILE} (rendered from the configuration), got {value!r}")
    return list(value)


def compose(s: settings.HostSettings, *args: str) -> str:
    files = [arg for name in compose_files() for arg in ("-f", f"{compose_dir(s)}/{name}")]
    return shlex.join(["docker", "compose", "--project-directory", compose_dir(s), "-p", project(s), *files, *args])


def env_data(s: settings.HostSettings, rendered: list[RenderedFile]) -> dict:
    """The .env of the rendered compose.yaml: the secrets it reads, and the stores published on loopback only
    (the tracking servers reach them inside the compose network), whatever address the UI gets."""
    keys = compose_project.secret_keys(rendered)
    missing = [key for key in keys if not s.secrets.values.get(key)]
    if missing:
        raise ConfigError(f"{s.secrets.path}: compose.yaml needs {', '.join(missing)} (run `flops-mlops secrets "
                          f"init` with this configuration)")
    knobs = {"FLOPS_BIND_ADDRESS": "127.0.0.1"}
    c = s.config
    if c.artifact_store.tls or certificates.mysql_tls(c) or c.tracking.tls:  # certificates beside .env (tls_files)
        knobs["FLOPS_SECRETS_FILE"] = f"{compose_dir(s)}/.env"
    return {"stack": s.config.name, "secrets": {key: s.secrets.values[key] for key in keys}, "knobs": knobs}


def tls_sources(s: settings.HostSettings) -> dict[str, Path]:
    """The files compose.yaml's secrets name, by suffix after ``.env.`` (made first when missing): the CA, and the
    certificate and key of each server with TLS on (artifact_store.tls, backend_store.tls, tracking.tls)."""
    c, found = s.config, {}
    if c.artifact_store.tls:
        certificates.make_certificate(c, extra_hosts=settings.reachable_at())
        found.update(zip(("ca.crt", "ftp-tls.crt", "ftp-tls.key"), certificates.ftp_files(c)))
    if certificates.mysql_tls(c):
        certificates.make_mysql_certificate(c, extra_hosts=settings.reachable_at())
        found.update(zip(("ca.crt", "mysql-tls.crt", "mysql-tls.key"), certificates.mysql_files(c)))
    if c.tracking.tls:
        certificates.make_tracking_certificates(c)
        for tenant in c.tenants:
            leaf = certificates.tracking_leaf(tenant.id)
            found.update(zip((f"{leaf}.crt", f"{leaf}.key"), certificates.tracking_files(c, tenant.id)))
    return found


def tls_files(s: settings.HostSettings) -> list:
    """The CA (0644) and the servers' certificates and keys (0600) beside the .env (tls_sources)."""
    copied = []
    for suffix, source in tls_sources(s).items():
        mode = "644" if suffix == "ca.crt" else "600"
        copied.append(files.put(name=f"TLS file .env.{suffix} (mode {mode})", src=str(source),
                                dest=f"{compose_dir(s)}/.env.{suffix}", user="root", group="root", mode=mode))
    return copied


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
        systemd.service(name="Docker Engine running", service="docker.service", running=True, enabled=True)

    target = compose_dir(s)
    files.directory(name="Compose folder", path=target, mode="755")
    rendered = (compose_project.render(s.config, Path(target), checkout=Path(target)) if FROM_CHECKOUT
                else compose_project.render(s.config, Path(target)))
    copied = []
    for item in rendered:
        if "/" in item.path:
            files.directory(name=f"Folder of {item.path}", path=f"{target}/{item.path.rsplit('/', 1)[0]}", mode="755")
        copied.append(files.put(name=f"Rendered {item.path}", src=io.StringIO(item.text),
                                dest=f"{target}/{item.path}", mode=f"{item.mode:o}"))
    build_paths = (host.data.get("flops_compose_paths") or []) if FROM_CHECKOUT else []
    for relative in dict.fromkeys([*compose_files()[1:], *build_paths]):
        source = (REPOSITORY / relative).resolve()
        if REPOSITORY not in source.parents or not source.exists():
            key = "flops_compose_paths" if relative in build_paths else "flops_compose_files"
            raise HostDataError(f"host {host.name}: {key}: {relative!r} is not a file or folder "
                                f"inside {REPOSITORY}")
        if source.is_dir():
            copied.append(files.sync(name=f"Copy {relative}", src=str(source), dest=f"{target}/{relative}",
                                     delete=True, exclude=["*.pyc", "*.whl"],
                                     exclude_dir=SOURCE_EXCLUDE_DIRS))
        else:
            copied.append(files.put(name=f"Copy {relative}", src=str(source), dest=f"{target}/{relative}",
                                    mode="644"))
    copied += tls_files(s)
    copied.append(files.template(
        name="Compose .env: the passwords compose.yaml reads (mode 0600)", src=str(TEMPLATES / "compose.env.j2"),
        dest=f"{target}/.env", user="root", group="root", mode="600", jinja_env_kwargs=dict(TRIM),
        **env_data(s, rendered)))

    def not_all_running() -> bool:  # every service but the one-shot, which exits once it has done its work
        wanted = host.get_fact(Command, compose(s, "config", "--services") + f" | grep -vx {compose_project.ONE_SHOT}"
                                        " | wc -l")
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
