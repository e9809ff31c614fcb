"""Render Oakestra SLA v2.0 documents from sla_templates/ and check them before anything is written.

One JSON file per application, in deploy order: ``stores.json`` (MySQL, and one vsftpd per tenant; when
oakestra.run_stores),
``tracking.json`` (one MLflow tracking server per tenant), ``<project>.json`` per FL project (an
aggregator and N learners; hierarchical: a root aggregator and, per cluster, a cluster aggregator and N learners
pinned to it) and ``serving.json`` (one model server per project with serve: true). The
output is a pure function of the configuration and the templates, so it
is byte-for-byte the same on every run and can be reviewed as a diff.

Service IPs (addresses.rr_ip) come from stable slots in the configuration, never from list positions:
adding a tenant or project never moves the address of an existing one.

Secrets never reach a rendered file. Templates write ``${FLOPS_...}`` placeholders (``secret(key)``), which
are allowed only in ``environment`` values (also inside a longer value, such as FLOPS_FL_USERS) and are
replaced from the secrets file at push time (``resolve_secrets``). Certificates and keys (tracking.tls: HTTPS on
the tracking servers; artifact_store.tls: FTPS) travel the same way: ``${file:<name>}`` (``pem_file(name)``) stands
for the file ``<secrets_file>.<name>`` that `secrets init` made, filled in at push time with its base64url text
(configuration/pem_env.py), which the containers' entrypoints turn back into private files. Only the files this
configuration needs (``pem_files``) may be named, only in ``environment``.

Logins: every tracking server runs MLflow's basic auth with its users and grants in the backend store, in the
tenant's database <database>_auth (tracking/auth_store.py). A tracking server keeps no state of its own: no
volume, no node constraint beyond oakestra.target; a rescheduled or second instance finds every user. The aggregator of a project logs in as ``fl-<project>``; learners get no credentials.

Stores' data: with oakestra.stores.<store>.volume, MySQL's data directory and each tenant's FTP folder are
host-path volumes of the store's target_node (``_store_placement``), so they outlive the container there.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass, replace
from functools import cache
from pathlib import Path
from typing import Any

import jinja2
import jsonschema

from .. import bundled
from ..configuration import certificates, pem_env
from ..configuration import secrets as secrets_module
from ..configuration.oakestra import HOSTPATH_DRIVER, OakestraStore, OakestraTarget, service_ip
from ..configuration.schema import Broken, ConfigError
from ..configuration.stack import StackConfig, image, oakestra_rules
from ..fl.ml_repo import RepoError, is_git_url, tag_of
from ..fl.project_image import image_name
from ..fl.settings import FLSettings, environment
from ..rendered import RenderedFile
from ..stores import tenant_db
from ..tracking.users import project_user, serving_user

TEMPLATES_DIR = bundled.folder("sla_templates")
SCHEMA_FILE = Path(__file__).with_name("sla-v2.0.schema.json")
PLACEHOLDER = re.compile(r"\$\{([A-Z][A-Z0-9_]*)\}")
FILE_PLACEHOLDER = re.compile(r"\$\{file:([a-z0-9][a-z0-9.-]*)\}")
MYSQL_PORT = 3306
# The backend-store image (as the official MySQL image) runs this once, on an empty data directory (written by the
# stores' mysql cmd).
MYSQL_INIT_FILE = "/docker-entrypoint-initdb.d/10-flops-tenants.sql"
FTP_PORT = 21
# The stores' data folders inside their images (the volumes' default mount paths).
STORE_DATA = {"mysql": "/var/lib/mysql", "artifact_store": "/srv/ftp"}
PROJECT_DATA_MOUNT = "/srv/fl/data"  # where a learner sees its own data folder (FLOPS_DATA_DIR)


class SlaError(ConfigError):
    """A rendered document breaks the schema or the address plan; names the template, field and value."""


@dataclass(frozen=True)
class Rendered:
    """One application's SLA document, checked."""

    template: str
    file_name: str
    application_name: str
    namespace: str
    document: dict
    text: str

    @property
    def file(self) -> RenderedFile:
        return RenderedFile(self.file_name, self.text)


