"""The configuration model: one YAML file describes a whole FLOps MLOps stack.

Every setting is declared once, here, as a field of a pydantic model with its type, constraints, default and a
one-line description (``doc``); the types shared with other checks (tenant id, host, port, ...) live in
values.py. Validation is strict (no "5" for 5, no 1 for true) and refuses unknown keys, and every rule holds
at load time, the Oakestra section's included: ``load()`` returns only configurations that every target
(`up`, compose, `render`/`push`, pyinfra) accepts. Problems are reported as ``file: key: what is expected``.
`flops-mlops config keys` and docs/configuration.md are generated from these declarations.

Relative paths in a configuration file are resolved against the folder that holds the file.
"""

from __future__ import annotations

import json
import re
import typing
from pathlib import Path
from typing import Annotated, Any, Literal

import yaml
from pydantic import (
    AfterValidator,
    BaseModel,
    ConfigDict,
    Field,
    PrivateAttr,
    StrictInt,
    StrictStr,
    ValidationError,
    model_validator,
)
from pydantic_core import PydanticCustomError, PydanticUndefined

from .values import (
    PROJECT_RULE,
    RULE_ERROR,
    TENANT_ID_RULE,
    AccountName,
    AllowedHost,
    FilePath,
    Host,
    HostPath,
    Image,
    IPv4,
    Port,
    ProjectName,
    ServiceAccount,
    StackName,
    TenantId,
    Text,
    at_least,
    between,
    explained,
    problem,
)


class ConfigError(Exception):
    """A configuration problem the user must fix; the message names the file, key and expectation."""


class Broken(ConfigError):
    """A rule that spans several keys is broken; ``load`` puts the file name in front."""

    def __init__(self, key: str, message: str) -> None:
        super().__init__(f"{key}: {message}" if key else message)
        self.key, self.message = key, message


class Model(BaseModel):
    """Strict, closed and immutable: what every section of the configuration is."""

    model_config = ConfigDict(strict=True, extra="forbid", frozen=True)


def doc(text: str, default: Any = PydanticUndefined) -> Any:
    """A field with its user-facing description (and its default; none: the key is required)."""
    return Field(default, description=text)


def _rule(message: str) -> PydanticCustomError:
    return PydanticCustomError(RULE_ERROR, message)


def _min_max(value: list[int]) -> list[int]:
    if len(value) != 2 or value[0] > value[1]:
        raise _rule(f"expected [min, max] with min <= max, got {value}")
    return value


def _unprivileged_min_max(value: list[int]) -> list[int]:
    low, high = (value + [0, 0])[:2]
    if len(value) != 2 or not 1024 <= low <= high <= 65535:
        raise _rule(f"expected [min, max] within 1024-65535, got {value}")
    return value


def _at_least_one(value: list) -> list:
    if not value:
        raise _rule("expected at least one tenant")
    return value


PortRange = Annotated[list[Port], AfterValidator(_min_max)]
OakestraPortRange = Annotated[list[StrictInt], AfterValidator(_unprivileged_min_max)]
Positive = at_least(1)
Seconds = at_least(1, " second")
Amount = Annotated[StrictInt, Field(ge=0), explained("expected 0 or more, got {value!r}")]
Block = between(0, 255)
TenantSlot = between(1, 254)
Learners = between(1, 253)
NameLimit = Annotated[StrictInt, Field(ge=1, le=30),
                      explained("expected 10 (releases up to v0.4.204) or 30, got {value!r}")]
Registry = Annotated[Text, Field(pattern=r"^[a-z0-9]([a-z0-9.-]*[a-z0-9])?(:[0-9]{1,5})?(/[a-z0-9][a-z0-9._-]*)*$"),
                     explained("{value!r} is not a registry host[:port][/path]")]
OAKESTRA_NAME = re.compile(r"^[A-Za-z0-9]+$")  # application and service names: letters and digits only
RESERVED_APPS = ("tracking", "stores", "serving")  # application names of our own; no project may take them


