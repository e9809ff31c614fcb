"""Render Oakestra SLA v2.0 documents from sla_templates/ and check them before anything is written.

One JSON file per application, in deploy order: ``stores.json`` (MySQL, and one vsftpd per tenant; when
oakestra.run_stores),
``tracking.json`` (one MLflow tracking server per tenant) and ``<project>.json`` per FL project (an
aggregator and N learners). The output is a pure function of the configuration and the templates, so it
is byte-for-byte the same on every run and can be reviewed as a diff.

Service IPs (addresses.rr_ip) come from stable slots in the configuration, never from list positions:
adding a tenant or project never moves the address of an existing one.

Secrets never reach a rendered file. Templates write ``${FLOPS_...}`` placeholders (``secret(key)``), which
are allowed only in ``environment`` values (also inside a longer value, such as FLOPS_FL_USERS) and are
replaced from the secrets file at push time (``resolve_secrets``).

Logins: every tracking server runs MLflow's basic auth with its users and grants in a SQLite file (MLflow's
auth migrations fail on MySQL). On Oakestra that file lives on a host-path volume (``csi.oakestra.io/hostpath``,
SLA ``volumes``, only after Oakestra v0.4.410; older releases store the key and ignore it, so the file then
dies with the container), so the tracking servers are pinned to one node (oakestra.tracking_target, cluster
and node). The aggregator of a project logs in as ``fl-<project>``; learners get no credentials.
"""

from __future__ import annotations

import ipaddress
import json
import os
import re
from dataclasses import dataclass, replace
from functools import cache
from pathlib import Path, PurePosixPath
from typing import Any

import jinja2
import jsonschema

from .. import secrets as secrets_module
from ..config import ConfigError, OakestraTarget, StackConfig
from ..container import AUTH_DB
from ..fl.settings import PROJECT_PATTERN, PROJECT_RULE, FLSettings, environment
from ..users import project_user

TEMPLATES_DIR = Path(__file__).resolve().parents[3] / "sla_templates"
SCHEMA_FILE = Path(__file__).with_name("sla-v2.0.schema.json")
SERVICE_NETWORK = ipaddress.IPv4Network("10.30.0.0/16")
PLACEHOLDER = re.compile(r"\$\{([A-Z][A-Z0-9_]*)\}")
NAME_PATTERN = re.compile(r"^[A-Za-z0-9]+$")
RESERVED_APPS = ("tracking", "stores")
IMAGE_PATTERN = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._/:-]*(:[A-Za-z0-9_][A-Za-z0-9._-]{0,127}|@sha256:[0-9a-f]{64})$")
REGISTRY_PATTERN = re.compile(r"^[a-z0-9]([a-z0-9.-]*[a-z0-9])?(:[0-9]{1,5})?(/[a-z0-9][a-z0-9._-]*)*$")
MYSQL_PORT = 3306
FTP_PORT = 21
HOSTPATH_DRIVER = "csi.oakestra.io/hostpath"  # Oakestra's host-path CSI plugin (csi/hostpath in oakestra/oakestra)
AUTH_MOUNT = str(PurePosixPath(AUTH_DB).parent)  # the tracking-server image's auth folder (flops_mlops.container)
HOST_PATH_PATTERN = re.compile(r"^(/[A-Za-z0-9._-]+)+$")


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


# --- the plan: names, addresses and images derived from the configuration ---------------------------


def _fail(config: StackConfig, key: str, message: str) -> ConfigError:
    return ConfigError(f"{config.source}: oakestra.{key}: {message}")


def _image(config: StackConfig, key: str) -> str:
    o = config.oakestra
    reference = getattr(o.images, key)
    full = reference if key == "mysql" else f"{o.registry}/{reference}"
    if not IMAGE_PATTERN.fullmatch(full) or full.rsplit("/", 1)[-1].endswith(":latest"):
        raise _fail(config, f"images.{key}", f"{full!r} is not a pinned image reference "
                                              "(name:tag with a tag other than latest, or name@sha256:digest)")
    return full


def _constraints(target: OakestraTarget) -> list[dict]:
    constraint = {"type": "direct"}
    if target.cluster:
        constraint["cluster"] = target.cluster
    if target.node:
        constraint["node"] = target.node
    return [constraint] if len(constraint) > 1 else []


