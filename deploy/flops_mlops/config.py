"""The configuration model: one YAML file describes a whole FLOps MLOps stack.

Every setting is declared once, here, as a dataclass field with its type, default and a one-line
description (``doc``). The loader checks a YAML file against these declarations: unknown keys and
wrong types are rejected with ``file: key: what is expected``. Compose, the Oakestra SLA renderer and
the pyinfra deploys all read this same model.

Relative paths in a configuration file are resolved against the folder that holds the file.
"""

from __future__ import annotations

import dataclasses
import ipaddress
import re
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import yaml

# Tenant ids reach SQL identifiers, FTP user names, folder names, URLs and Oakestra service names
# (which allow only [a-zA-Z0-9]), so they are short, lowercase and alphanumeric.
TENANT_ID_PATTERN = re.compile(r"^[a-z][a-z0-9]{0,15}$")
TENANT_ID_RULE = "1-16 characters: a lowercase letter, then lowercase letters or digits"
STACK_NAME_PATTERN = re.compile(r"^[a-z][a-z0-9-]{0,30}$")
ACCOUNT_PATTERN = re.compile(r"^[a-z_][a-z0-9_-]{0,31}$")
HOST_PATTERN = re.compile(r"^[A-Za-z0-9]([A-Za-z0-9.-]{0,251}[A-Za-z0-9])?$")


class ConfigError(Exception):
    """A configuration problem the user must fix; the message names the file, key and expectation."""


def doc(text: str, default: Any = dataclasses.MISSING, **kwargs: Any) -> Any:
    """A dataclass field with its user-facing description."""
    if isinstance(default, (list, dict)):
        value = default
        return field(default_factory=lambda: type(value)(value), metadata={"doc": text}, **kwargs)
    return field(default=default, metadata={"doc": text}, **kwargs)


@dataclass(frozen=True)
class BackendStore:
    """Where MLflow keeps metadata (experiments, runs, params, metrics, registry)."""

    kind: Literal["sqlite", "mysql"] = doc(
        "sqlite: one SQLite file per tenant in the state dir (only Python needed); "
        "mysql: a MySQL/MariaDB server, one database and user per tenant", "sqlite")
    managed: bool = doc(
        "mysql only: true starts a private MariaDB/MySQL server from this machine's binaries with its data "
        "in the state dir; false uses an existing server reachable at host:port", True)
    host: str = doc("mysql only: address of the server (also the bind address when managed)", "127.0.0.1")
    port: int = doc("mysql only: TCP port of the server", 3306)
    admin_user: str = doc(
        "mysql only: account that creates tenants' databases and users; its password is "
        "FLOPS_MYSQL_ADMIN_PASSWORD in the secrets file", "root")


@dataclass(frozen=True)
class ArtifactStore:
    """Where the tracking servers put artifacts (models, files): an FTP server, one chrooted user per tenant."""

    kind: Literal["embedded", "vsftpd"] = doc(
        "embedded: a pyftpdlib FTP server run by this tool (only Python needed); "
        "vsftpd: the vsftpd daemon from this machine's binaries", "embedded")
    managed: bool = doc(
        "true starts the FTP server as part of the stack; false uses an existing one at host:port whose tenant "
        "users are provisioned elsewhere (for example by the pyinfra deploys)", True)
    host: str = doc("address the FTP server listens on and the tracking servers connect to", "127.0.0.1")
    port: int = doc("FTP control port", 2121)
    passive_ports: list[int] = doc(
        "first and last port of the passive data port range, [min, max]; keep it small and free", [30000, 30009])
    pasv_address: str = doc("IPv4 address announced to clients in passive mode (vsftpd pasv_address)", "127.0.0.1")
    os_user: str = doc(
        "vsftpd only: local account that owns the tenants' folders; FTP users are virtual "
        "(no login shell, no system account)", "ftp")


@dataclass(frozen=True)
class Tracking:
    """The MLflow tracking servers, one per tenant, proxying artifacts (--serve-artifacts)."""

    host: str = doc("address the tracking servers listen on", "127.0.0.1")
    base_port: int = doc("port of the first tenant's server; the n-th tenant gets base_port + n "
                         "unless it sets its own port", 5000)
    public_host: str = doc("host name users put in the UI URL (also added to allowed_hosts)", "127.0.0.1")
    workers: int = doc("uvicorn workers per server; 1 fits small machines (4 cost about 2.6 GB)", 1)
    job_execution: bool = doc("run MLflow's job runner (7 consumer processes); off on small machines", False)
    allowed_hosts: list[str] = doc("extra Host header values the servers accept (--allowed-hosts)", [])
    startup_timeout: int = doc("seconds to wait for a server's /health before giving up", 180)
    os_user: str | None = doc(
        "local account the tracking servers run as when flops-mlops is started as root (required then: they "
        "never run as root); ignored otherwise, when they run as the invoking user", None)


