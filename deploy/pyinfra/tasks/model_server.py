"""The model server role: a tenant's FL project champion served by MLflow's scoring server, as a service.

Host data ``flops_served_models`` lists what a host serves, as "<tenant>/<project>" items; item i listens on
``flops_serve_host``:``flops_serve_base_port`` + i. Each runs ``python -m flops_mlops.serving.server`` from the
stack's venv (flops-mlops with scikit-learn and skops, pinned by the lock: no conda or virtualenv at run time),
as its tenant's account (<flops_service_user>-<tenant>), and reads its model from the tenant's tracking server (the inventory's tracking_server host)
as serve-<project>, a user with READ on that registered model only. Its password (the secrets file's
FLOPS_TENANT_<ID>_SERVE_PASSWORD) reaches it only through its environment file (mode 0600, read by root); the
tracking server creates that user: the tracking_server role gives each server FLOPS_SERVE_USERS for the projects
of its tenant that any host of the inventory serves (tracking_server.environment).
The server follows the champion alias, so a new champion is served without a redeploy. With tracking.tls it
reaches the tracking server over HTTPS, verified against the deployment's CA, put on its host as
<etc>/tracking-ca.crt (0644, tracking_tls.py) and named in MLFLOW_TRACKING_SERVER_CERT_PATH.
"""

from __future__ import annotations

import shlex

from flops_mlops.configuration.schema import ConfigError
from flops_mlops.configuration.secrets import serve_password_key
from flops_mlops.configuration.stack import StackConfig
from flops_mlops.configuration.tracking import Tenant
from flops_mlops.tracking.users import serving_user, validate_project
from pyinfra import host
from pyinfra.api import deploy
from pyinfra.operations import files, pip

from . import services, settings, tracking_tls
from .account import tenant_account, tenant_user
from .settings import TEMPLATES, TRIM, HostDataError, HostSettings
from .venv import install_flops_mlops


def served_models(config: StackConfig, of=None) -> list[tuple[Tenant, str]]:
    """Host data flops_served_models of ``of`` (default: the current host), checked: (tenant, project) pairs."""
    of = of or host
    items = of.data.get("flops_served_models") or []
    if isinstance(items, str):
        items = [items]
    served = []
    for item in items:
        tenant_id, _, project = str(item).partition("/")
        try:
            served.append((config.tenant(tenant_id), validate_project(project, "flops_served_models")))
        except ConfigError:
            raise HostDataError(f"host {of.name}: flops_served_models: {item!r} is not <tenant>/<project> with a "
                                f"tenant of {config.source} and a project name") from None
    return served


def folder(s: HostSettings, tenant: Tenant, project: str) -> str:
    """The server's working folder, HOME and model cache, the service account's own (0700)."""
    return f"{s.data}/serving/{tenant.id}-{project}"


def environment(s: HostSettings, tenant: Tenant, project: str, tracking_address: str, listen: str,
                port: int) -> dict[str, str]:
    return {
        "MLFLOW_TRACKING_URI": f"{s.config.tracking_scheme}://{tracking_address}:{s.config.tracking_port(tenant)}",
        **tracking_tls.client_env(s, s.config),
        "MLFLOW_TRACKING_USERNAME": serving_user(project),
        "MLFLOW_TRACKING_PASSWORD": s.secrets.values[serve_password_key(tenant.id)],
        "MLFLOW_DISABLE_TELEMETRY": "true",
        "FLOPS_SERVE_MODEL_NAME": project, "FLOPS_SERVE_ALIAS": "champion",
        "FLOPS_SERVE_HOST": listen, "FLOPS_SERVE_PORT": str(port),
        "FLOPS_SERVE_CACHE": f"{folder(s, tenant, project)}/models", "HOME": folder(s, tenant, project),
    }


def service(s: HostSettings, tenant: Tenant, project: str, listen: str, port: int) -> services.Service:
    python = f"{s.venv}/bin/python"
    ping = f"http://{'127.0.0.1' if listen in ('0.0.0.0', '::') else listen}:{port}/ping"
    probe = shlex.join([python, "-c", f"import urllib.request; urllib.request.urlopen({ping!r}, timeout=2)"])
    return services.Service(
        name=f"{s.service_prefix}-model-{tenant.id}-{project}",
        description=f"model server of {project}@champion, tenant {tenant.id} (FLOps MLOps stack {s.config.name})",
        argv=[python, "-m", "flops_mlops.serving.server"],
        ready=f"{probe} >/dev/null 2>&1", timeout=180,
        env_file=f"{s.etc}/serving/{tenant.id}-{project}.env",
        workdir=folder(s, tenant, project), user=tenant_user(s, tenant))


@deploy("FLOps model servers (MLflow scoring server)")
def model_server() -> None:
    s = settings.current()
    listen = host.data.get("flops_serve_host") or "127.0.0.1"
    base_port = int(host.data.get("flops_serve_base_port") or 8080)
    tracking = settings.peer_address("tracking_server", s.config.tracking.public_host)
    if s.manage_venv:
        alone = "tracking_server" not in settings.roles()  # else that role made the venv and installed flops-mlops
        if alone:
            pip.venv(name="Python venv for the model servers", path=s.venv, python="/usr/bin/python3")
            pip.packages(name="MLflow (pinned)", packages=list(s.tracking_packages), virtualenv=s.venv)
        pip.packages(name="scikit-learn and skops for the models (pinned)",
                     packages=list(host.data.get("flops_model_packages") or ()), virtualenv=s.venv)
        if alone:
            install_flops_mlops(s)
    for path in (f"{s.etc}/serving",):
        files.directory(name=f"Folder {path}", path=path, user="root", group="root", mode="755")
    files.directory(name="Model server folders (root's; each inside is its tenant's)", path=f"{s.data}/serving",
                    user="root", group="root", mode="711")
    ca = tracking_tls.put_ca(s)  # with tracking.tls: what the servers verify the tracking server against
    for index, (tenant, project) in enumerate(served_models(s.config)):
        svc = service(s, tenant, project, listen, base_port + index)
        files.directory(name=f"Folder of {tenant.id}/{project}'s model server (0700, {svc.user}'s)",
                        path=svc.workdir, user=svc.user, group=tenant_account(s, tenant), mode="700",
                        recursive=True)
        env = files.template(
            name=f"Environment of {tenant.id}/{project}'s model server (mode 0600)",
            src=str(TEMPLATES / "model-server.env.j2"), dest=svc.env_file, user="root", group="root", mode="600",
            jinja_env_kwargs=dict(TRIM), stack=s.config.name, tenant=tenant.id, project=project,
            env=environment(s, tenant, project, tracking, listen, base_port + index))
        services.ensure_running(svc, triggers=[env, *ca])