def _tracking_target(config: StackConfig) -> OakestraTarget:
    o = config.oakestra
    return o.tracking_target if o.tracking_target is not None else o.target


def _address(block: int, host: int) -> str:
    return str(SERVICE_NETWORK.network_address + block * 256 + host)


def check(config: StackConfig) -> None:
    """Checks of the oakestra section that need more than a type; ConfigError names the key and value."""
    o = config.oakestra
    if not 1 <= o.name_limit <= 30:
        raise _fail(config, "name_limit", f"expected 10 (releases up to v0.4.204) or 30, got {o.name_limit}")
    if not NAME_PATTERN.fullmatch(o.namespace) or len(o.namespace) > o.name_limit:
        raise _fail(config, "namespace", f"{o.namespace!r} must be 1-{o.name_limit} letters or digits")
    if not REGISTRY_PATTERN.fullmatch(o.registry):
        raise _fail(config, "registry", f"{o.registry!r} is not a registry host[:port][/path]")
    if config.backend_store.kind != "mysql":
        raise ConfigError(f"{config.source}: backend_store.kind: Oakestra tracking servers need mysql "
                          f"(a SQLite file does not survive rescheduling), got {config.backend_store.kind!r}")
    if not o.run_stores:
        for key, host in (("backend_store.host", config.backend_store.host),
                          ("artifact_store.host", config.artifact_store.host)):
            if host in ("localhost", "0.0.0.0") or host.startswith("127."):
                raise ConfigError(f"{config.source}: {key}: {host!r} is not reachable from Oakestra workers "
                                  "(oakestra.run_stores is false, so the tracking servers connect to it)")
    for key in ("stores_block", "ftp_block", "tracking_block", "projects_block"):
        if not 0 <= getattr(o.ip_plan, key) <= 255:
            raise _fail(config, f"ip_plan.{key}", f"expected 0-255, got {getattr(o.ip_plan, key)}")
    for key in ("tracking_port", "aggregator_port"):
        if not 1 <= getattr(o, key) <= 65535:
            raise _fail(config, key, f"expected a TCP port 1-65535, got {getattr(o, key)}")
    low, high = (o.ftp_passive_ports + [0, 0])[:2]
    if len(o.ftp_passive_ports) != 2 or not 1024 <= low <= high <= 65535:
        raise _fail(config, "ftp_passive_ports", f"expected [min, max] within 1024-65535, got {o.ftp_passive_ports}")
    for key in ("tracking_server", "mysql", "artifact_store", "aggregator", "learner"):
        resources = getattr(o, key)
        for field in ("memory", "vcpus", "storage"):
            if getattr(resources, field) < 0:
                raise _fail(config, f"{key}.{field}", f"expected 0 or more, got {getattr(resources, field)}")
    for key in ("tracking_server", "artifact_store", "fl_actor", "mysql"):
        _image(config, key)
    tracking = _tracking_target(config)
    if not (tracking.cluster and tracking.node):
        key = "tracking_target" if o.tracking_target is not None else "target"
        raise _fail(config, key, "the tracking servers must be pinned to one node, with its cluster: their login "
                                 "databases live on a host path of that node (auth_host_path); set "
                                 "oakestra.tracking_target: {cluster: ..., node: ...} (the root scheduler picks "
                                 "the cluster by name, the cluster's scheduler the node)")
    if (not HOST_PATH_PATTERN.fullmatch(o.auth_host_path)
            or any(part in (".", "..") for part in o.auth_host_path.split("/"))):
        raise _fail(config, "auth_host_path", f"{o.auth_host_path!r} must be an absolute path of letters, digits, "
                                              "'.', '_', '-' and '/' without '.' or '..' parts")

    known = {t.id for t in config.tenants}
    slots: dict[int, str] = {}
    listed: set[str] = set()
    for i, entry in enumerate(o.tenants):
        if entry.id not in known:
            raise _fail(config, f"tenants[{i}].id", f"{entry.id!r} is not in tenants[] ({', '.join(sorted(known))})")
        if entry.id in listed:
            raise _fail(config, f"tenants[{i}].id", f"tenant {entry.id!r} has two slots")
        if not 1 <= entry.slot <= 254:
            raise _fail(config, f"tenants[{i}].slot", f"expected 1-254, got {entry.slot}")
        if entry.slot in slots:
            raise _fail(config, f"tenants[{i}].slot",
                        f"slot {entry.slot} is already used by tenant {slots[entry.slot]}")
        slots[entry.slot] = entry.id
        listed.add(entry.id)
    missing = [t.id for t in config.tenants if t.id not in listed]
    if missing:
        raise _fail(config, "tenants", f"no slot for tenant(s) {', '.join(missing)}; add "
                                       f"{{id: {missing[0]}, slot: N}} with an unused N from 1-254 "
                                       "(never reuse the slot of a removed tenant)")
    if o.tracking_host_port_base is not None and not 1 <= o.tracking_host_port_base + max(slots) <= 65535:
        raise _fail(config, "tracking_host_port_base", f"{o.tracking_host_port_base} + slot {max(slots)} "
                                                       "is not a TCP port")

    names: set[str] = set()
    project_slots: dict[int, str] = {}
    blocks = {o.ip_plan.tracking_block: "ip_plan.tracking_block"}
    if o.run_stores:
        for key in ("stores_block", "ftp_block"):
            block = getattr(o.ip_plan, key)
            if block in blocks:
                raise _fail(config, f"ip_plan.{key}", f"block {block} is also {blocks[block]}")
            blocks[block] = f"ip_plan.{key}"
    for i, project in enumerate(o.projects):
        where = f"projects[{i}]"
        if not PROJECT_PATTERN.fullmatch(project.name) or project.name in RESERVED_APPS:
            raise _fail(config, f"{where}.name", f"{project.name!r} must be a project name ({PROJECT_RULE}, as "
                                                 f"for `round`) other than {' or '.join(RESERVED_APPS)}")
        if project.name in names:
            raise _fail(config, f"{where}.name", f"project {project.name!r} is listed twice")
        names.add(project.name)
        if project.tenant not in known:
            raise _fail(config, f"{where}.tenant", f"{project.tenant!r} is not in tenants[]")
        if project.slot < 1 or project.slot in project_slots:
            raise _fail(config, f"{where}.slot", f"expected an unused number from 1, got {project.slot}")
        project_slots[project.slot] = project.name
        block = o.ip_plan.projects_block + project.slot - 1
        if block > 255:
            raise _fail(config, f"{where}.slot", f"slot {project.slot} puts the project outside 10.30.0.0/16 "
                                                 f"(projects_block {o.ip_plan.projects_block} + slot - 1 > 255)")
        if block in blocks:
            raise _fail(config, f"{where}.slot", f"its addresses 10.30.{block}.x overlap {blocks[block]}")
        blocks[block] = f"{where}"
        if not 1 <= project.learners <= 253:
            raise _fail(config, f"{where}.learners", f"expected 1-253, got {project.learners}")
        if project.rounds < 1:
            raise _fail(config, f"{where}.rounds", f"expected at least 1, got {project.rounds}")