class BackendStore(Model):
    """Where MLflow keeps metadata (experiments, runs, params, metrics, registry)."""

    kind: Literal["sqlite", "mysql"] = doc(
        "sqlite: one SQLite file per tenant in the state dir (only Python needed); "
        "mysql: a MySQL/MariaDB server, one database and user per tenant", "sqlite")
    managed: bool = doc(
        "mysql only: true starts a private MariaDB/MySQL server from this machine's binaries with its data "
        "in the state dir; false uses an existing server reachable at host:port", True)
    host: Host = doc("mysql only: address of the server (also the bind address when managed)", "127.0.0.1")
    port: Port = doc("mysql only: TCP port of the server", 3306)
    admin_user: AccountName = doc(
        "mysql only: account that creates tenants' databases and users; its password is "
        "FLOPS_MYSQL_ADMIN_PASSWORD in the secrets file", "root")


class ArtifactStore(Model):
    """Where the tracking servers put artifacts (models, files): an FTP server, one chrooted user per tenant."""

    kind: Literal["embedded", "vsftpd"] = doc(
        "embedded: a pyftpdlib FTP server run by this tool (only Python needed); "
        "vsftpd: the vsftpd daemon from this machine's binaries", "embedded")
    managed: bool = doc(
        "true starts the FTP server as part of the stack; false uses an existing one at host:port whose tenant "
        "users are provisioned elsewhere (for example by the pyinfra deploys)", True)
    host: Host = doc("address the FTP server listens on and the tracking servers connect to", "127.0.0.1")
    port: Port = doc("FTP control port", 2121)
    passive_ports: PortRange = doc(
        "first and last port of the passive data port range, [min, max]; keep it small and free", [30000, 30009])
    pasv_address: IPv4 = doc("IPv4 address announced to clients in passive mode (vsftpd pasv_address)", "127.0.0.1")
    os_user: AccountName = doc(
        "vsftpd only: local account that owns the tenants' folders; FTP users are virtual "
        "(no login shell, no system account)", "ftp")
    connect_timeout: Seconds = doc(
        "seconds a tracking server waits for the FTP server to accept, greet and log it in; an artifact request "
        "to a hung store fails after this", 10)
    data_timeout: Seconds = doc(
        "seconds a tracking server waits for any one FTP command or data transfer to make progress after login",
        60)
    tls: bool = doc(
        "vsftpd only: explicit FTPS (AUTH TLS, then PROT P) between the tracking servers and the store; "
        "`secrets init` makes the certificate and key next to the secrets file (<secrets_file>.ftp-tls.crt "
        "and .key, mode 0600), which the servers check the store against", False)

    @model_validator(mode="after")
    def _tls_needs_vsftpd(self) -> ArtifactStore:
        if self.tls and self.kind != "vsftpd":
            raise Broken("artifact_store.tls", f"FTPS needs kind vsftpd (the embedded server speaks plain FTP "
                                               f"only), got kind {self.kind!r}")
        return self


class Tracking(Model):
    """The MLflow tracking servers, one per tenant, proxying artifacts (--serve-artifacts)."""

    host: Host = doc("address the tracking servers listen on", "127.0.0.1")
    base_port: Port = doc("port of the first tenant's server; the n-th tenant gets base_port + n "
                         "unless it sets its own port", 5000)
    public_host: Host = doc("host name users put in the UI URL (also added to allowed_hosts)", "127.0.0.1")
    workers: Positive = doc("uvicorn workers per server; 1 fits small machines (4 cost about 2.6 GB)", 1)
    job_execution: bool = doc("run MLflow's job runner (7 consumer processes); off on small machines", False)
    allowed_hosts: list[AllowedHost] = doc("extra Host header values the servers accept (--allowed-hosts)", [])
    startup_timeout: Seconds = doc("seconds to wait for a server's /health before giving up", 180)
    os_user: ServiceAccount | None = doc(
        "local account the tracking servers run as when flops-mlops is started as root (required then: they "
        "never run as root); ignored otherwise, when they run as the invoking user", None)


class Tenant(Model):
    """A customer: its own database and database user, FTP user and folder, and tracking server."""

    id: TenantId = doc(f"tenant id, {TENANT_ID_RULE}")
    port: Port | None = doc("port of this tenant's tracking server (default: tracking.base_port + position)", None)

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


Tenants = Annotated[list[Tenant], AfterValidator(_at_least_one)]


class OakestraResources(Model):
    """What one Oakestra service asks of its worker (SLA integers; all three keys are required when written)."""

    memory: Amount = doc("memory in MB")
    vcpus: Amount = doc("virtual CPUs")
    storage: Amount = doc("disk in MB (0: no requirement)")