@dataclass(frozen=True)
class Tenant:
    """A customer: its own database and database user, FTP user and folder, and tracking server."""

    id: str = doc(f"tenant id, {TENANT_ID_RULE}")
    port: int | None = doc("port of this tenant's tracking server (default: tracking.base_port + position)", None)

    # Names derived from the id, the same on every deployment target.
    @property
    def database(self) -> str:
        return f"mlflow_{self.id}"

    @property
    def db_user(self) -> str:
        return f"mlflow_{self.id}"

    @property
    def ftp_user(self) -> str:
        return f"flops_{self.id}"

    @property
    def artifact_path(self) -> str:
        """Where the tracking server puts artifacts, absolute from the tenant's chrooted FTP root."""
        return "/artifacts"


@dataclass(frozen=True)
class OakestraResources:
    """What one Oakestra service asks of its worker (SLA integers; all three keys are required when written)."""

    memory: int = doc("memory in MB")
    vcpus: int = doc("virtual CPUs")
    storage: int = doc("disk in MB (0: no requirement)")


@dataclass(frozen=True)
class OakestraImages:
    """Container images, pinned by tag (never latest) or digest; ours are prefixed with oakestra.registry."""

    tracking_server: str = doc("our tracking server image (mlflow server)", "flops-mlops/tracking-server:0.1.0")
    artifact_store: str = doc("our vsftpd artifact store image", "flops-mlops/artifact-store:0.1.0")
    fl_actor: str = doc("our FL aggregator/learner image", "flops-mlops/fl-actor:0.1.0")
    mysql: str = doc("backend store image, a full reference (not prefixed)", "docker.io/library/mysql:8.4.6")


@dataclass(frozen=True)
class OakestraTarget:
    """Where the scheduler must place services (an SLA `direct` constraint); both empty: anywhere."""

    cluster: str | None = doc("name of the cluster", None)
    node: str | None = doc("host name of the worker node", None)


@dataclass(frozen=True)
class OakestraIpPlan:
    """Service IPs (addresses.rr_ip) in 10.30.0.0/16: 10.30.<block>.<host>, derived from stable slots."""

    stores_block: int = doc("third octet of the shared backend store: MySQL is 10.30.<b>.1", 100)
    ftp_block: int = doc("third octet of the artifact stores (one vsftpd per tenant): tenant slot s gets "
                         "10.30.<b>.<s>", 102)
    tracking_block: int = doc("third octet of the tracking servers: tenant slot s gets 10.30.<b>.<s>", 101)
    projects_block: int = doc("third octet of project slot 1; project slot p uses 10.30.<b+p-1>.0/24: "
                              "aggregator .1, learner i .<i+2>", 110)


@dataclass(frozen=True)
class OakestraTenant:
    """A tenant's place in the Oakestra plan; never change or reuse a slot, its service IP derives from it."""

    id: str = doc("a tenant id from tenants[]")
    slot: int = doc("stable number 1-254: the tenant's tracking server gets 10.30.<tracking_block>.<slot>, "
                    "its FTP server 10.30.<ftp_block>.<slot>")


@dataclass(frozen=True)
class OakestraProject:
    """An FL project: one Oakestra application with an aggregator and `learners` learner services."""

    name: str = doc("project name = application name = MLflow experiment (letters and digits)")
    tenant: str = doc("the tenant whose tracking server the aggregator logs to")
    slot: int = doc("stable number from 1: the project's service IPs are 10.30.<projects_block+slot-1>.x")
    learners: int = doc("number of learner services (FLOPS_LEARNERS)", 2)
    rounds: int = doc("training rounds (FLOPS_ROUNDS)", 3)


