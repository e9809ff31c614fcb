"""The tracking server role: one MLflow server per tenant, as a service, proxying artifacts to the FTP store.

The servers point at the inventory's backend store and artifact store hosts. Store URIs (with passwords), the
admin password and the secret key reach a server only through its environment file (mode 0600, read by root),
never its command line. The command line is the one `flops-mlops up` uses (flops_mlops.tracking.server.
server_argv: MLflow's basic-auth app with our guards, so every server asks for a login), run by the venv's
Python, which must have flops-mlops installed (its `flops-basic-auth` app). Before each start the same Python
brings the schema up to date: `python -m flops_mlops.tracking.server upgrade-schema`, as `flops-mlops up` does.

Servers run as flops_service_user, never root. Each has a working folder (its HOME) and, inside it, an auth
folder with its SQLite auth database (MLflow's auth migrations fail on MySQL/MariaDB), both the account's own,
mode 0700.
"""

from __future__ import annotations

import shlex

from flops_mlops.configuration.schema import ConfigError
from flops_mlops.configuration.secrets import serve_password_key
from flops_mlops.configuration.stack import StackConfig
from flops_mlops.configuration.tracking import Tenant
from flops_mlops.tracking import server as mlflow_server
from pyinfra import inventory
from pyinfra.api import deploy
from pyinfra.operations import apt, files, pip

from . import artifact_store, backend_store, model_server, services, settings
from .account import service_account
from .settings import TEMPLATES, TRIM, HostSettings
from .venv import install_flops_mlops

# What the environment file takes from flops_mlops.tracking.server.server_env (the rest is this machine's).
ENV_KEYS = ("FLOPS_AUTH_DB", "DO_NOT_TRACK", "FLOPS_FTP_CONNECT_TIMEOUT", "FLOPS_FTP_DATA_TIMEOUT")


def workdir(s: HostSettings, tenant: Tenant) -> str:
    """The server's working folder and HOME, the service account's own (0700)."""
    return f"{s.data}/tracking/{tenant.id}"


def auth_dir(s: HostSettings, tenant: Tenant) -> str:
    """The folder of the server's SQLite auth database (and the basic_auth.ini the server writes), 0700."""
    return f"{workdir(s, tenant)}/auth"


def auth_db(s: HostSettings, tenant: Tenant) -> str:
    return f"{auth_dir(s, tenant)}/auth.db"


def environment(s: HostSettings, seen: StackConfig, tenant: Tenant, readers: list[str] | tuple = ()) -> dict[str, str]:
    """The server's environment file: store URIs (with passwords), login settings (admin password, secret key,
    auth database) and MLflow switches, and HOME; nothing else from the machine running pyinfra. ``readers``:
    the tenant's projects that model servers read (served_projects); the server creates their users."""
    if seen.artifact_store.tls:
        raise ConfigError(f"{seen.source}: artifact_store.tls: FTPS is for `flops-mlops up` (native vsftpd); the "
                          "pyinfra artifact store speaks plain FTP, so expected false, got true")
    env = {key: value for key, value in mlflow_server.server_env(seen, tenant, s.secrets, auth_db(s, tenant)).items()
           if key.startswith("MLFLOW_") or key in ENV_KEYS}
    env["HOME"] = workdir(s, tenant)
    if readers:  # the server creates serve-<project> (READ on that model only) for each, as in compose
        password = s.secrets.values[serve_password_key(tenant.id)]
        env["FLOPS_SERVE_USERS"] = ",".join(f"{project}:{password}" for project in readers)
        env["FLOPS_LOCAL_URI"] = local_uri(seen, tenant)
    for key, value in env.items():
        if "'" in value or "\n" in value:
            raise ConfigError(f"{s.secrets.path}: a value for tenant {tenant.id} ends up in {key} and contains "
                              "a quote or line break; use URL-safe passwords (`flops-mlops secrets init`)")
    return env


def local_uri(config: StackConfig, tenant: Tenant) -> str:
    """How the server's own host reaches it."""
    listen = "127.0.0.1" if config.tracking.host in ("0.0.0.0", "::") else config.tracking.host
    return f"http://{listen}:{config.tracking_port(tenant)}"