class Images(Model):
    """Container images of compose and Oakestra, pinned by tag (never latest) or digest. Ours are built from
    deploy/images (`docker compose build`); Oakestra prefixes them with oakestra.registry."""

    tracking_server: Image = doc("our tracking server image", "flops-mlops/tracking-server:0.1.0")
    artifact_store: Image = doc("our vsftpd artifact store image", "flops-mlops/artifact-store:0.1.0")
    fl_actor: Image = doc("our FL aggregator/learner image", "flops-mlops/fl-actor:0.1.0")
    model_server: Image = doc("our model server image (MLflow's scoring server; `serve` profile, build-model-image)",
                              "flops-mlops/model-server:0.1.0")
    mysql: Image = doc("backend store image, a full reference (not prefixed)", "docker.io/library/mysql:8.4.6")


class OakestraTarget(Model):
    """Where the scheduler must place services (an SLA `direct` constraint); both empty: anywhere."""

    cluster: Text | None = doc("name of the cluster", None)
    node: Text | None = doc("host name of the worker node", None)


class OakestraIpPlan(Model):
    """Service IPs (addresses.rr_ip) in 10.30.0.0/16: 10.30.<block>.<host>, derived from stable slots."""

    stores_block: Block = doc("third octet of the shared backend store: MySQL is 10.30.<b>.1", 100)
    ftp_block: Block = doc("third octet of the artifact stores (one vsftpd per tenant): tenant slot s gets "
                         "10.30.<b>.<s>", 102)
    tracking_block: Block = doc("third octet of the tracking servers: tenant slot s gets 10.30.<b>.<s>", 101)
    projects_block: Block = doc("third octet of project slot 1; project slot p uses 10.30.<b+p-1>.0/24: "
                              "aggregator .1, learner i .<i+2>", 110)
    serving_block: Block = doc("third octet of the model servers (serving application): the champion of project "
                               "slot p is served at 10.30.<b>.<p>", 103)


class OakestraTenant(Model):
    """A tenant's place in the Oakestra plan; never change or reuse a slot, its service IP derives from it."""

    id: TenantId = doc("a tenant id from tenants[]")
    slot: TenantSlot = doc("stable number 1-254: the tenant's tracking server gets 10.30.<tracking_block>.<slot>, "
                    "its FTP server 10.30.<ftp_block>.<slot>")


class OakestraProject(Model):
    """An FL project: one Oakestra application with an aggregator and `learners` learner services."""

    name: ProjectName = doc("project name = application name = MLflow experiment (letters and digits)")
    tenant: TenantId = doc("the tenant whose tracking server the aggregator logs to")
    slot: StrictInt = doc("stable number from 1: the project's service IPs are 10.30.<projects_block+slot-1>.x")
    learners: Learners = doc("number of learner services (FLOPS_LEARNERS)", 2)
    rounds: Positive = doc("training rounds (FLOPS_ROUNDS)", 3)
    serve: bool = doc("also serve the project's champion: a model server in the serving application", False)


HOSTPATH_DRIVER = "csi.oakestra.io/hostpath"  # Oakestra's host-path CSI plugin (csi/hostpath in oakestra/oakestra)
CsiDriver = Annotated[StrictStr, Field(pattern=r"^[a-z0-9]([a-z0-9.-]*[a-z0-9])?(/[a-z0-9._-]+)*$"),
                      explained("{value!r} is not a CSI driver name such as " + HOSTPATH_DRIVER)]


class OakestraVolume(Model):
    """A folder of the store's node mounted into its container (SLA volumes[]; Oakestra after v0.4.410)."""

    host_path: HostPath = doc("absolute folder on the node; it must be visible to the CSI driver's container "
                              "(its documented run mounts /mnt/oakestra/hostpath)")
    mount_path: HostPath | None = doc("where the container sees it (default: the store's data folder, "
                                      "/var/lib/mysql for MySQL, /srv/ftp for vsftpd)", None)
    csi_driver: CsiDriver = doc("CSI driver registered with the node engine", HOSTPATH_DRIVER)