# --- the plan: names, addresses and images derived from the configuration ---------------------------


def _constraints(target: OakestraTarget) -> list[dict]:
    constraint = {"type": "direct"}
    if target.cluster:
        constraint["cluster"] = target.cluster
    if target.node:
        constraint["node"] = target.node
    return [constraint] if len(constraint) > 1 else []


def _cluster_constraints(cluster: str) -> list[dict]:
    """A hierarchical project's services of one cluster, pinned to it: ``clusters``/``allowed`` as the SLA
    documentation of oakestra/oakestra describes it (root_orchestrator/system-manager-python/sla/; the v0.4.410
    schema accepts it, but only the cloud scheduler of v0.4.400-v0.4.402 reads it) and ``direct``/``cluster``, the
    one constraint the v0.4.410 scheduler honours (and the v0.4.402 one before any other)."""
    return [{"type": "direct", "cluster": cluster}, {"type": "clusters", "allowed": [cluster]}]


def _store_placement(config: StackConfig, key: str, tenant: str | None = None) -> dict[str, Any]:
    """A store service's SLA fields for placement and data: constraints, target_node and volumes."""
    o = config.oakestra
    store: OakestraStore = getattr(o.stores, key)
    placement = o.stores_target or o.target
    if store.target_node:
        placement = OakestraTarget(cluster=placement.cluster, node=store.target_node)
    fields: dict[str, Any] = {"constraints": _constraints(placement)}
    if store.target_node:
        fields["target_node"] = store.target_node
    if store.volume is not None:
        name = "mysql" if tenant is None else f"ftp{tenant}"
        host_path = store.volume.host_path if tenant is None else f"{store.volume.host_path}/{tenant}"
        fields["volumes"] = [{"volume_id": f"{o.namespace}-{name}-data", "csi_driver": store.volume.csi_driver,
                              "mount_path": store.volume.mount_path or STORE_DATA[key],
                              "config": {"host_path": host_path}}]
    return fields


def project_image(config: StackConfig, project, index: int) -> tuple[str, str]:
    """The image a project's services run, and the repository tag it carries: <registry>/flops-mlops/fl-<project>:
    <tag> for a project with ml_repo (built by `flops-mlops build-fl-image`), else images.fl_actor ("")."""
    if project.ml_repo is None:
        return image(config, "fl_actor"), ""
    source = project.ml_repo
    if not is_git_url(source) and not Path(source).is_absolute():
        source = str((Path(config.source).parent / source).resolve())
    try:
        tag = tag_of(source, project.revision, config.state_dir / "fl" / "repos")
    except RepoError as exc:
        raise ConfigError(f"{config.source}: oakestra.projects[{index}].ml_repo: {exc}") from None
    return f"{config.oakestra.registry}/{image_name(project.name, tag)}", tag


_address = service_ip


def check(config: StackConfig) -> None:
    """The oakestra section's rules (configuration/stack.py: oakestra_rules; `load` runs them when the file has that section)."""
    try:
        oakestra_rules(config)
    except Broken as exc:
        raise ConfigError(f"{config.source}: {exc}") from None
    if config.tracking.tls and config.tracking.tls_certificate is not None:
        raise ConfigError(f"{config.source}: tracking.tls_certificate: on Oakestra the tracking servers present the "
                          "certificates `secrets init` makes from the deployment's CA, so expected none, got "
                          f"{str(config.tracking.tls_certificate)!r}")


