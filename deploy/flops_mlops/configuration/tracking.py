"""The tracking servers' section (``tracking``) and the tenants (``tenants[]``), each with its own tracking
server, database and database user, FTP user and folder."""

from __future__ import annotations

from .schema import Model, doc
from .values import TENANT_ID_RULE, AllowedHost, Host, Port, Positive, Seconds, ServiceAccount, TenantId


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