class OakestraStore(Model):
    """Placement and data of one kind of store in the stores application."""

    target_node: Text | None = doc("the worker node the store runs on (SLA target_node, and a direct constraint "
                                   "with the cluster of stores_target or target); required with a volume", None)
    volume: OakestraVolume | None = doc("keep the store's data in a folder of that node (none: the data lives "
                                        "and dies with the container)", None)


class OakestraStores(Model):
    """The stores application's data: a volume per store and the node each store is pinned to."""

    mysql: OakestraStore = doc("the MySQL backend store of all tenants: volume.host_path is its data directory",
                               OakestraStore())
    artifact_store: OakestraStore = doc("the vsftpd artifact stores, one per tenant: tenant t's files are in "
                                        "<volume.host_path>/<t>", OakestraStore())


def _resources(memory: int) -> OakestraResources:
    return OakestraResources(memory=memory, vcpus=1, storage=0)


class Oakestra(Model):
    """Oakestra SLA rendering (`flops-mlops render`) and deployment (`flops-mlops push` / `undeploy`)."""

    namespace: Text = doc("application_namespace and microservice_namespace of every service (letters, digits)",
                         "flops")
    name_limit: NameLimit = doc("longest allowed application/service name: 30, or 10 for releases up to v0.4.204 "
                          "or an unknown release", 30)
    registry: Registry = doc("registry host[/path] the workers pull our images (images.*, but mysql) from",
                             "docker.io")
    run_stores: bool = doc("true: render the stores application (MySQL, and one vsftpd per tenant) and point the "
                           "tracking servers at it; false: use backend_store.host/port and artifact_store.host/port",
                           True)
    ip_plan: OakestraIpPlan = doc("service IP plan", OakestraIpPlan())
    tenants: list[OakestraTenant] = doc("a slot for every tenant in tenants[]", [])
    projects: list[OakestraProject] = doc("FL projects, one application each", [])
    target: OakestraTarget = doc("placement of every service", OakestraTarget())
    stores_target: OakestraTarget | None = doc("placement of the stores (default: target)", None)
    stores: OakestraStores = doc("persistent data of the stores (run_stores): a host-path volume and the node of "
                                 "each store", OakestraStores())
    tracking_target: OakestraTarget | None = doc(
        "placement of the tracking servers (default: target); must name both the cluster and the node, because "
        "each server's login database lives on a host path of that node (auth_host_path)", None)
    auth_host_path: HostPath = doc(
        "absolute folder on the tracking servers' node for their login databases (MLflow basic auth, SQLite): "
        "tenant t's is <auth_host_path>/<t>, mounted through Oakestra's host-path CSI driver "
        "(csi.oakestra.io/hostpath; SLA volumes exist only after Oakestra v0.4.410); the folders must be "
        "writable by the tracking-server image's user, uid 10001", "/mnt/oakestra/hostpath/flops-mlops/auth")
    tracking_port: Port = doc("port the tracking server listens on inside its container", 5000)
    tracking_host_port_base: StrictInt | None = doc(
        "expose tenant slot s's UI on its worker at host port base+s (none: reachable only inside the overlay)",
        5000)
    aggregator_port: Port = doc("port the aggregator listens on (FLOPS_AGGREGATOR_ADDRESS)", 8080)
    ftp_passive_ports: OakestraPortRange = doc("passive data ports [min, max] of the FTP store", [30000, 30009])
    tracking_server: OakestraResources = doc(
        "resources of a tracking server (one process; peak 295 MiB measured in bench/results/stack_footprint.md)",
        _resources(384))
    mysql: OakestraResources = doc("resources of the MySQL backend store", _resources(1024))
    artifact_store: OakestraResources = doc("resources of the FTP artifact store", _resources(256))
    aggregator: OakestraResources = doc("resources of an FL aggregator", _resources(1024))
    learner: OakestraResources = doc("resources of an FL learner", _resources(1024))
    model_server: OakestraResources = doc("resources of a model server (serving application)", _resources(768))


