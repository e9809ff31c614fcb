"""The tracking server role: one MLflow server per tenant, as a service, proxying artifacts to the FTP store.

The servers point at the inventory's backend store and artifact store hosts. Store URIs (with passwords) reach
a server only through its environment file (mode 0600), never its command line. The command line is the one
`flops-mlops up` uses (flops_mlops.tracking_server.server_argv), run by the venv's Python.
"""

from __future__ import annotations

import shlex

from pyinfra.api import deploy
from pyinfra.operations import apt, files, pip, server

from flops_mlops import tracking_server as mlflow_server
from flops_mlops.config import ConfigError, StackConfig, Tenant

from . import services, settings
from .settings import FILES, TEMPLATES, TRIM, HostSettings


def environment(s: HostSettings, seen: StackConfig, tenant: Tenant) -> dict[str, str]:
    """The server's environment file: store URIs (with passwords) and MLflow switches, nothing from here."""
    env = {key: value for key, value in mlflow_server.server_env(seen, tenant, s.secrets).items()
           if key.startswith("MLFLOW_") or key == "DO_NOT_TRACK"}
    for key, value in env.items():
        if "'" in value or "\n" in value:
            raise ConfigError(f"{s.secrets.path}: a value for tenant {tenant.id} ends up in {key} and contains "
                              "a quote or line break; use URL-safe passwords (`flops-mlops secrets init`)")
    return env


def service(s: HostSettings, tenant: Tenant, seen: StackConfig | None = None) -> services.Service:
    config = seen or s.config
    python = f"{s.venv}/bin/python"
    listen = "127.0.0.1" if config.tracking.host in ("0.0.0.0", "::") else config.tracking.host
    health = f"http://{listen}:{config.tracking_port(tenant)}/health"
    probe = shlex.join([python, "-c", f"import urllib.request; urllib.request.urlopen({health!r}, timeout=2)"])
    return services.Service(
        name=f"{s.service_prefix}-tracking-{tenant.id}",
        description=f"MLflow tracking server of tenant {tenant.id} (FLOps MLOps stack {config.name})",
        argv=[python, *mlflow_server.server_argv(config, tenant)[1:]],
        ready=f"{probe} >/dev/null 2>&1",
        timeout=config.tracking.startup_timeout,
        env_file=f"{s.etc}/tracking/{tenant.id}.env",
        workdir=f"{s.data}/tracking/{tenant.id}",
        user=s.service_user,
        before_start=[[python, f"{s.etc}/tracking/upgrade_schema.py"]],
    )


@deploy("FLOps tracking servers (MLflow)")
def tracking_server() -> None:
    s = settings.current()
    seen = settings.as_seen_from_tracking(s.config)
    if s.manage_venv:
        if s.install_packages:
            apt.packages(name="Install Python venv support", packages=["python3-venv"],
                         update=True, cache_time=3600, no_recommends=True)
        pip.venv(name="Python venv for MLflow", path=s.venv, python="python3")
        pip.packages(name="MLflow and store drivers (pinned)", packages=list(s.tracking_packages),
                     virtualenv=s.venv)
    if s.service_user != "root":
        server.user(name="Account of the tracking servers", user=s.service_user, system=True,
                    home=f"{s.data}/tracking", shell="/usr/sbin/nologin")
    for path in (s.etc, f"{s.etc}/tracking", s.data, s.run, s.logs):
        files.directory(name=f"Folder {path}", path=path, user="root", group="root", mode="755")
    files.directory(name="Working folders", path=f"{s.data}/tracking", user=s.service_user,
                    group=s.service_user, mode="755")
    upgrade = files.put(name="Schema upgrade script", src=str(FILES / "upgrade_schema.py"),
                        dest=f"{s.etc}/tracking/upgrade_schema.py", user="root", group="root", mode="644")
    for tenant in seen.tenants:
        svc = service(s, tenant, seen)
        files.directory(name=f"Working folder of {tenant.id}", path=svc.workdir, user=s.service_user,
                        group=s.service_user, mode="750")
        env = files.template(
            name=f"Environment of {tenant.id}'s server (mode 0600)", src=str(TEMPLATES / "tracking-server.env.j2"),
            dest=svc.env_file, user="root", group="root", mode="600", jinja_env_kwargs=dict(TRIM),
            stack=seen.name, tenant=tenant.id, env=environment(s, seen, tenant),
        )
        services.ensure_running(s, svc, triggers=[env, upgrade])


@deploy("Stop FLOps tracking servers")
def stop_tracking_server() -> None:
    s = settings.current()
    for tenant in s.config.tenants:
        services.ensure_stopped(s, service(s, tenant))
