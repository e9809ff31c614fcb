"""The Docker Compose project of a configuration: compose.yaml and the backend store's init script, N tenants.

`flops-mlops render --target compose --out DIR` writes them; the compose.yaml at the repository's root is this
render of configs/compose.yaml (CI checks it for drift), and pyinfra's docker hosts get the render of their
configuration. Every tenant's facts come from the configuration:

- backend-store: one MariaDB (our image; the MySQL protocol); its init script (stores/tenant_db.py) creates every
  tenant's database and user; with backend_store.tls it speaks TLS with the certificate `secrets init` made (for
  the service name backend-store), the tenants' users REQUIRE SSL and the tracking servers verify it;
- artifact-store: one vsftpd with every tenant's FTP user (FLOPS_FTP_USERS); with artifact_store.tls it speaks
  only explicit FTPS, with the certificate `secrets init` made (signed by the deployment's CA, for the service
  name artifact-store and loopback), and the tracking servers verify it against that CA. Certificate, key and CA
  reach the containers as files (compose secrets, bind-mounted read-only), found beside the secrets file
  (FLOPS_SECRETS_FILE, default the one the configuration names);
- one tracking server per tenant: the first tenant's is ``tracking-server`` (its port variable
  FLOPS_TRACKING_PORT, the volume ``tracking-auth`` for an earlier release's login database), tenant t's after it is
  ``tracking-server-t`` (FLOPS_TENANT_T_TRACKING_PORT, volume ``tracking-auth-t``), so adding a tenant adds
  services and changes nothing of the others; with tracking.tls each serves HTTPS only with its tenant's
  certificate (for its service name, the public host and loopback), which tracking-volumes copies into its
  volume for its uid, and every client in the project (healthcheck, aggregator, model server) verifies it
  against the deployment's CA;
- profile ``fl``: the FL project of ``compose.fl`` against the first tenant, run only by ``docker compose run``:
  an aggregator and its learners, or in hierarchical mode a root aggregator over one cluster aggregator per
  cluster with its learners; profile ``serve``: the model server of that project's champion.

Ports, addresses and workers default to the configuration's values; .env may override them (.env.example). The
passwords are read only from the secrets file, by name (``${KEY:?}``): nothing rendered holds a secret.
"""

from __future__ import annotations

import os
import re
from pathlib import Path

import jinja2

from ..configuration import certificates
from ..configuration import secrets as secrets_module
from ..configuration.fl_project import FLProject
from ..configuration.schema import ConfigError
from ..configuration.stack import StackConfig
from ..configuration.tracking import Tenant
from ..rendered import RenderedFile
from ..stores import tenant_db

TEMPLATES = Path(__file__).resolve().parent  # compose.yaml.j2 sits beside this module
COMPOSE_FILE = "compose.yaml"
INITDB_DIR = "deploy/compose/backend-store/initdb.d"
INITDB_FILE = f"{INITDB_DIR}/10-flops-tenants.sh"
FIRST_SERVICE = certificates.COMPOSE_TRACKING_SERVICE
FIRST_PORT_VARIABLE, FIRST_AUTH_VOLUME = "FLOPS_TRACKING_PORT", "tracking-auth"
# Each tenant's tracking server runs as a uid of its own: FIRST_TENANT_UID + the tenant's position (the images'
# own accounts are 10001-10003).
FIRST_TENANT_UID = 20001
ONE_SHOT = "tracking-volumes"  # the service that gives each login volume to its tenant's uid, then exits
# A checkout has the Dockerfiles compose builds from; an installed package does not (images must exist then).
CHECKOUT = Path(__file__).resolve().parents[3]


def tenant_service(config: StackConfig, tenant: Tenant) -> dict[str, str | int]:
    """Names compose uses for ``tenant``: service, port variable and login volume, and its secrets' keys."""
    first = tenant is config.tenants[0]
    suffix = tenant.id.upper()
    return {
        "id": tenant.id, "database": tenant.database, "db_user": tenant.db_user, "ftp_user": tenant.ftp_user,
        "service": certificates.compose_tracking_service(config, tenant.id),
        "port_variable": FIRST_PORT_VARIABLE if first else f"FLOPS_TENANT_{suffix}_TRACKING_PORT",
        "auth_volume": FIRST_AUTH_VOLUME if first else f"{FIRST_AUTH_VOLUME}-{tenant.id}",
        "port": config.tracking_port(tenant),
        "uid": FIRST_TENANT_UID + config.tenants.index(tenant),
        "db_password_key": secrets_module.db_password_key(tenant.id),
        "ftp_password_key": secrets_module.ftp_password_key(tenant.id),
        "ftp_user_entry": f"{tenant.ftp_user}={secrets_module.ftp_password_key(tenant.id)}",
        "admin_password_key": secrets_module.admin_password_key(tenant.id),
        "secret_key_key": secrets_module.secret_key_key(tenant.id),
        "fl_password_key": secrets_module.fl_password_key(tenant.id),
        "serve_password_key": secrets_module.serve_password_key(tenant.id),
    }