@dataclass(frozen=True)
class Oakestra:
    """Oakestra SLA rendering (`flops-mlops render`) and deployment (`flops-mlops push` / `undeploy`)."""

    namespace: str = doc("application_namespace and microservice_namespace of every service (letters, digits)",
                         "flops")
    name_limit: int = doc("longest allowed application/service name: 30, or 10 for releases up to v0.4.204 "
                          "or an unknown release", 30)
    registry: str = doc("registry host[/path] the workers pull our images from", "docker.io")
    images: OakestraImages = doc("container images", OakestraImages())
    run_stores: bool = doc("true: render the stores application (MySQL, and one vsftpd per tenant) and point the "
                           "tracking servers at it; false: use backend_store.host/port and artifact_store.host/port",
                           True)
    ip_plan: OakestraIpPlan = doc("service IP plan", OakestraIpPlan())
    tenants: list[OakestraTenant] = doc("a slot for every tenant in tenants[]", [])
    projects: list[OakestraProject] = doc("FL projects, one application each", [])
    target: OakestraTarget = doc("placement of every service", OakestraTarget())
    stores_target: OakestraTarget | None = doc("placement of the stores (default: target)", None)
    tracking_target: OakestraTarget | None = doc(
        "placement of the tracking servers (default: target); must name both the cluster and the node, because "
        "each server's login database lives on a host path of that node (auth_host_path)", None)
    auth_host_path: str = doc(
        "absolute folder on the tracking servers' node for their login databases (MLflow basic auth, SQLite): "
        "tenant t's is <auth_host_path>/<t>, mounted through Oakestra's host-path CSI driver "
        "(csi.oakestra.io/hostpath; SLA volumes exist only after Oakestra v0.4.410); the folders must be "
        "writable by the tracking-server image's user, uid 10001", "/mnt/oakestra/hostpath/flops-mlops/auth")
    tracking_port: int = doc("port the tracking server listens on inside its container", 5000)
    tracking_host_port_base: int | None = doc(
        "expose tenant slot s's UI on its worker at host port base+s (none: reachable only inside the overlay)",
        5000)
    aggregator_port: int = doc("port the aggregator listens on (FLOPS_AGGREGATOR_ADDRESS)", 8080)
    ftp_passive_ports: list[int] = doc("passive data ports [min, max] of the FTP store", [30000, 30009])
    tracking_server: OakestraResources = doc("resources of a tracking server", OakestraResources(1024, 1, 0))
    mysql: OakestraResources = doc("resources of the MySQL backend store", OakestraResources(1024, 1, 0))
    artifact_store: OakestraResources = doc("resources of the FTP artifact store", OakestraResources(256, 1, 0))
    aggregator: OakestraResources = doc("resources of an FL aggregator", OakestraResources(1024, 1, 0))
    learner: OakestraResources = doc("resources of an FL learner", OakestraResources(1024, 1, 0))


@dataclass(frozen=True)
class StackConfig:
    """A whole stack."""

    name: str = doc("name of the stack; lowercase letters, digits and '-'")
    state_dir: Path = doc("folder for everything the stack writes: SQLite files, FTP root, logs, pids")
    secrets_file: Path = doc("the .env file written by `flops-mlops secrets init` (mode 0600)")
    tenants: list[Tenant] = doc("the customers, at least one")
    backend_store: BackendStore = doc("the backend store", BackendStore())
    artifact_store: ArtifactStore = doc("the artifact store", ArtifactStore())
    tracking: Tracking = doc("the tracking servers", Tracking())
    oakestra: Oakestra = doc("Oakestra SLA rendering and push", Oakestra())
    source: Path = field(default=Path("<memory>"), metadata={"internal": True})

    def tenant(self, tenant_id: str) -> Tenant:
        for tenant in self.tenants:
            if tenant.id == tenant_id:
                return tenant
        known = ", ".join(t.id for t in self.tenants)
        raise ConfigError(f"{self.source}: tenants: no tenant {tenant_id!r} (known: {known})")

    def tracking_port(self, tenant: Tenant) -> int:
        if tenant.port is not None:
            return tenant.port
        return self.tracking.base_port + self.tenants.index(tenant)

    def tracking_uri(self, tenant: Tenant) -> str:
        return f"http://{self.tracking.public_host}:{self.tracking_port(tenant)}"


def validate_tenant_id(value: str, where: str = "tenant id") -> str:
    if not isinstance(value, str) or not TENANT_ID_PATTERN.fullmatch(value):
        raise ConfigError(f"{where}: {value!r} is not a valid tenant id ({TENANT_ID_RULE})")
    return value


