"""The tracking server role: one MLflow server per tenant, as a service, proxying artifacts to the FTP store.

The servers point at the inventory's backend store and artifact store hosts. Store URIs (with passwords), the
admin password and the secret key reach a server only through its environment file (mode 0600, read by root),
never its command line. The command line is the one `flops-mlops up` uses (flops_mlops.tracking.server.
server_argv: MLflow's basic-auth app with our guards, so every server asks for a login), run by the venv's
Python, which must have flops-mlops installed (its `flops-basic-auth` app). Before each start the same Python
brings the schema up to date: `python -m flops_mlops.tracking.server upgrade-schema`, as `flops-mlops up` does.

Servers run as their tenant's own account, <flops_service_user>-<tenant> (account.py), never root. Each has a
working folder (its HOME) and, inside it, an auth folder, both that account's own, mode 0700. The users and grants
live in the backend store (mlflow_<tenant>_auth, flops_mlops/tracking/auth_store.py); the auth folder only keeps
an earlier release's SQLite auth database until the next start moves it in (auth.db.moved-to-mysql). With
backend_store.tls the servers verify the MySQL server against the deployment's CA certificate, put on the host as
<etc>/mysql-ca.crt (public, mode 0644); with artifact_store.tls the FTPS store (chain and the host name they dial)
against the same CA, put on the host as <etc>/ftp-ca.crt (0644) and named in FLOPS_FTP_CA_FILE. With
tracking.tls (on in configs/native.yaml) each server speaks HTTPS only, with its certificate and key put on the
host by tracking_tls.py; the readiness probe and the server's own client verify it against the deployment's CA.
"""

from __future__ import annotations

import shlex
from pathlib import Path

from flops_mlops.configuration import certificates
from flops_mlops.configuration.schema import ConfigError
from flops_mlops.configuration.secrets import serve_password_key
from flops_mlops.configuration.stack import StackConfig
from flops_mlops.configuration.tracking import Tenant
from flops_mlops.tracking import server as mlflow_server
from pyinfra import inventory
from pyinfra.api import deploy
from pyinfra.operations import apt, files, pip

from . import artifact_store, backend_store, model_server, services, settings, tracking_tls
from .account import tenant_account, tenant_user
from .settings import TEMPLATES, TRIM, HostSettings
from .venv import install_flops_mlops

# What the environment file takes from flops_mlops.tracking.server.server_env (the rest is this machine's).
ENV_KEYS = ("FLOPS_AUTH_DB", "FLOPS_TENANT", "DO_NOT_TRACK", "FLOPS_FTP_CONNECT_TIMEOUT", "FLOPS_FTP_DATA_TIMEOUT",
            "FLOPS_ARTIFACT_QUOTA")  # FLOPS_FTP_CA_PEM is many lines: the servers read FLOPS_FTP_CA_FILE instead


def workdir(s: HostSettings, tenant: Tenant) -> str:
    """The server's working folder and HOME, the service account's own (0700)."""
    return f"{s.data}/tracking/{tenant.id}"


def auth_dir(s: HostSettings, tenant: Tenant) -> str:
    """The folder of an earlier release's SQLite auth database (moved into MySQL by the next start), 0700."""
    return f"{workdir(s, tenant)}/auth"


def mysql_ca(s: HostSettings) -> str:
    """The deployment's CA certificate on the host (backend_store.tls)."""
    return f"{s.etc}/mysql-ca.crt"


def ftp_ca(s: HostSettings) -> str:
    """The deployment's CA certificate on the host (artifact_store.tls)."""
    return f"{s.etc}/ftp-ca.crt"


def auth_db(s: HostSettings, tenant: Tenant) -> str:
    return f"{auth_dir(s, tenant)}/auth.db"


def environment(s: HostSettings, seen: StackConfig, tenant: Tenant, readers: list[str] | tuple = ()) -> dict[str, str]:
    """The server's environment file: store URIs (with passwords), login settings (admin password, secret key,
    auth database) and MLflow switches, and HOME; nothing else from the machine running pyinfra. ``readers``:
    the tenant's projects that model servers read (served_projects); the server creates their users."""
    ca = Path(mysql_ca(s)) if certificates.mysql_tls(seen) else None
    env = {key: value for key, value in mlflow_server.server_env(seen, tenant, s.secrets, auth_db(s, tenant),
                                                                 ca).items()
           if key.startswith("MLFLOW_") or key in ENV_KEYS}
    env["HOME"] = workdir(s, tenant)
    if seen.artifact_store.tls:
        env["FLOPS_FTP_CA_FILE"] = ftp_ca(s)
    if readers:  # the server creates serve-<project> (READ on that model only) for each, as in compose
        password = s.secrets.values[serve_password_key(tenant.id)]
        env["FLOPS_SERVE_USERS"] = ",".join(f"{project}:{password}" for project in readers)
        env["FLOPS_LOCAL_URI"] = local_uri(seen, tenant)
        env.update(tracking_tls.client_env(s, seen))  # what that client verifies an HTTPS server against
    for key, value in env.items():
        if "'" in value or "\n" in value:
            raise ConfigError(f"{s.secrets.path}: a value for tenant {tenant.id} ends up in {key} and contains "
                              "a quote or line break; use URL-safe passwords (`flops-mlops secrets init`)")
    return env


