"""The backend store role: MariaDB with one database (utf8mb4, binary NO PAD collation) and one user per tenant.

The Debian package's server runs, with our settings as a drop-in (port, bind address, character set).
Tenants are provisioned by an SQL file (mode 0600, so passwords never appear in a command line) that runs when
it changed or a database is missing: it needs a running server, so nothing about the server is read while the
deploy is planned. Its tenant statements are the ones every target runs (flops_mlops.stores.tenant_db, one
template).

With backend_store.tls (the default) the server speaks TLS with the deployment's certificate, signed by its CA
(flops_mlops.configuration.certificates: made on this machine beside the secrets file, for the configured host,
loopback and the address other hosts reach this one at), copied to the host for the mysql account only; the
tenants' users REQUIRE SSL.
"""

from __future__ import annotations

from flops_mlops.configuration import certificates
from flops_mlops.stores import tenant_db
from pyinfra import host
from pyinfra.api import deploy
from pyinfra.facts.server import Command
from pyinfra.operations import apt, files, server, systemd

from . import services, settings
from .settings import TEMPLATES, TRIM, HostSettings

PACKAGED_SERVICE = "mariadb"  # the Debian package's unit
SOCKET = "/run/mysqld/mysqld.sock"


def cnf_path(s: HostSettings) -> str:
    """Our drop-in; the client reads it too (its [client] socket)."""
    return f"/etc/mysql/mariadb.conf.d/90-flops-mlops-{s.config.name}.cnf"


def tls_dir(s: HostSettings) -> str:
    """The server's certificate, key and CA certificate (mode 0600, the mysql account's)."""
    return f"/etc/mysql/flops-mlops-{s.config.name}-tls"


TLS_FILES = ("ca.crt", "server.crt", "server.key")  # in the order of certificates.mysql_files


def cnf_data(s: HostSettings) -> dict:
    """What my.cnf.j2 is rendered with."""
    b = s.config.backend_store
    tls = None
    if certificates.mysql_tls(s.config):
        tls = dict(zip(("ca", "cert", "key"), (f"{tls_dir(s)}/{name}" for name in TLS_FILES)))
    return {"stack": s.config.name, "port": b.port, "bind_address": b.host, "socket": SOCKET, "tls": tls}


def tls_files(s: HostSettings) -> list:
    """With backend_store.tls: the certificate (made or extended here first) and key on the host."""
    if not certificates.mysql_tls(s.config):
        return []
    certificates.make_mysql_certificate(s.config, extra_hosts=[settings.peer_address("backend_store",
                                                                                     s.config.backend_store.host)]
                                        + settings.reachable_at())
    files.directory(name="TLS folder (the mysql account's, 0700)", path=tls_dir(s), user="mysql", group="mysql",
                    mode="700")
    return [files.put(name=f"TLS file {name} (mode 0600)", src=str(source), dest=f"{tls_dir(s)}/{name}",
                      user="mysql", group="mysql", mode="600")
            for source, name in zip(certificates.mysql_files(s.config), TLS_FILES)]


def tenants_data(s: HostSettings) -> dict:
    """What tenants.sql.j2 is rendered with: the admin account (a validated name, its password as an SQL
    literal) and the tenants' statements from the one template."""
    config, secrets = s.config, s.secrets
    return {"stack": config.name, "admin_user": config.backend_store.admin_user,
            "admin_password": tenant_db.sql_literal(secrets.mysql_admin_password),
            "tenants_sql": tenant_db.render(tenant_db.with_secrets(config, secrets))}


@deploy("FLOps backend store (MariaDB)")
def backend_store() -> None:
    s = settings.current()
    config = s.config
    settings.require_kind(config, "backend_store.kind", config.backend_store.kind, "mysql")
    if s.install_packages:
        apt.packages(name="Install MariaDB", packages=["mariadb-server", "mariadb-client"],
                     update=True, cache_time=3600, no_recommends=True)
    # The package enables socket activation: at boot that starts the server on the socket unit's port (3306)
    # and ignores ours. The server starts as a service of its own instead.
    systemd.service(name="MariaDB without socket activation", service=f"{PACKAGED_SERVICE}.socket",
                    running=False, enabled=False)
    files.directory(name="Settings folder", path=s.etc, mode="755")
    client = f"mysql --defaults-file={cnf_path(s)}"
    tls = tls_files(s)
    cnf = files.template(name="MariaDB settings", src=str(TEMPLATES / "my.cnf.j2"), dest=cnf_path(s), mode="644",
                         jinja_env_kwargs=dict(TRIM), **cnf_data(s))
    services.ensure_running_packaged(PACKAGED_SERVICE, triggers=[cnf, *tls],
                                     ready=f"mysqladmin --defaults-file={cnf_path(s)} ping >/dev/null 2>&1")

    sql = files.template(name="Tenants' databases and users (SQL, mode 0600)", src=str(TEMPLATES / "tenants.sql.j2"),
                         dest=f"{s.etc}/tenants.sql", mode="600", jinja_env_kwargs=dict(TRIM), **tenants_data(s))
    names = ", ".join(f"'{t.database}'" for t in config.tenants)  # validated ids: [a-z][a-z0-9]*
    count_query = f"SELECT COUNT(*) FROM information_schema.SCHEMATA WHERE SCHEMA_NAME IN ({names})"

    def databases_missing() -> bool:
        found = host.get_fact(Command, f'{client} -N -B -e "{count_query}"')
        return str(found).strip() != str(len(config.tenants))

    server.shell(name="Create or update tenants' databases and users",
                 commands=[f"{client} < {s.etc}/tenants.sql"],
                 _if=lambda: sql.did_change() or databases_missing())
