"""The stores' sections of the configuration: ``backend_store`` (metadata: SQLite or MySQL) and
``artifact_store`` (files: an FTP server, one chrooted user per tenant)."""

from __future__ import annotations

from typing import Annotated, Literal

from pydantic import AfterValidator, model_validator

from .schema import Broken, Model, doc, rule
from .values import AccountName, Host, IPv4, Port, Seconds


def _min_max(value: list[int]) -> list[int]:
    if len(value) != 2 or value[0] > value[1]:
        raise rule(f"expected [min, max] with min <= max, got {value}")
    return value



PortRange = Annotated[list[Port], AfterValidator(_min_max)]


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