def served_projects(config: StackConfig, tenant: Tenant) -> list[str]:
    """The projects of ``tenant`` that a host of the inventory serves (host data flops_served_models)."""
    found: list[str] = []
    for other in inventory:
        for served_tenant, project in model_server.served_models(config, other):
            if served_tenant.id == tenant.id and project not in found:
                found.append(project)
    return found


def local_store_units(s: HostSettings, roles: list[str]) -> tuple[str, ...]:
    """The systemd units of the stores on the tracking server's own host: its unit starts after them (a server
    upgrades its schema before it starts, so the database must be up; after a reboot too)."""
    units = []
    if "backend_store" in roles:
        units.append(f"{backend_store.PACKAGED_SERVICE}.service")
    if "artifact_store" in roles:
        units.append(f"{artifact_store.service(s).name}.service")
    return tuple(units)


def service(s: HostSettings, tenant: Tenant, seen: StackConfig | None = None,
            after: tuple[str, ...] = ()) -> services.Service:
    config = seen or s.config
    python = f"{s.venv}/bin/python"
    health = f"{local_uri(config, tenant)}/health"
    probe = shlex.join([python, "-c", f"import urllib.request; urllib.request.urlopen({health!r}, timeout=2)"])
    return services.Service(
        name=f"{s.service_prefix}-tracking-{tenant.id}",
        description=f"MLflow tracking server of tenant {tenant.id} (FLOps MLOps stack {config.name})",
        argv=[python, *mlflow_server.server_argv(config, tenant)[1:]],
        ready=f"{probe} >/dev/null 2>&1",
        timeout=config.tracking.startup_timeout,
        env_file=f"{s.etc}/tracking/{tenant.id}.env",
        workdir=workdir(s, tenant),
        user=s.service_user,
        before_start=[[python, "-m", "flops_mlops.tracking.server", "upgrade-schema"]],
        after=after,
    )


@deploy("FLOps tracking servers (MLflow)")
def tracking_server() -> None:
    s = settings.current()
    seen = settings.as_seen_from_tracking(s.config)
    if s.manage_venv:
        if s.install_packages:
            apt.packages(name="Install Python venv support", packages=["python3-venv"],
                         update=True, cache_time=3600, no_recommends=True)
        pip.venv(name="Python venv for MLflow", path=s.venv, python="/usr/bin/python3")  # what python3-venv serves
        drivers = pip.packages(name="MLflow and store drivers (pinned)", packages=list(s.tracking_packages),
                               virtualenv=s.venv, extra_install_args=shlex.join(s.pip_args) or None)
        package = [drivers, *install_flops_mlops(s)]
    else:
        package = []
    group = service_account(s)
    # etc/tracking holds the environment files (root's, 0600); the other folders are shared with the store roles
    # on one host.
    for path in (s.etc, f"{s.etc}/tracking", s.data):
        files.directory(name=f"Folder {path}", path=path, user="root", group="root", mode="755")
    files.directory(name="Working folders (the service account's, 0700)", path=f"{s.data}/tracking",
                    user=s.service_user, group=group, mode="700")
    # A schema upgrade script of earlier releases: the servers now run the package's module instead.
    files.file(name="Remove the old schema upgrade script", path=f"{s.etc}/tracking/upgrade_schema.py",
               present=False)
    after = local_store_units(s, settings.roles())
    for tenant in seen.tenants:
        svc = service(s, tenant, seen, after)
        for path, what in ((svc.workdir, "Working folder"), (auth_dir(s, tenant), "Auth database folder")):
            files.directory(name=f"{what} of {tenant.id} (0700)", path=path, user=s.service_user, group=group,
                            mode="700")
        env = files.template(
            name=f"Environment of {tenant.id}'s server (mode 0600)", src=str(TEMPLATES / "tracking-server.env.j2"),
            dest=svc.env_file, user="root", group="root", mode="600", jinja_env_kwargs=dict(TRIM),
            stack=seen.name, tenant=tenant.id,
            env=environment(s, seen, tenant, served_projects(seen, tenant)),
        )
        services.ensure_running(svc, triggers=[env, *package])


@deploy("Stop FLOps tracking servers")
def stop_tracking_server() -> None:
    s = settings.current()
    for tenant in s.config.tenants:
        services.ensure_stopped(service(s, tenant))
