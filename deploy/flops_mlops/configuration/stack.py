"""A whole stack (``StackConfig``): its name, folders, tenants, and every section, with the rules that span
sections (ports used twice, the passive range); the Oakestra rules when the file has that section."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

from pydantic import AfterValidator, PrivateAttr, model_validator

from .fl_project import Compose, project_problem
from .oakestra import OAKESTRA_NAME, RESERVED_APPS, Oakestra, OakestraStore, OakestraTarget
from .schema import Broken, ConfigError, Model, doc, rule
from .stores import ArtifactStore, BackendStore
from .tracking import Tenant, Tracking
from .values import PROJECT_RULE, TENANT_ID_RULE, FilePath, Image, Port, StackName, TenantId, problem


def _at_least_one(value: list) -> list:
    if not value:
        raise rule("expected at least one tenant")
    return value


Tenants = Annotated[list[Tenant], AfterValidator(_at_least_one)]


class Images(Model):
    """Container images of compose and Oakestra, pinned by tag (never latest) or digest. Ours are built from
    deploy/images (`docker compose build`); Oakestra prefixes a reference with oakestra.registry unless it names
    its registry itself (docker.io/..., registry.example:5000/...)."""

    tracking_server: Image = doc("our tracking server image", "flops-mlops/tracking-server:0.1.0")
    artifact_store: Image = doc("our vsftpd artifact store image", "flops-mlops/artifact-store:0.1.0")
    fl_actor: Image = doc("our FL aggregator/learner image", "flops-mlops/fl-actor:0.1.0")
    model_server: Image = doc("our model server image (MLflow's scoring server; `serve` profile, build-model-image)",
                              "flops-mlops/model-server:0.1.0")
    mysql: Image = doc("our backend store image: Debian's MariaDB 10.11 behind the official MySQL image's "
                       "MYSQL_* contract (deploy/images/backend-store). A MySQL 8 image such as "
                       "docker.io/library/mysql:8.4.6 keeps that contract, but no test runs it",
                       "flops-mlops/backend-store:0.1.0")


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
    compose: Compose = doc("Docker Compose rendering (`render --target compose`): its FL project", Compose())
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

    @property
    def tracking_scheme(self) -> str:
        """https with tracking.tls, else http."""
        return "https" if self.tracking.tls else "http"

    def tracking_uri(self, tenant: Tenant) -> str:
        return f"{self.tracking_scheme}://{self.tracking.public_host}:{self.tracking_port(tenant)}"

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
        longest = max((t.id for t in self.tenants), key=len, default="")
        if self.tracking.os_user and len(self.tracking.os_user) + 1 + len(longest) > 32:
            raise Broken("tracking.os_user", f"{self.tracking.os_user!r} is too long: tenant {longest!r}'s servers run "
                                             f"as {self.tracking.os_user}-{longest}, over the 32 characters of an "
                                             "account name")
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
        project_problem(self.compose.fl, "compose.fl")
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


# --- the Oakestra section's rules that span several sections ------------------------------------


def image(config: StackConfig, key: str) -> str:
    """The full reference Oakestra workers pull for image ``key``: prefixed with oakestra.registry, unless its
    first part names a registry (a host with a '.' or ':', or localhost), as Docker reads references."""
    reference = getattr(config.images, key)
    first, _, rest = reference.partition("/")
    if rest and ("." in first or ":" in first or first == "localhost"):
        return reference
    return f"{config.oakestra.registry}/{reference}"


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
        project_problem(project, f"oakestra.{where}")
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


