"""The tracking servers' section (``tracking``) and the tenants (``tenants[]``), each with its own tracking
server, database and database user, FTP user and folder."""

from __future__ import annotations

from pydantic import model_validator

from .schema import Broken, Model, doc
from .values import TENANT_ID_RULE, AllowedHost, FilePath, Host, Port, Positive, Seconds, ServiceAccount, TenantId


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
        "the stack's account when flops-mlops is started as root (required then: no service stays root): each "
        "tenant's tracking and model servers run as <os_user>-<tenant>, created when missing, and the embedded "
        "FTP store as os_user itself; ignored otherwise, when everything runs as the invoking user", None)
    tls: bool = doc(
        "HTTPS on every tracking server (native `up`, compose, `provision`'s systemd hosts and Oakestra; on in "
        "configs/native.yaml, compose.yaml and oakestra.yaml): `secrets init` makes the deployment's CA and one "
        "certificate per tenant server (<secrets_file>.ca.crt, .tracking-<tenant>.crt and .key, mode 0600) for "
        "public_host, host, allowed_hosts, its compose service name, localhost, 127.0.0.1 and, with an oakestra "
        "section, the tenant's service IP (`provision` adds the tracking host's inventory name and address); our "
        "clients (round, the aggregator, serve, the model server, status, user) verify it against that CA. "
        "`secrets renew-certificates` replaces them. false serves plain HTTP, and `status` warns while it is off",
        False)
    tls_certificate: FilePath | None = doc(
        "with tls: your own server certificate (PEM, for every tenant's server) instead of ours; needs tls_key",
        None)
    tls_key: FilePath | None = doc("with tls: the private key of tls_certificate (PEM, a file of mode 0600)", None)
    tls_ca: FilePath | None = doc(
        "with tls_certificate: the CA certificate our clients verify it against (default: the system's store)",
        None)

    @model_validator(mode="after")
    def _own_certificate(self) -> Tracking:
        if (self.tls_certificate is None) != (self.tls_key is None):
            given, missing = ("tls_certificate", "tls_key") if self.tls_key is None else ("tls_key", "tls_certificate")
            raise Broken(f"tracking.{missing}", f"required with tracking.{given} (your own certificate and its key "
                                                "come together)")
        own = [key for key in ("tls_certificate", "tls_key", "tls_ca") if getattr(self, key) is not None]
        if own and not self.tls:
            raise Broken(f"tracking.{own[0]}", f"set to {str(getattr(self, own[0]))!r}, but tracking.tls is false "
                                               "(it would be ignored); set tracking.tls: true")
        if self.tls_ca is not None and self.tls_certificate is None:
            raise Broken("tracking.tls_ca", "only with tracking.tls_certificate (our own certificates are "
                                            "verified against the deployment's CA)")
        return self


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