def pem_files(config: StackConfig) -> dict[str, str]:
    """The files beside the secrets file that the rendered SLAs may name (``${file:<name>}``): {name: what it is}.
    tracking.tls: the CA and each tenant server's certificate and key; artifact_store.tls: the CA (the tracking
    servers verify the store against it) and, with run_stores, the stores' certificate and key."""
    files = {}
    if config.tracking.tls or config.artifact_store.tls:
        files["ca.crt"] = "the deployment's CA certificate"
    if config.tracking.tls:
        for tenant in config.tenants:
            leaf = certificates.tracking_leaf(tenant.id)
            files[f"{leaf}.crt"] = f"tenant {tenant.id}'s tracking server certificate"
            files[f"{leaf}.key"] = f"tenant {tenant.id}'s tracking server key"
    if config.artifact_store.tls and config.oakestra.run_stores:
        files[f"{certificates.FTP_LEAF}.crt"] = "the FTP artifact stores' certificate"
        files[f"{certificates.FTP_LEAF}.key"] = "the FTP artifact stores' key"
    return files


def pem_file(name: str) -> str:
    """The placeholder for the file ``<secrets_file>.<name>`` (a certificate or key), filled in only at push time."""
    if not FILE_PLACEHOLDER.fullmatch("${file:" + name + "}"):
        raise ValueError(f"pem_file(): {name!r} is not a file name of lowercase letters, digits, '.' and '-'")
    return "${file:" + name + "}"