def local_uri(config: StackConfig, tenant: Tenant) -> str:
    """How the server's own host reaches it (https with tracking.tls: its certificate holds 127.0.0.1)."""
    listen = "127.0.0.1" if config.tracking.host in ("0.0.0.0", "::") else config.tracking.host
    return f"{config.tracking_scheme}://{listen}:{config.tracking_port(tenant)}"


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
    tls = tracking_tls.server_files(s, tenant) if config.tracking.tls else None
    return services.Service(
        name=f"{s.service_prefix}-tracking-{tenant.id}",
        description=f"MLflow tracking server of tenant {tenant.id} (FLOps MLOps stack {config.name})",
        argv=[python, *mlflow_server.server_argv(config, tenant, tls)[1:]],
        ready=tracking_tls.probe(python, f"{local_uri(config, tenant)}/health", tracking_tls.ca_file(s, config)),
        timeout=config.tracking.startup_timeout,
        env_file=f"{s.etc}/tracking/{tenant.id}.env",
        workdir=workdir(s, tenant),
        user=tenant_user(s, tenant),
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
    # etc/tracking holds the environment files (root's, 0600); the other folders are shared with the store roles
    # on one host. The tenants' accounts pass through data/tracking to their own folders (0711: enter, not list).
    for path in (s.etc, f"{s.etc}/tracking", s.data):
        files.directory(name=f"Folder {path}", path=path, user="root", group="root", mode="755")
    files.directory(name="Working folders (root's; each tenant's inside is its own)", path=f"{s.data}/tracking",
                    user="root", group="root", mode="711")
    # A schema upgrade script of earlier releases: the servers now run the package's module instead.
    files.file(name="Remove the old schema upgrade script", path=f"{s.etc}/tracking/upgrade_schema.py",
               present=False)
    if certificates.mysql_tls(seen):
        package = [*package, files.put(name="The deployment's CA certificate (MySQL TLS)",
                                       src=str(certificates.mysql_ca(seen)), dest=mysql_ca(s),
                                       user="root", group="root", mode="644")]
    if seen.artifact_store.tls:  # the CA (made here when the store's host has not run yet)
        certificates.make_certificate(s.config, extra_hosts=[seen.artifact_store.host])
        package = [*package, files.put(name="The deployment's CA certificate (FTPS)",
                                       src=str(certificates.ftp_files(seen)[0]), dest=ftp_ca(s),
                                       user="root", group="root", mode="644")]
    if seen.tracking.tls:  # HTTPS: the CA for our clients here, each server's certificate and key below
        tracking_tls.make_certificates(s)
        package = [*package, *tracking_tls.put_ca(s)]
    after = local_store_units(s, settings.roles())
    for tenant in seen.tenants:
        svc = service(s, tenant, seen, after)
        group = tenant_account(s, tenant)
        https = tracking_tls.put_server_files(s, tenant, svc.user, group) if seen.tracking.tls else []
        for path, what in ((svc.workdir, "Working folder"), (auth_dir(s, tenant), "Auth database folder")):
            files.directory(name=f"{what} of {tenant.id} (0700, {svc.user}'s)", path=path, user=svc.user,
                            group=group, mode="700", recursive=True)
        env = files.template(
            name=f"Environment of {tenant.id}'s server (mode 0600)", src=str(TEMPLATES / "tracking-server.env.j2"),
            dest=svc.env_file, user="root", group="root", mode="600", jinja_env_kwargs=dict(TRIM),
            stack=seen.name, tenant=tenant.id,
            env=environment(s, seen, tenant, served_projects(seen, tenant)),
        )
        services.ensure_running(svc, triggers=[env, *https, *package])


@deploy("Stop FLOps tracking servers")
def stop_tracking_server() -> None:
    s = settings.current()
    for tenant in s.config.tenants:
        services.ensure_stopped(service(s, tenant))