class StackConfig(Model):
    """A whole stack."""

    name: StackName = doc("name of the stack; lowercase letters, digits and '-'")
    state_dir: FilePath = doc("folder for everything the stack writes: SQLite files, FTP root, logs, pids")
    secrets_file: FilePath = doc("the .env file written by `flops-mlops secrets init` (mode 0600)")
    tenants: Tenants = doc("the customers, at least one")
    backend_store: BackendStore = doc("the backend store", BackendStore())
    artifact_store: ArtifactStore = doc("the artifact store", ArtifactStore())
    tracking: Tracking = doc("the tracking servers", Tracking())
    images: Images = doc("container images (compose and Oakestra)", Images())
    oakestra: Oakestra = doc("Oakestra SLA rendering and push", Oakestra())
    _source: Path = PrivateAttr(default=Path("<memory>"))

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

    @property
    def source(self) -> Path:
        """The file this configuration was loaded from (``<memory>`` when built in Python)."""
        return self._source

    def located(self, source: Path) -> StackConfig:
        """This configuration, naming ``source`` as its file in messages."""
        copy = self.model_copy()
        copy._source = source
        return copy

    @model_validator(mode="after")
    def _rules(self) -> StackConfig:
        """Rules that span several keys; the Oakestra ones when the file has an oakestra section."""
        seen: set[str] = set()
        for i, tenant in enumerate(self.tenants):
            if tenant.id in seen:
                raise Broken(f"tenants[{i}].id", f"tenant {tenant.id!r} is listed twice")
            seen.add(tenant.id)
        ports: dict[int, str] = {}
        for tenant in self.tenants:
            _claim(ports, self.tracking_port(tenant), f"tracking server of tenant {tenant.id}")
        if self.artifact_store.managed:
            _claim(ports, self.artifact_store.port, "artifact_store.port")
        if self.backend_store.kind == "mysql" and self.backend_store.managed:
            _claim(ports, self.backend_store.port, "backend_store.port")
        low, high = self.artifact_store.passive_ports
        taken = {port: what for port, what in ports.items() if low <= port <= high}
        if low <= self.artifact_store.port <= high:
            taken[self.artifact_store.port] = "the FTP control port (artifact_store.port)"
        if taken:
            port = min(taken)
            raise Broken("artifact_store.passive_ports", f"[{low}, {high}] includes port {port}, used by "
                                                         f"{taken[port]}; choose a range apart from the other ports")
        if "oakestra" in self.model_fields_set:
            oakestra_rules(self)
        return self


def _claim(ports: dict[int, str], port: int, what: str) -> None:
    if (why := problem(Port, port)) is not None:
        raise Broken(what, why)
    if port in ports:
        raise Broken("", f"port {port} is used twice: by {ports[port]} and by {what}")
    ports[port] = what


def validate_tenant_id(value: str, where: str = "tenant id") -> str:
    if problem(TenantId, value) is not None:
        raise ConfigError(f"{where}: {value!r} is not a valid tenant id ({TENANT_ID_RULE})")
    return value


# --- the Oakestra section's rules that span several keys ----------------------------------------


def tracking_target(config: StackConfig) -> OakestraTarget:
    """Where the tracking servers run: oakestra.tracking_target, else oakestra.target."""
    o = config.oakestra
    return o.tracking_target if o.tracking_target is not None else o.target


def image(config: StackConfig, key: str) -> str:
    """The full reference Oakestra workers pull for image ``key``: ours prefixed with oakestra.registry."""
    reference = getattr(config.images, key)
    return reference if key == "mysql" else f"{config.oakestra.registry}/{reference}"