# --- loading -------------------------------------------------------------------------------------


def load(path: str | Path) -> StackConfig:
    """Read and check a configuration file; raise ConfigError naming the file and key on any problem."""
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise ConfigError(f"{path}: configuration file not found") from None
    except OSError as exc:
        raise ConfigError(f"{path}: cannot read: {exc.strerror}") from None
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f" (line {mark.line + 1}, column {mark.column + 1})" if mark else ""
        raise ConfigError(f"{path}: not valid YAML{where}: {getattr(exc, 'problem', exc)}") from None
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: expected a mapping of settings at the top level")
    config = _build(StackConfig, data, str(path), "")
    config = dataclasses.replace(
        config,
        source=path,
        state_dir=_resolve(path, config.state_dir),
        secrets_file=_resolve(path, config.secrets_file),
    )
    _check(config, str(path))
    return config


def _resolve(config_path: Path, value: Path) -> Path:
    return value if value.is_absolute() else (config_path.parent / value).resolve()


def _build(cls: type, data: Any, file: str, prefix: str) -> Any:
    if not isinstance(data, dict):
        raise ConfigError(f"{file}: {prefix.rstrip('.') or '(top level)'}: expected a mapping, got {_show(data)}")
    hints = typing.get_type_hints(cls)
    fields = {f.name: f for f in dataclasses.fields(cls) if not f.metadata.get("internal")}
    unknown = sorted(set(data) - set(fields))
    if unknown:
        raise ConfigError(f"{file}: {prefix}{unknown[0]}: unknown key (expected one of: {', '.join(fields)})")
    values = {}
    for name, f in fields.items():
        key = f"{prefix}{name}"
        if name not in data:
            if f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING:
                raise ConfigError(f"{file}: {key}: required key is missing ({f.metadata['doc']})")
            continue
        values[name] = _coerce(hints[name], data[name], file, key)
    return cls(**values)


def _coerce(hint: Any, value: Any, file: str, key: str) -> Any:
    origin = typing.get_origin(hint)
    args = typing.get_args(hint)
    if origin in (typing.Union, types.UnionType):
        if value is None and type(None) in args:
            return None
        (inner,) = [a for a in args if a is not type(None)]
        return _coerce(inner, value, file, key)
    if origin is Literal:
        if value not in args:
            raise ConfigError(f"{file}: {key}: expected one of {', '.join(map(str, args))}, got {_show(value)}")
        return value
    if origin is list:
        if not isinstance(value, list):
            raise ConfigError(f"{file}: {key}: expected a list, got {_show(value)}")
        return [_coerce(args[0], item, file, f"{key}[{i}]") for i, item in enumerate(value)]
    if dataclasses.is_dataclass(hint):
        return _build(hint, value, file, f"{key}.")
    if hint is bool:
        if not isinstance(value, bool):
            raise ConfigError(f"{file}: {key}: expected true or false, got {_show(value)}")
        return value
    if hint is int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise ConfigError(f"{file}: {key}: expected an integer, got {_show(value)}")
        return value
    if hint is str:
        if not isinstance(value, str) or not value:
            raise ConfigError(f"{file}: {key}: expected a non-empty string, got {_show(value)}")
        return value
    if hint is Path:
        if not isinstance(value, str) or not value:
            raise ConfigError(f"{file}: {key}: expected a path, got {_show(value)}")
        return Path(value)
    raise TypeError(f"unsupported config type {hint!r} for {key}")  # a bug in this module, not user input


def _show(value: Any) -> str:
    if value is None:
        return "nothing"
    return f"{type(value).__name__} {value!r}"


def _check_port(value: int, file: str, key: str) -> None:
    if not 1 <= value <= 65535:
        raise ConfigError(f"{file}: {key}: expected a TCP port 1-65535, got {value}")


def _check_host(value: str, file: str, key: str) -> None:
    if not HOST_PATTERN.fullmatch(value):
        raise ConfigError(f"{file}: {key}: expected a host name or IP address, got {value!r}")