def context(config: StackConfig) -> dict[str, Any]:
    """Everything the templates may use: names, service IPs, images, resources and secret keys."""
    check(config)
    o = config.oakestra
    scheme = config.tracking_scheme
    slot_of = {entry.id: entry.slot for entry in o.tenants}
    if o.run_stores:
        stores = {"mysql_host": _address(o.ip_plan.stores_block, 1), "mysql_port": MYSQL_PORT, "ftp_port": FTP_PORT}
    else:
        stores = {"mysql_host": config.backend_store.host, "mysql_port": config.backend_store.port,
                  "ftp_port": config.artifact_store.port}
    tenants = []
    for tenant in config.tenants:
        slot = slot_of[tenant.id]
        host_port = None if o.tracking_host_port_base is None else o.tracking_host_port_base + slot
        tenants.append({
            "id": tenant.id, "slot": slot, "rr_ip": _address(o.ip_plan.tracking_block, slot),
            "port": "" if host_port is None else f"{host_port}:{o.tracking_port}/tcp",  # the SLA's port field
            "public_port": o.tracking_port if host_port is None else host_port,
            "ftp_host": _address(o.ip_plan.ftp_block, slot) if o.run_stores else config.artifact_store.host,
            "database": tenant.database, "db_user": tenant.db_user, "ftp_user": tenant.ftp_user,
            "db_password_key": secrets_module.db_password_key(tenant.id),
            "ftp_password_key": secrets_module.ftp_password_key(tenant.id),
            "admin_password_key": secrets_module.admin_password_key(tenant.id),
            "secret_key_key": secrets_module.secret_key_key(tenant.id),
            "tls_leaf": certificates.tracking_leaf(tenant.id),  # ${file:<leaf>.crt} / .key with tracking.tls
            "ftp_placement": _store_placement(config, "artifact_store", tenant.id),
            "projects": [],  # filled below: the FL projects whose aggregators log in to this server
            "served": [],  # filled below: the projects whose model servers read their models from this server
        })
    by_id = {t["id"]: t for t in tenants}
    projects = []
    for index, project in enumerate(o.projects):
        block = o.ip_plan.projects_block + project.slot - 1
        tracking = by_id[project.tenant]
        aggregator_ip = _address(block, 1)
        code, tag = project_image(config, project, index)
        hierarchical = project.mode == "hierarchical"
        settings = FLSettings(project=project.name, tracking_uri=f"{scheme}://{tracking['rr_ip']}:{o.tracking_port}",
                              rounds=project.rounds, learners=project.learners, min_learners=project.min_learners,
                              flavor=project.flavor or "", ml_repo_tag=tag,
                              aggregator_address=f"0.0.0.0:{o.aggregator_port}", mode=project.mode,
                              clusters=len(project.clusters), cycles=project.cycles,
                              min_clusters=project.min_clusters)
        # Hierarchical: cluster aggregator k at .<2+k>, then the learners of all clusters (cluster k has learners
        # k*N..k*N+N-1, numbered across clusters: the data split of a classic project with K*N learners).
        cluster_ips = [_address(block, 2 + k) for k in range(len(project.clusters))]
        learners = len(project.clusters) * project.learners if hierarchical else project.learners
        first_learner = 2 + len(cluster_ips)
        learner = replace(settings, mode="classic", learners=learners,
                          aggregator_address=f"{aggregator_ip}:{o.aggregator_port}",
                          data_dir=PROJECT_DATA_MOUNT if project.data_host_path else "")

        def joins(i: int) -> str:
            """The aggregator learner i joins: its cluster's, or the project's."""
            return (f"{cluster_ips[i // project.learners]}:{o.aggregator_port}" if hierarchical else
                    learner.aggregator_address)

        def placed(i: int) -> list[dict]:
            return _cluster_constraints(project.clusters[i // project.learners]) if hierarchical else \
                _constraints(o.target)

        entry = {
            "name": project.name, "tenant": project.tenant, "rounds": project.rounds, "learners": learners,
            "tracking_uri": settings.tracking_uri,
            "user": project_user(project.name),
            "password_key": secrets_module.project_password_key(project.name),
            "aggregator_ip": aggregator_ip,
            "learner_ips": [_address(block, first_learner + i) for i in range(learners)],
            # The FL processes' settings, by the one mapping flops_mlops.fl reads back (settings.environment).
            "aggregator_environment": environment(settings, "aggregator"),
            "learner_environments": [environment(replace(learner, learner_index=i, aggregator_address=joins(i)),
                                                 "learner") for i in range(learners)],
            "learner_constraints": [placed(i) for i in range(learners)],
            "cluster_aggregators": [{
                "ip": ip, "constraints": _cluster_constraints(name),
                "environment": environment(replace(settings, mode="classic", cluster_index=k,
                                                   aggregator_address=f"{aggregator_ip}:{o.aggregator_port}",
                                                   cluster_address=f"0.0.0.0:{o.aggregator_port}"), "cluster")}
                for k, (name, ip) in enumerate(zip(project.clusters, cluster_ips))],
            "image": code,
            # Learner i's own data: <data_host_path>/learner-<i> of its node (host-path CSI driver).
            "learner_volumes": [[{"volume_id": f"{o.namespace}-{project.name}-data{i}".lower(),
                                  "csi_driver": HOSTPATH_DRIVER, "mount_path": PROJECT_DATA_MOUNT,
                                  "config": {"host_path": f"{project.data_host_path}/learner-{i}"}}]
                                if project.data_host_path else [] for i in range(learners)],
        }
        projects.append(entry)
        tracking["projects"].append(entry)
    serving = [{  # the serving application: one model server per project with serve: true
        "name": p.name, "tenant": p.tenant, "rr_ip": _address(o.ip_plan.serving_block, p.slot),
        "tracking_uri": f"{scheme}://{by_id[p.tenant]['rr_ip']}:{o.tracking_port}", "user": serving_user(p.name),
        "password_key": secrets_module.serve_password_key(p.tenant)} for p in o.projects if p.serve]
    for served in serving:
        by_id[served["tenant"]]["served"].append(served)
    return {
        "customer_id": config.name,
        "app_namespace": o.namespace,
        "images": {key: image(config, key) for key in ("tracking_server", "artifact_store", "fl_actor", "mysql",
                                                         "model_server")},
        "resources": {key: getattr(o, key).model_dump() for key in
                      ("tracking_server", "mysql", "artifact_store", "aggregator", "learner", "model_server")},
        "constraints": _constraints(o.target),
        "mysql_placement": _store_placement(config, "mysql"),
        "stores": stores,
        "mysql_admin_password_key": secrets_module.MYSQL_ADMIN_KEY,
        "mysql_init": mysql_init(config),
        "ftp_passive_ports": o.ftp_passive_ports,
        "tracking_port": o.tracking_port,
        "tracking_workers": config.tracking.workers,
        "ftp_connect_timeout": config.artifact_store.connect_timeout,
        "ftp_data_timeout": config.artifact_store.data_timeout,
        "artifact_quota": config.artifact_store.quota,
        "tracking_public_host": config.tracking.public_host,
        "tracking_allowed_hosts": config.tracking.allowed_hosts,
        "tracking_tls": config.tracking.tls,
        "ftp_tls": config.artifact_store.tls,
        "ftp_leaf": certificates.FTP_LEAF,
        "aggregator_port": o.aggregator_port,
        "tenants": tenants,
        "projects": projects,
        "serving": serving,
    }


def mysql_init(config: StackConfig) -> str:
    """The stores' mysql cmd (sh -c): write every tenant's statements (the one SQL template, flops_mlops.stores.
    tenant_db) to the image's initdb folder, passwords from the container's environment, then start the image."""
    checks, printf = tenant_db.shell_commands(tenant_db.from_environment(config))
    return "; ".join(["set -e", "umask 077", *checks, f"{printf} > {MYSQL_INIT_FILE}",
                      f"chown mysql:mysql {MYSQL_INIT_FILE}", "exec docker-entrypoint.sh mysqld"])


# --- rendering and checking -----------------------------------------------------------------------


def secret(key: str) -> str:
    """The placeholder for a secret from the secrets file, replaced only at push time."""
    if not re.fullmatch(r"^FLOPS_[A-Z0-9_]+$", key):
        raise ValueError(f"secret(): {key!r} is not a FLOPS_ secret key")
    return "${" + key + "}"


@cache
def _base_schema() -> dict:
    return json.loads(SCHEMA_FILE.read_text(encoding="utf-8"))


def schema(name_limit: int = 30) -> dict:
    """The project's JSON schema of SLA v2.0, with names limited to ``name_limit`` characters."""
    document = json.loads(json.dumps(_base_schema()))
    document["$defs"]["name"]["maxLength"] = name_limit
    return document


def _field(path) -> str:
    text = ""
    for part in path:
        text += f"[{part}]" if isinstance(part, int) else (f".{part}" if text else str(part))
    return text or "(document)"


def _service_label(document: dict, path) -> str:
    """ ' (service acme)' when the path is inside a microservice with a name."""
    parts = list(path)
    try:
        if parts[:1] == ["applications"] and parts[2] == "microservices":
            name = document["applications"][parts[1]]["microservices"][parts[3]].get("microservice_name")
            return f" (service {name})" if isinstance(name, str) else ""
    except (IndexError, KeyError, TypeError):
        pass
    return ""


def _placeholders(item: str) -> list[str]:
    """Every ``${...}`` in an environment item, secret and file placeholders and anything else alike."""
    return re.findall(r"\$\{[^}]*\}?", item)


def validate(document: Any, template: str, name_limit: int = 30, allowed_secrets: set[str] | None = None,
             allowed_files: set[str] | None = None) -> None:
    """Check one document against the schema and the secret rules; SlaError names template, field, value.
    ``allowed_files``: the file names a ``${file:<name>}`` placeholder may take (pem_files)."""
    validator = jsonschema.Draft202012Validator(schema(name_limit))
    errors = sorted(validator.iter_errors(document),
                    key=lambda e: ([(isinstance(p, str), p) for p in e.absolute_path], e.message))
    if errors:
        error = errors[0]
        path = list(error.absolute_path)
        if error.validator == "maxLength" and path and str(path[-1]).endswith(("_name", "_namespace")):
            reason = f"longer than {name_limit} characters (oakestra.name_limit)"
        else:
            reason = error.message
        raise SlaError(f"{template}: {_field(path)}{_service_label(document, path)}: "
                       f"{json.dumps(error.instance)}: {reason}")
    for a, app in enumerate(document["applications"]):
        for m, service in enumerate(app["microservices"]):
            for key, value in service.items():
                if key == "environment":
                    for e, item in enumerate(value):
                        where = f"{template}: applications[{a}].microservices[{m}].environment[{e}]: {json.dumps(item)}"
                        for found in _placeholders(item):
                            secret_key, file_name = PLACEHOLDER.fullmatch(found), FILE_PLACEHOLDER.fullmatch(found)
                            if not secret_key and not file_name:
                                raise SlaError(f"{where}: {found} is neither a secret placeholder ${{FLOPS_...}} nor "
                                               "a file placeholder ${file:<name>}")
                            if secret_key and allowed_secrets is not None and secret_key[1] not in allowed_secrets:
                                raise SlaError(f"{where}: {found} is not a secret of this "
                                               f"configuration ({', '.join(sorted(allowed_secrets))})")
                            if file_name and allowed_files is not None and file_name[1] not in allowed_files:
                                raise SlaError(f"{where}: {found} is not a file this configuration needs "
                                               f"({', '.join(sorted(allowed_files)) or 'none'})")
                elif PLACEHOLDER.search(json.dumps(value)) or FILE_PLACEHOLDER.search(json.dumps(value)):
                    raise SlaError(f"{template}: applications[{a}].microservices[{m}].{key}: "
                                   f"{json.dumps(value)}: secret placeholders are allowed only in environment")


def _environment(templates_dir: Path) -> jinja2.Environment:
    env = jinja2.Environment(loader=jinja2.FileSystemLoader(str(templates_dir)), undefined=jinja2.StrictUndefined,
                             autoescape=False, keep_trailing_newline=True)
    env.globals["secret"] = secret
    env.globals["pem_file"] = pem_file
    env.filters["tojson"] = _tojson
    return env


def _tojson(value: Any) -> str:
    """JSON text of a value; an undefined variable fails with its name (StrictUndefined)."""
    if isinstance(value, jinja2.Undefined):
        value._fail_with_undefined_error()
    return json.dumps(value)


def _templates(ctx: dict[str, Any], run_stores: bool) -> list[tuple[str, str, dict]]:
    """(template, output file, extra context) in deploy order: stores, tracking, projects."""
    jobs = [("stores.json.j2", "stores.json", {})] if run_stores else []
    jobs.append(("tracking.json.j2", "tracking.json", {}))
    jobs.extend(("project.json.j2", f"{p['name']}.json", {"project": p}) for p in ctx["projects"])
    if ctx["serving"]:
        jobs.append(("serving.json.j2", "serving.json", {}))
    return jobs


def render_all(config: StackConfig, templates_dir: Path | None = None) -> list[Rendered]:
    """Render and check every application; raises SlaError/ConfigError before anything is written."""
    templates_dir = templates_dir or TEMPLATES_DIR
    if not templates_dir.is_dir():
        raise ConfigError(f"{templates_dir}: SLA templates folder not found (use --templates DIR)")
    ctx = context(config)
    env = _environment(templates_dir)
    allowed = set(secrets_module.required_keys(config))
    limit = config.oakestra.name_limit
    results: list[Rendered] = []
    used_ips: dict[str, str] = {}
    for template, file_name, extra in _templates(ctx, config.oakestra.run_stores):
        try:
            text = env.get_template(template).render(**ctx, **extra)
        except jinja2.TemplateSyntaxError as exc:
            raise SlaError(f"{template}: line {exc.lineno}: {exc.message}") from None
        except jinja2.TemplateNotFound:
            raise SlaError(f"{templates_dir / template}: template not found") from None
        except (jinja2.UndefinedError, ValueError) as exc:
            raise SlaError(f"{template}: {exc}") from None
        try:
            document = json.loads(text)
        except json.JSONDecodeError as exc:
            raise SlaError(f"{template}: rendered text is not JSON (line {exc.lineno}, column {exc.colno}: "
                           f"{exc.msg})") from None
        validate(document, template, limit, allowed, set(pem_files(config)))
        for a, app in enumerate(document["applications"]):
            for m, service in enumerate(app["microservices"]):
                ip = service.get("addresses", {}).get("rr_ip")
                owner = f"{app['application_name']}/{service['microservice_name']}"
                if ip is None:
                    continue
                if ip in used_ips:
                    raise SlaError(f"{template}: applications[{a}].microservices[{m}].addresses.rr_ip "
                                   f"(service {service['microservice_name']}): \"{ip}\": already used by "
                                   f"{used_ips[ip]}")
                used_ips[ip] = owner
        app = document["applications"][0]
        results.append(Rendered(template, file_name, app["application_name"], app["application_namespace"],
                                document, json.dumps(document, indent=2, ensure_ascii=False) + "\n"))
    names = [r.file_name for r in results]
    if len(set(names)) != len(names):
        raise SlaError(f"two applications render to the same file: {', '.join(names)}")
    return results


def strays(rendered: list[Rendered], out_dir: Path) -> list[str]:
    """JSON files in ``out_dir`` that the configuration no longer renders (a removed project, say)."""
    names = {item.file_name for item in rendered}
    return sorted(str(p) for p in out_dir.glob("*.json") if p.name not in names) if out_dir.is_dir() else []


# --- secrets at push time -------------------------------------------------------------------------

SAFE_SECRET = re.compile(r"^[A-Za-z0-9_-]+$")


def read_pem_files(config: StackConfig) -> dict[str, str]:
    """{name: base64url text} of every file the SLAs may name (pem_files), read from beside the secrets file;
    ConfigError naming a missing or unreadable file and the setting that needs it."""
    check(config)  # a certificate of the user's own is refused before any file is looked for
    found = {}
    for name, what in pem_files(config).items():
        path = certificates.beside_secrets(config, name)
        try:
            found[name] = pem_env.encode(path.read_bytes())
        except OSError as exc:
            setting = "tracking.tls" if name.startswith("tracking-") else \
                "artifact_store.tls" if name.startswith(certificates.FTP_LEAF) else "tracking.tls/artifact_store.tls"
            raise ConfigError(f"{path}: {what}: {exc.strerror.lower() if exc.strerror else exc} ({setting} is true); "
                              f"make it with `flops-mlops --config {config.source} secrets init`") from None
    return found


def resolve_secrets(document: dict, values: dict[str, str], source: str = "secrets file",
                    files: dict[str, str] | None = None) -> dict:
    """A copy of ``document`` whose environment placeholders hold the secrets' values, and its file placeholders
    the files' base64url text (``files``: read_pem_files).

    Values must be URL-safe (letters, digits, '-' and '_', as `secrets init` generates them): they are
    put into store URIs, a SQL string literal and a shell variable without any escaping.
    """
    def replace_file(match: re.Match) -> str:
        if files is None or match.group(1) not in files:
            raise ConfigError(f"{source}: the file {match.group(1)!r} beside it is not among the files read for "
                              "this push; render again")
        return files[match.group(1)]

    def replace(match: re.Match) -> str:
        key = match.group(1)
        value = values.get(key)
        if not value:
            raise ConfigError(f"{source}: {key} is missing; add it with `flops-mlops secrets init`")
        if not SAFE_SECRET.fullmatch(value):
            raise ConfigError(f"{source}: {key} holds characters other than letters, digits, '-' and '_'; "
                              "regenerate it with `flops-mlops secrets init --force`")
        return value

    copy = json.loads(json.dumps(document))
    for app in copy["applications"]:
        for service in app["microservices"]:
            if "environment" in service:
                service["environment"] = [FILE_PLACEHOLDER.sub(replace_file, PLACEHOLDER.sub(replace, item))
                                          for item in service["environment"]]
    return copy