def oakestra_rules(config: StackConfig) -> None:
    """What `render` and `push` need beyond each key's own type: raises Broken naming the key and value.

    Run at load time when the file has an oakestra section, and by the renderer for any configuration.
    """
    o = config.oakestra

    def fail(key: str, message: str) -> Broken:
        return Broken(f"oakestra.{key}", message)

    if not OAKESTRA_NAME.fullmatch(o.namespace) or len(o.namespace) > o.name_limit:
        raise fail("namespace", f"{o.namespace!r} must be 1-{o.name_limit} letters or digits")
    if config.backend_store.kind != "mysql":
        raise Broken("backend_store.kind", "Oakestra tracking servers need mysql (a SQLite file does not survive "
                                           f"rescheduling), got {config.backend_store.kind!r}")
    if not o.run_stores:
        for key, host in (("backend_store.host", config.backend_store.host),
                          ("artifact_store.host", config.artifact_store.host)):
            if host in ("localhost", "0.0.0.0") or host.startswith("127."):
                raise Broken(key, f"{host!r} is not reachable from Oakestra workers "
                                  "(oakestra.run_stores is false, so the tracking servers connect to it)")
    tracking = tracking_target(config)
    if not (tracking.cluster and tracking.node):
        key = "tracking_target" if o.tracking_target is not None else "target"
        raise fail(key, "the tracking servers must be pinned to one node, with its cluster: their login "
                        "databases live on a host path of that node (auth_host_path); set "
                        "oakestra.tracking_target: {cluster: ..., node: ...} (the root scheduler picks "
                        "the cluster by name, the cluster's scheduler the node)")

    for key in ("mysql", "artifact_store"):
        store = getattr(o.stores, key)
        if store == OakestraStore():
            continue
        if not o.run_stores:
            raise fail(f"stores.{key}", "applies to the stores application, which run_stores: false does not "
                                        "render; remove it or set run_stores: true")
        placement = o.stores_target or o.target
        if store.volume is not None and not store.target_node:
            raise fail(f"stores.{key}.target_node", "a volume's folder is on one node: name the node the store "
                                                    "runs on (its data stays there)")
        if store.target_node and placement.node and placement.node != store.target_node:
            where = "stores_target" if o.stores_target is not None else "target"
            raise fail(f"stores.{key}.target_node", f"{store.target_node!r} differs from {where}.node "
                                                    f"{placement.node!r}; keep one of them")
        if store.target_node and not placement.cluster:
            raise fail(f"stores.{key}.target_node", "set the node's cluster too, in oakestra.stores_target.cluster "
                                                    "(the root scheduler picks the cluster, the cluster the node)")

    known = {t.id for t in config.tenants}
    slots: dict[int, str] = {}
    listed: set[str] = set()
    for i, entry in enumerate(o.tenants):
        if entry.id not in known:
            raise fail(f"tenants[{i}].id", f"{entry.id!r} is not in tenants[] ({', '.join(sorted(known))})")
        if entry.id in listed:
            raise fail(f"tenants[{i}].id", f"tenant {entry.id!r} has two slots")
        if entry.slot in slots:
            raise fail(f"tenants[{i}].slot", f"slot {entry.slot} is already used by tenant {slots[entry.slot]}")
        slots[entry.slot] = entry.id
        listed.add(entry.id)
    missing = [t.id for t in config.tenants if t.id not in listed]
    if missing:
        raise fail("tenants", f"no slot for tenant(s) {', '.join(missing)}; add "
                              f"{{id: {missing[0]}, slot: N}} with an unused N from 1-254 "
                              "(never reuse the slot of a removed tenant)")
    if o.tracking_host_port_base is not None and not 1 <= o.tracking_host_port_base + max(slots) <= 65535:
        raise fail("tracking_host_port_base", f"{o.tracking_host_port_base} + slot {max(slots)} is not a TCP port")

    names: set[str] = set()
    project_slots: dict[int, str] = {}
    blocks = {o.ip_plan.tracking_block: "ip_plan.tracking_block"}
    if o.run_stores:
        for key in ("stores_block", "ftp_block"):
            block = getattr(o.ip_plan, key)
            if block in blocks:
                raise fail(f"ip_plan.{key}", f"block {block} is also {blocks[block]}")
            blocks[block] = f"ip_plan.{key}"
    for i, project in enumerate(o.projects):
        where = f"projects[{i}]"
        if project.name in RESERVED_APPS:
            raise fail(f"{where}.name", f"{project.name!r} must be a project name ({PROJECT_RULE}, as "
                                        f"for `round`) other than {' or '.join(RESERVED_APPS)}")
        if project.name in names:
            raise fail(f"{where}.name", f"project {project.name!r} is listed twice")
        names.add(project.name)
        if project.tenant not in known:
            raise fail(f"{where}.tenant", f"{project.tenant!r} is not in tenants[]")
        if project.slot < 1 or project.slot in project_slots:
            raise fail(f"{where}.slot", f"expected an unused number from 1, got {project.slot}")
        project_slots[project.slot] = project.name
        block = o.ip_plan.projects_block + project.slot - 1
        if block > 255:
            raise fail(f"{where}.slot", f"slot {project.slot} puts the project outside 10.30.0.0/16 "
                                        f"(projects_block {o.ip_plan.projects_block} + slot - 1 > 255)")
        if block in blocks:
            raise fail(f"{where}.slot", f"its addresses 10.30.{block}.x overlap {blocks[block]}")
        blocks[block] = f"{where}"
    serving = o.ip_plan.serving_block
    if any(project.serve for project in o.projects) and serving in blocks:
        raise fail("ip_plan.serving_block", f"block {serving} is also {blocks[serving]}")


