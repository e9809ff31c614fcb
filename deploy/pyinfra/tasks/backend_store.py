"""The backend store role: MariaDB with one database (utf8mb4, binary NO PAD collation) and one user per tenant.

With systemd the Debian package's server runs, with our settings as a drop-in; without systemd a private
server with its data under flops_root is started by start-stop-daemon. Tenants are provisioned by an SQL file
(mode 0600, so passwords never appear in a command line) that runs when it changed or a database is missing:
it needs a running server, so nothing about the server is read while the deploy is planned. Its tenant
statements are the ones every target runs (flops_mlops.stores.tenant_db, one template).
"""

from __future__ import annotations

from pyinfra import host
from pyinfra.api import deploy
from pyinfra.facts.files import Directory
from pyinfra.facts.server import Command
from pyinfra.operations import apt, files, server

from flops_mlops.stores import tenant_db

from . import services, settings
from .settings import TEMPLATES, TRIM, HostSettings

SERVER = "/usr/sbin/mariadbd"


class Layout:
    """Where the server keeps its settings, data and socket on this host."""

    def __init__(self, s: HostSettings):
        self.private = not s.systemd
        if self.private:
            self.cnf = f"{s.etc}/my.cnf"
            self.datadir = f"{s.data}/mysql"
            self.rundir = f"{s.run}/mysql"
            self.socket = f"{self.rundir}/mysqld.sock"
        else:
            self.cnf = f"/etc/mysql/mariadb.conf.d/90-flops-mlops-{s.config.name}.cnf"
            self.datadir = None
            self.rundir = None
            self.socket = "/run/mysqld/mysqld.sock"
        self.client = f"mysql --defaults-file={self.cnf}"


def cnf_data(s: HostSettings, layout: Layout) -> dict:
    """What my.cnf.j2 is rendered with."""
    b = s.config.backend_store
    return {"stack": s.config.name, "port": b.port, "bind_address": b.host, "datadir": layout.datadir,
            "socket": layout.socket, "server_pid_file": f"{layout.rundir}/mariadbd.pid"}


def tenants_data(s: HostSettings) -> dict:
    """What tenants.sql.j2 is rendered with: the admin account (a validated name, its password as an SQL
    literal) and the tenants' statements from the one template."""
    config, secrets = s.config, s.secrets
    return {"stack": config.name, "admin_user": config.backend_store.admin_user,
            "admin_password": tenant_db.sql_literal(secrets.mysql_admin_password),
            "tenants_sql": tenant_db.render(tenant_db.with_secrets(config, secrets))}


def service(s: HostSettings) -> services.Service:
    layout = Layout(s)
    return services.Service(
        name=f"{s.service_prefix}-mariadb",
        description=f"MariaDB backend store of FLOps MLOps stack {s.config.name}",
        argv=[SERVER, f"--defaults-file={layout.cnf}", "--user=mysql"],
        ready=f"mysqladmin --defaults-file={layout.cnf} ping >/dev/null 2>&1",
        timeout=120,
    )


@deploy("FLOps backend store (MariaDB)")
def backend_store() -> None:
    s = settings.current()
    config = s.config
    settings.require_kind(config, "backend_store.kind", config.backend_store.kind, "mysql")
    layout = Layout(s)
    if s.install_packages:
        apt.packages(name="Install MariaDB", packages=["mariadb-server", "mariadb-client"],
                     update=True, cache_time=3600, no_recommends=True)
    files.directory(name="Settings folder", path=s.etc, mode="755")

    cnf = files.template(name="MariaDB settings", src=str(TEMPLATES / "my.cnf.j2"), dest=layout.cnf, mode="644",
                         jinja_env_kwargs=dict(TRIM), **cnf_data(s, layout))

    if layout.private:
        for path, owner, mode in ((s.data, "root", "755"), (layout.datadir, "mysql", "750"),
                                  (s.run, "root", "755"), (layout.rundir, "mysql", "755"),
                                  (s.logs, "root", "755")):
            files.directory(name=f"Folder {path}", path=path, user=owner, group=owner, mode=mode)
        # Read while planning: the data folder either exists before this run or is created by it.
        if not host.get_fact(Directory, path=f"{layout.datadir}/mysql"):
            server.shell(name="Create the MariaDB system tables",
                         commands=[f"mariadb-install-db --defaults-file={layout.cnf} --user=mysql "
                                   "--skip-test-db --auth-root-authentication-method=socket >/dev/null"])
        services.ensure_running(s, service(s), triggers=[cnf])
    else:
        services.ensure_running_packaged("mariadb", triggers=[cnf],
                                         ready=f"mysqladmin --defaults-file={layout.cnf} ping >/dev/null 2>&1")

    sql = files.template(name="Tenants' databases and users (SQL, mode 0600)", src=str(TEMPLATES / "tenants.sql.j2"),
                         dest=f"{s.etc}/tenants.sql", mode="600", jinja_env_kwargs=dict(TRIM), **tenants_data(s))
    names = ", ".join(f"'{t.database}'" for t in config.tenants)  # validated ids: [a-z][a-z0-9]*
    count_query = f"SELECT COUNT(*) FROM information_schema.SCHEMATA WHERE SCHEMA_NAME IN ({names})"

    def databases_missing() -> bool:
        found = host.get_fact(Command, f'{layout.client} -N -B -e "{count_query}"')
        return str(found).strip() != str(len(config.tenants))

    server.shell(name="Create or update tenants' databases and users",
                 commands=[f"{layout.client} < {s.etc}/tenants.sql"],
                 _if=lambda: sql.did_change() or databases_missing())


@deploy("Stop FLOps backend store")
def stop_backend_store() -> None:
    s = settings.current()
    if s.systemd:
        return  # the packaged server may serve others too: leave it running
    services.ensure_stopped(s, service(s))