def context(config: StackConfig) -> dict[str, Any]:
    """Everything the templates may use: names, service IPs, images, resources and secret keys."""
    check(config)
    o = config.oakestra
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
            "auth_volume": {  # SLA volumes[] item: the login database's folder on the pinned node
                "volume_id": f"{o.namespace}-{tenant.id}-auth", "csi_driver": HOSTPATH_DRIVER,
                "mount_path": AUTH_MOUNT, "config": {"host_path": f"{o.auth_host_path}/{tenant.id}"},
            },
            "projects": [],  # filled below: the FL projects whose aggregators log in to this server
        })
    by_id = {t["id"]: t for t in tenants}
    projects = []
    for project in o.projects:
        block = o.ip_plan.projects_block + project.slot - 1
        tracking = by_id[project.tenant]
        aggregator_ip = _address(block, 1)
        settings = FLSettings(project=project.name, tracking_uri=f"http://{tracking['rr_ip']}:{o.tracking_port}",
                              rounds=project.rounds, learners=project.learners,
                              aggregator_address=f"0.0.0.0:{o.aggregator_port}")
        learner = replace(settings, aggregator_address=f"{aggregator_ip}:{o.aggregator_port}")
        entry = {
            "name": project.name, "tenant": project.tenant, "rounds": project.rounds, "learners": project.learners,
            "tracking_uri": settings.tracking_uri,
            "user": project_user(project.name),
            "password_key": secrets_module.project_password_key(project.name),
            "aggregator_ip": aggregator_ip,
            "learner_ips": [_address(block, 2 + i) for i in range(project.learners)],
            # The FL processes' settings, by the one mapping flops_mlops.fl reads back (settings.environment).
            "aggregator_environment": environment(settings, "aggregator"),
            "learner_environments": [environment(replace(learner, learner_index=i), "learner")
                                     for i in range(project.learners)],
        }
        projects.append(entry)
        tracking["projects"].append(entry)
    return {
        "customer_id": config.name,
        "app_namespace": o.namespace,
        "images": {key: _image(config, key) for key in ("tracking_server", "artifact_store", "fl_actor", "mysql")},
        "resources": {key: vars(getattr(o, key)) for key in
                      ("tracking_server", "mysql", "artifact_store", "aggregator", "learner")},
        "constraints": _constraints(o.target),
        "stores_constraints": _constraints(o.stores_target or o.target),
        "tracking_constraints": _constraints(_tracking_target(config)),
        "auth_db": AUTH_DB,
        "stores": stores,
        "mysql_admin_password_key": secrets_module.MYSQL_ADMIN_KEY,
        "ftp_passive_ports": o.ftp_passive_ports,
        "tracking_port": o.tracking_port,
        "tracking_workers": config.tracking.workers,
        "tracking_public_host": config.tracking.public_host,
        "tracking_allowed_hosts": config.tracking.allowed_hosts,
        "aggregator_port": o.aggregator_port,
        "tenants": tenants,
        "projects": projects,
    }


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