# --- loading -------------------------------------------------------------------------------------


class DuplicateKey(yaml.YAMLError):
    pass


class _UniqueKeyLoader(yaml.SafeLoader):
    """YAML's safe loader, except that a key written twice in one mapping is an error (YAML lets the last one win
    silently, so a typo could undo a setting without a word)."""

    def construct_mapping(self, node, deep=False):
        seen: dict = {}
        for key_node, _ in node.value:
            key = self.construct_object(key_node, deep=True)
            if key in seen:
                raise DuplicateKey(f"key {key!r} appears twice in one mapping (lines {seen[key] + 1} and "
                                   f"{key_node.start_mark.line + 1}); remove one")
            seen[key] = key_node.start_mark.line
        return super().construct_mapping(node, deep=deep)


def load(path: str | Path) -> StackConfig:
    """Read and check a configuration file; raise ConfigError naming the file and key on any problem."""
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise ConfigError(f"{path}: configuration file not found") from None
    except OSError as exc:
        raise ConfigError(f"{path}: cannot read: {exc.strerror}") from None
    except UnicodeDecodeError as exc:
        raise ConfigError(f"{path}: not UTF-8 text (byte {exc.start}: {exc.object[exc.start:exc.start + 1]!r})") \
            from None
    try:
        data = yaml.load(text, Loader=_UniqueKeyLoader)  # noqa: S506 (a SafeLoader)
    except DuplicateKey as exc:
        raise ConfigError(f"{path}: {exc}") from None
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f" (line {mark.line + 1}, column {mark.column + 1})" if mark else ""
        raise ConfigError(f"{path}: not valid YAML{where}: {getattr(exc, 'problem', exc)}") from None
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: expected a mapping of settings at the top level")
    try:
        config = StackConfig.model_validate(data)
    except ValidationError as exc:
        raise ConfigError(f"{path}: {explain(first(exc))}") from None
    except Broken as exc:
        raise ConfigError(f"{path}: {exc}") from None
    update = {"state_dir": _resolve(path, config.state_dir), "secrets_file": _resolve(path, config.secrets_file)}
    return config.model_copy(update=update).located(path)


def _resolve(config_path: Path, value: Path) -> Path:
    return value if value.is_absolute() else (config_path.parent / value).resolve()


def _show(value: Any) -> str:
    if value is None:
        return "nothing"
    return f"{type(value).__name__} {value!r}"


def key_path(loc: tuple) -> str:
    """('tenants', 1, 'id') -> 'tenants[1].id'."""
    text = ""
    for part in loc:
        text += f"[{part}]" if isinstance(part, int) else (f".{part}" if text else str(part))
    return text


def _walk(loc: tuple) -> tuple[Any, Any]:
    """(type at ``loc``, field named by its last key): what a value at that place of the file is read into."""
    current: Any = StackConfig
    field = None
    for part in loc:
        kind = _unwrap(current)
        if isinstance(part, int):
            current = typing.get_args(kind)[0] if typing.get_origin(kind) is list else None
        elif isinstance(kind, type) and issubclass(kind, BaseModel) and part in kind.model_fields:
            field = kind.model_fields[part]
            current = field.annotation
        else:
            return None, None
    return current, field


def _unwrap(annotation: Any) -> Any:
    """The type inside Optional[...] and Annotated[...]."""
    while True:
        if typing.get_origin(annotation) is Annotated:
            annotation = typing.get_args(annotation)[0]
        elif typing.get_origin(annotation) in (typing.Union, type(int | None)):
            annotation = next(a for a in typing.get_args(annotation) if a is not type(None))
        else:
            return annotation


def first(exc: ValidationError) -> dict:
    """The error to report: an unknown key first (it is often the misspelt name of a key reported missing)."""
    errors = exc.errors()
    return next((e for e in errors if e["type"] == "extra_forbidden"), errors[0])


