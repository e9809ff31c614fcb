"""The ``oakestra`` section: SLA rendering (`flops-mlops render`) and deployment (`push` / `undeploy`). Its rules
that span several sections are in stack.py (``oakestra_rules``)."""

from __future__ import annotations

import ipaddress
import re
from typing import Annotated

from pydantic import AfterValidator, Field, StrictInt, StrictStr

from .fl_project import Amount, FLProject
from .schema import Model, doc, rule
from .values import HostPath, Port, ProjectName, TenantId, Text, between, explained


def _unprivileged_min_max(value: list[int]) -> list[int]:
    low, high = (value + [0, 0])[:2]
    if len(value) != 2 or not 1024 <= low <= high <= 65535:
        raise rule(f"expected [min, max] within 1024-65535, got {value}")
    return value



SERVICE_NETWORK = ipaddress.IPv4Network("10.30.0.0/16")


def service_ip(block: int, host: int) -> str:
    """The service IP 10.30.<block>.<host> (addresses.rr_ip)."""
    return str(SERVICE_NETWORK.network_address + block * 256 + host)


OakestraPortRange = Annotated[list[StrictInt], AfterValidator(_unprivileged_min_max)]
Block = between(0, 255)
TenantSlot = between(1, 254)
NameLimit = Annotated[StrictInt, Field(ge=1, le=30),
                      explained("expected 10 (releases up to v0.4.204) or 30, got {value!r}")]
Registry = Annotated[Text, Field(pattern=r"^[a-z0-9]([a-z0-9.-]*[a-z0-9])?(:[0-9]{1,5})?(/[a-z0-9][a-z0-9._-]*)*$"),
                     explained("{value!r} is not a registry host[:port][/path]")]
OAKESTRA_NAME = re.compile(r"^[A-Za-z0-9]+$")  # application and service names: letters and digits only
RESERVED_APPS = ("tracking", "stores", "serving")  # application names of our own; no project may take them


class OakestraResources(Model):
    """What one Oakestra service asks of its worker (SLA integers; all three keys are required when written)."""

    memory: Amount = doc("memory in MB")
    vcpus: Amount = doc("virtual CPUs")
    storage: Amount = doc("disk in MB (0: no requirement)")


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


class OakestraProject(FLProject):
    """An FL project: one Oakestra application with an aggregator and `learners` learner services (hierarchical: a
    root aggregator, and per cluster a cluster aggregator and `learners` learners pinned to that cluster)."""

    name: ProjectName = doc("project name = application name = MLflow experiment (letters and digits)")
    tenant: TenantId = doc("the tenant whose tracking server the aggregator logs to")
    slot: StrictInt = doc("stable number from 1: the project's service IPs are 10.30.<projects_block+slot-1>.x")
    serve: bool = doc("also serve the project's champion: a model server in the serving application", False)
    ml_repo: Text | None = doc(
        "the project's ML repository (FLOps' contract): a git URL, or a folder (relative to this file). Its "
        "services run <registry>/flops-mlops/fl-<project>:<tag>, built by `flops-mlops build-fl-image`, the tag "
        "being the repository's commit or a hash of the folder's files; none: images.fl_actor, which trains the "
        "scikit-learn example", None)
    revision: Text | None = doc("branch, tag or commit of a git ml_repo (a full 40-digit commit names the image "
                                "without cloning; anything else is resolved by cloning at render time)", None)
    data_host_path: HostPath | None = doc(
        "folder on the learners' nodes: learner i mounts <data_host_path>/learner-<i> read-only as its "
        "FLOPS_DATA_DIR (Oakestra's host-path CSI driver); none: no data folder", None)


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
    registry: Registry = doc("registry host[/path] the workers pull images.* from (prefixed to each image that "
                             "names no registry of its own)", "docker.io")
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

    def tenant_ips(self, tenant_id: str) -> tuple[str, str] | None:
        """(tracking server, FTP server) service IPs of the tenant's slot; None for a tenant without one."""
        slots = {entry.id: entry.slot for entry in self.tenants}
        if tenant_id not in slots:
            return None
        return (service_ip(self.ip_plan.tracking_block, slots[tenant_id]),
                service_ip(self.ip_plan.ftp_block, slots[tenant_id]))