def validate(document: Any, template: str, name_limit: int = 30, allowed_secrets: set[str] | None = None) -> None:
    """Check one document against the schema and the secret rules; SlaError names template, field, value."""
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
                        for found in PLACEHOLDER.findall(item):
                            if allowed_secrets is not None and found not in allowed_secrets:
                                raise SlaError(f"{template}: applications[{a}].microservices[{m}].environment[{e}]: "
                                               f"{json.dumps(item)}: ${{{found}}} is not a secret of this "
                                               f"configuration ({', '.join(sorted(allowed_secrets))})")
                elif PLACEHOLDER.search(json.dumps(value)):
                    raise SlaError(f"{template}: applications[{a}].microservices[{m}].{key}: "
                                   f"{json.dumps(value)}: secret placeholders are allowed only in environment")


def _environment(templates_dir: Path) -> jinja2.Environment:
    env = jinja2.Environment(loader=jinja2.FileSystemLoader(str(templates_dir)), undefined=jinja2.StrictUndefined,
                             autoescape=False, keep_trailing_newline=True)
    env.globals["secret"] = secret
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
        validate(document, template, limit, allowed)
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


def write(rendered: list[Rendered], out_dir: Path) -> list[Path]:
    """Write every document (each atomically); returns the paths."""
    out_dir.mkdir(parents=True, exist_ok=True)
    paths = []
    for item in rendered:
        path = out_dir / item.file_name
        tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
        tmp.write_text(item.text, encoding="utf-8")
        os.replace(tmp, path)
        paths.append(path)
    return paths


def strays(rendered: list[Rendered], out_dir: Path) -> list[str]:
    """JSON files in ``out_dir`` that the configuration no longer renders (a removed project, say)."""
    names = {item.file_name for item in rendered}
    return sorted(str(p) for p in out_dir.glob("*.json") if p.name not in names) if out_dir.is_dir() else []


def differences(rendered: list[Rendered], out_dir: Path) -> list[str]:
    """Files in ``out_dir`` that are missing or differ from what the configuration renders now."""
    stale = []
    for item in rendered:
        path = out_dir / item.file_name
        if not path.is_file() or path.read_text(encoding="utf-8") != item.text:
            stale.append(str(path))
    return stale


# --- secrets at push time -------------------------------------------------------------------------

SAFE_SECRET = re.compile(r"^[A-Za-z0-9_-]+$")


def resolve_secrets(document: dict, values: dict[str, str], source: str = "secrets file") -> dict:
    """A copy of ``document`` whose environment placeholders hold the secrets' values.

    Values must be URL-safe (letters, digits, '-' and '_', as `secrets init` generates them): they are
    put into store URIs, a SQL string literal and a shell variable without any escaping.
    """
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
                service["environment"] = [PLACEHOLDER.sub(replace, item) for item in service["environment"]]
    return copy