def explain(error: dict) -> str:
    """One pydantic error as ``key: what is wrong / expected``, the form every configuration message has."""
    loc = tuple(error["loc"])
    key = key_path(loc) or "(top level)"
    kind, value = error["type"], error.get("input")
    if kind == RULE_ERROR:
        return f"{key}: {error['msg']}"
    if kind == "extra_forbidden":
        model = _unwrap(_walk(loc[:-1])[0])
        known = ", ".join(model.model_fields) if isinstance(model, type) and issubclass(model, BaseModel) else "?"
        return f"{key}: unknown key (expected one of: {known})"
    if kind == "missing":
        field = _walk(loc)[1]
        return f"{key}: required key is missing ({field.description if field else 'required'})"
    if kind == "literal_error":
        field = _walk(loc)[1]
        choices = typing.get_args(_unwrap(field.annotation)) if field else ()
        return f"{key}: expected one of {', '.join(map(str, choices))}, got {_show(value)}"
    expected = {"int_type": "an integer", "bool_type": "true or false", "string_type": "a non-empty string",
                "string_too_short": "a non-empty string", "list_type": "a list", "model_type": "a mapping",
                "dict_type": "a mapping", "is_instance_of": "a path", "path_type": "a path"}.get(kind)
    if expected:
        return f"{key}: expected {expected}, got {_show(value)}"
    return f"{key}: {error['msg']}, got {_show(value)}"  # a check without a message of ours (a bug to fix here)


# --- documentation -------------------------------------------------------------------------------


def describe(cls: type[BaseModel] = StackConfig, prefix: str = "") -> list[tuple[str, str, str]]:
    """(key, default, description) for every setting, for `flops-mlops config keys` and docs/configuration.md."""
    rows = []
    for name, field in cls.model_fields.items():
        key = f"{prefix}{name}"
        inner = _unwrap(field.annotation)
        if isinstance(inner, type) and issubclass(inner, BaseModel):
            rows.append((key, "", field.description))
            rows.extend(describe(inner, key + "."))
            continue
        if typing.get_origin(inner) is list:
            item = _unwrap(typing.get_args(inner)[0])
            if isinstance(item, type) and issubclass(item, BaseModel):
                rows.append((key, "", field.description))
                rows.extend(describe(item, key + "[]."))
                continue
        rows.append((key, "(required)" if field.is_required() else repr(field.get_default(call_default_factory=True)),
                     field.description))
    return rows


MARKDOWN_HEAD = """\
<!-- Generated from the configuration model (deploy/flops_mlops/config.py); do not edit by hand. Regenerate with
     .venv/bin/flops-mlops config keys --markdown > docs/configuration.md
     tests/unit/test_config.py fails when this file differs from what the model generates. -->

# Configuration keys

Every key of a stack configuration (`configs/*.yaml`), its default and its meaning, as `flops-mlops config keys`
prints them. Relative paths are resolved against the configuration file's folder. Values are checked strictly when
the file is loaded (`flops-mlops --config FILE config check`): unknown keys are refused, a number is never read from
a string (nor true from 1), and every rule of every target holds, the `oakestra` section's included (they apply
when the file has that section). A problem is reported with the file, key and expectation (exit 2), for example
`configs/local.yaml: tracking.base_port: expected an integer, got str 'abc'`.

| key | default | meaning |
| --- | --- | --- |
"""


def markdown() -> str:
    """docs/configuration.md: every key with its default (as YAML) and its description."""
    rows = [f"| `{key}` | {_yaml_default(key)} | {text} |" for key, _, text in describe()]
    return MARKDOWN_HEAD + "\n".join(rows) + "\n"


def _yaml_default(key: str) -> str:
    """(required), or the default in YAML (flow style), of the setting ``key``; empty for most sections."""
    current, field = _walk(tuple(0 if part == "[]" else part for part in key.replace("[]", ".[]").split(".")))
    inner = _unwrap(current)
    if typing.get_origin(inner) is list:
        inner = _unwrap(typing.get_args(inner)[0])
    if isinstance(inner, type) and issubclass(inner, BaseModel):
        default = None if field.is_required() else field.get_default(call_default_factory=True)
        required = any(f.is_required() for f in inner.model_fields.values())
        # A section whose keys are all required when it is written: its default as a whole.
        return f"`{json.dumps(default.model_dump())}`" if required and isinstance(default, BaseModel) else ""
    if field.is_required():
        return "(required)"
    return f"`{json.dumps(field.get_default(call_default_factory=True))}`"