def _check(config: StackConfig, file: str) -> None:
    """Checks that span several keys or need more than a type."""
    if not STACK_NAME_PATTERN.fullmatch(config.name):
        raise ConfigError(f"{file}: name: {config.name!r} is not valid (lowercase letters, digits and '-', "
                          "starting with a letter, at most 31 characters)")
    if not config.tenants:
        raise ConfigError(f"{file}: tenants: expected at least one tenant")
    seen: set[str] = set()
    for i, tenant in enumerate(config.tenants):
        validate_tenant_id(tenant.id, f"{file}: tenants[{i}].id")
        if tenant.id in seen:
            raise ConfigError(f"{file}: tenants[{i}].id: tenant {tenant.id!r} is listed twice")
        seen.add(tenant.id)
        if tenant.port is not None:
            _check_port(tenant.port, file, f"tenants[{i}].port")
    b, a, t = config.backend_store, config.artifact_store, config.tracking
    _check_host(b.host, file, "backend_store.host")
    _check_host(a.host, file, "artifact_store.host")
    _check_host(t.host, file, "tracking.host")
    _check_host(t.public_host, file, "tracking.public_host")
    for host in t.allowed_hosts:
        _check_host(host.split(":")[0].replace("*", "a"), file, "tracking.allowed_hosts")
    _check_port(b.port, file, "backend_store.port")
    _check_port(a.port, file, "artifact_store.port")
    _check_port(t.base_port, file, "tracking.base_port")
    if not ACCOUNT_PATTERN.fullmatch(b.admin_user):
        raise ConfigError(f"{file}: backend_store.admin_user: {b.admin_user!r} is not a valid account name")
    if not ACCOUNT_PATTERN.fullmatch(a.os_user):
        raise ConfigError(f"{file}: artifact_store.os_user: {a.os_user!r} is not a valid account name")
    if t.os_user is not None and (not ACCOUNT_PATTERN.fullmatch(t.os_user) or t.os_user == "root"):
        raise ConfigError(f"{file}: tracking.os_user: {t.os_user!r} is not an unprivileged account name "
                          "(tracking servers never run as root)")
    if len(a.passive_ports) != 2 or a.passive_ports[0] > a.passive_ports[1]:
        raise ConfigError(f"{file}: artifact_store.passive_ports: expected [min, max] with min <= max, "
                          f"got {a.passive_ports}")
    for port in a.passive_ports:
        _check_port(port, file, "artifact_store.passive_ports")
    try:
        ipaddress.IPv4Address(a.pasv_address)
    except ValueError:
        raise ConfigError(f"{file}: artifact_store.pasv_address: expected an IPv4 address, "
                          f"got {a.pasv_address!r}") from None
    if t.workers < 1:
        raise ConfigError(f"{file}: tracking.workers: expected at least 1, got {t.workers}")
    if t.startup_timeout < 1:
        raise ConfigError(f"{file}: tracking.startup_timeout: expected at least 1 second, got {t.startup_timeout}")
    ports: dict[int, str] = {}
    for tenant in config.tenants:
        _claim(ports, config.tracking_port(tenant), f"tracking server of tenant {tenant.id}", file)
    if a.managed:
        _claim(ports, a.port, "artifact_store.port", file)
    if b.kind == "mysql" and b.managed:
        _claim(ports, b.port, "backend_store.port", file)


def _claim(ports: dict[int, str], port: int, what: str, file: str) -> None:
    _check_port(port, file, what)
    if port in ports:
        raise ConfigError(f"{file}: port {port} is used twice: by {ports[port]} and by {what}")
    ports[port] = what


def describe(cls: type = StackConfig, prefix: str = "") -> list[tuple[str, str, str]]:
    """(key, default, description) for every setting, for `flops-mlops config keys`."""
    rows = []
    hints = typing.get_type_hints(cls)
    for f in dataclasses.fields(cls):
        if f.metadata.get("internal"):
            continue
        key = f"{prefix}{f.name}"
        hint = hints[f.name]
        if dataclasses.is_dataclass(hint):
            rows.append((key, "", f.metadata["doc"]))
            rows.extend(describe(hint, key + "."))
            continue
        if typing.get_origin(hint) is list and dataclasses.is_dataclass(typing.get_args(hint)[0]):
            rows.append((key, "", f.metadata["doc"]))
            rows.extend(describe(typing.get_args(hint)[0], key + "[]."))
            continue
        if f.default is not dataclasses.MISSING:
            default = repr(f.default)
        elif f.default_factory is not dataclasses.MISSING:
            default = repr(f.default_factory())
        else:
            default = "(required)"
        rows.append((key, default, f.metadata["doc"]))
    return rows