def check(config: StackConfig) -> None:
    """Compose runs MySQL and vsftpd itself; a configuration for other stores cannot describe it."""
    if config.backend_store.kind != "mysql":
        raise ConfigError(f"{config.source}: backend_store.kind: compose runs MySQL, so expected mysql, got "
                          f"{config.backend_store.kind!r} (see configs/compose.yaml)")
    if config.artifact_store.kind != "vsftpd":
        raise ConfigError(f"{config.source}: artifact_store.kind: compose runs vsftpd, so expected vsftpd, got "
                          f"{config.artifact_store.kind!r} (see configs/compose.yaml)")
    if config.tracking.tls_certificate is not None:
        raise ConfigError(f"{config.source}: tracking.tls_certificate: compose serves the certificates `secrets "
                          f"init` makes from the deployment's CA, so expected none, got "
                          f"{str(config.tracking.tls_certificate)!r}")


def fl_services(project: FLProject) -> dict:
    """The fl profile's services of ``project``: its learners (``index``, the aggregator it ``joins``), the cluster
    aggregators of a hierarchical project (``name``, ``service``, its ``learners``) and the services the
    aggregator starts first."""
    if project.mode == "classic":
        learners = [{"index": i, "joins": "fl-aggregator:9092"} for i in range(project.learners)]
        return {"project": project, "learners": learners, "clusters": [],
                "first_joiners": [f"fl-learner-{i}" for i in range(project.learners)]}
    clusters, learners = [], []
    for k, name in enumerate(project.clusters):
        indexes = range(k * project.learners, (k + 1) * project.learners)
        clusters.append({"name": name, "service": f"fl-cluster-{k}", "learners": list(indexes)})
        learners += [{"index": i, "joins": f"fl-cluster-{k}:9093"} for i in indexes]
    return {"project": project, "learners": learners, "clusters": clusters,
            "first_joiners": [cluster["service"] for cluster in clusters]}


def _relative(path: Path, out: Path) -> str:
    return os.path.relpath(path.resolve(), out.resolve())


def _usage(config_label: str, env_label: str) -> list[str]:
    env = "" if env_label == ".env" else f" --env-file {env_label}"
    lines = [(f"flops-mlops --config {config_label} secrets init", f"writes the passwords to {env_label} (mode 0600)"),
             (f"docker compose{env} up -d", "stores and tracking servers (builds our images on first use)"),
             (f"docker compose{env} run --rm --use-aliases fl-aggregator", "runs one FL project; prints its summary"),
             (f"docker compose{env} --profile serve up -d --wait", "serves the project's champion model"),
             (f"docker compose{env} --profile '*' down", "stops all of it, every profile; the data stays")]
    width = max(len(command) for command, _ in lines) + 3
    return [f"{command:<{width}}# {comment}" for command, comment in lines]


def render(config: StackConfig, out: Path, checkout: Path = CHECKOUT) -> list[RenderedFile]:
    """compose.yaml and the init script, for a compose project in folder ``out`` (paths relative to it).

    ``checkout``: where the images' build contexts are (a checkout of this repository, or a copy of its
    deploy/images and package, as pyinfra makes on a docker host); without Dockerfiles there, compose.yaml
    has no build sections and the images must exist.
    """
    check(config)
    tenants = [tenant_service(config, t) for t in config.tenants]
    config_label = _relative(config.source, out)
    env_label = _relative(config.secrets_file, out)
    build_context = None
    if checkout != CHECKOUT or (CHECKOUT / "deploy/images/python/Dockerfile").is_file():
        build_context = _relative(checkout, out)
    store, tracking = config.artifact_store, config.tracking
    context = {
        "config_label": config_label, "env_label": env_label, "usage": _usage(config_label, env_label),
        "name": config.name, "tenants": tenants, "width": max(17, *(len(t["service"]) + 2 for t in tenants)),
        "fl": tenants[0], "images": config.images.model_dump(), "build_context": build_context,
        "initdb_dir": INITDB_DIR, "initdb_file_name": Path(INITDB_FILE).name, "one_shot": ONE_SHOT,
        **fl_services(config.compose.fl),
        "mysql_admin_key": secrets_module.MYSQL_ADMIN_KEY, "mysql_port": config.backend_store.port,
        "ftp": {"port": store.port, "pasv_min": store.passive_ports[0], "pasv_max": store.passive_ports[1],
                "pasv_address": store.pasv_address, "connect_timeout": store.connect_timeout,
                "data_timeout": store.data_timeout, "quota": store.quota, "tls": store.tls},
        "tracking": {"bind_address": tracking.host, "public_host": tracking.public_host,
                     "allowed_hosts": ",".join(tracking.allowed_hosts), "workers": tracking.workers,
                     "tls": tracking.tls, "scheme": config.tracking_scheme},
        "db_tls": certificates.mysql_tls(config),
    }
    environment = jinja2.Environment(loader=jinja2.FileSystemLoader(str(TEMPLATES)), undefined=jinja2.StrictUndefined,
                                     keep_trailing_newline=True, autoescape=False)
    text = environment.get_template("compose.yaml.j2").render(context)
    return [RenderedFile(COMPOSE_FILE, text), RenderedFile(INITDB_FILE, tenant_db.initdb_script(config, config_label))]


def secret_keys(rendered: list[RenderedFile]) -> list[str]:
    """The secrets file's keys the rendered compose.yaml reads (``${KEY:?...}``), in order of first use."""
    text = next(item.text for item in rendered if item.path == COMPOSE_FILE)
    lines = [line for line in text.splitlines() if not line.lstrip().startswith("#")]
    return list(dict.fromkeys(re.findall(r"\$\{([A-Z][A-Z0-9_]*):\?", "\n".join(lines))))
