"""The stores' sections of the configuration: ``backend_store`` (metadata: SQLite or MySQL) and
``artifact_store`` (files: an FTP server, one chrooted user per tenant)."""

from __future__ import annotations

from typing import Annotated, Literal

from pydantic import AfterValidator, model_validator

from .schema import Broken, Model, doc, rule
from .values import AccountName, Host, IPv4, Port, Seconds, Size


def _min_max(value: list[int]) -> list[int]:
    if len(value) != 2 or value[0] > value[1]:
        raise rule(f"expected [min, max] with min <= max, got {value}")
    return value



PortRange = Annotated[list[Port], AfterValidator(_min_max)]


class BackendStore(Model):
    """Where MLflow keeps metadata (experiments, runs, params, metrics, registry)."""

    kind: Literal["sqlite", "mysql"] = doc(
        "sqlite: one SQLite file per tenant in the state dir (only Python needed); "
        "mysql: a MySQL/MariaDB server, one user and two databases per tenant (tracking, and the server's users and "
        "grants)", "sqlite")
    managed: bool = doc(
        "mysql only: true starts a private MariaDB/MySQL server from this machine's binaries with its data "
        "in the state dir; false uses an existing server reachable at host:port", True)
    host: Host = doc("mysql only: address of the server (also the bind address when managed)", "127.0.0.1")
    port: Port = doc("mysql only: TCP port of the server", 3306)
    admin_user: AccountName = doc(
        "mysql only: account that creates tenants' databases and users; its password is "
        "FLOPS_MYSQL_ADMIN_PASSWORD in the secrets file", "root")
    tls: bool = doc(
        "mysql only: TLS between the tracking servers (and our other MySQL clients) and the server, which they "
        "verify against the deployment's CA; the tenants' DB users REQUIRE SSL. `secrets init` (or `up`) makes "
        "the CA and the server's certificate next to the secrets file (<secrets_file>.ca.crt, .mysql-tls.crt "
        "and their .key files, mode 0600). Native `up`, compose and pyinfra (Oakestra runs MySQL without "
        "TLS still); false turns it off, and `status` warns while it is off", True)


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
    quota: Size = doc(
        "most bytes each tenant may keep in its folder of the store, for example 10GB, 500MB or 20GiB; 0 or none: "
        "no limit. An upload through the tracking server beyond it is refused (HTTP 507, naming the quota and "
        "the usage); `status` shows each tenant's usage", 10 * 10**9)
    tls: bool = doc(
        "vsftpd only: explicit FTPS (AUTH TLS, then PROT P) between the tracking servers and the store, and plain "
        "FTP logins refused (native, compose, pyinfra and Oakestra); `secrets init` makes the deployment's CA "
        "(<secrets_file>.ca.crt) and the store's certificate and key signed by it (<secrets_file>.ftp-tls.crt "
        "and .key, mode 0600, for artifact_store.host, compose's artifact-store, loopback and, with "
        "oakestra.run_stores, each tenant's FTP service IP); the servers verify chain and host name against the CA. "
        "configs/compose.yaml and configs/oakestra.yaml turn it on", False)

    @model_validator(mode="after")
    def _tls_needs_vsftpd(self) -> ArtifactStore:
        if self.tls and self.kind != "vsftpd":
            raise Broken("artifact_store.tls", f"FTPS needs kind vsftpd (the embedded server speaks plain FTP "
                                               f"only), got kind {self.kind!r}")
        return self

