"""The MySQL/MariaDB backend store: a private server from this machine's binaries, and tenant provisioning.

Each tenant gets its own database (utf8mb4 with a binary NO PAD collation, so keys that differ only in
case do not collide) and its own user with privileges on that database only: the statements of the one SQL
template every target runs (stores/tenant_db.py, stores/templates/tenants.sql.j2).

With backend_store.tls the server speaks TLS with the deployment's certificate (configuration/certificates.py),
the tenants' users REQUIRE SSL, and every client of ours verifies the server against the deployment's CA and
host name. pymysql verifies only when the CA reaches it in its ``ssl`` dict: through SQLAlchemy that is the
URI's ``ssl_ca`` (with ``ssl_check_hostname``); its ``ssl_ca`` keyword alone (MLflow's MLFLOW_MYSQL_SSL_CA)
leaves verification off.
"""

from __future__ import annotations

import os
import pwd
import shutil
import ssl
import subprocess
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import quote

import pymysql

from ..configuration import certificates
from ..configuration.schema import ConfigError
from ..configuration.secrets import Secrets
from ..configuration.stack import StackConfig
from ..configuration.tracking import Tenant
from ..processes import SERVICE_PATH, ManagedProcess, StackError, can_traverse, open_log, private_dir, wait_until
from . import tenant_db

SERVER_NAMES = ("mariadbd", "mysqld")


def tenant_uri(config: StackConfig, tenant: Tenant, password: str, ca: Path | None = None, auth: bool = False) -> str:
    """The tenant's tracking database, or (``auth``) its auth database <database>_auth (tracking/auth_store.py); with
    backend_store.tls it verifies the server against ``ca`` (default: the deployment's CA certificate beside the
    secrets file) and the server's name."""
    b = config.backend_store
    database = tenant_db.TenantDB.of(tenant, password).auth_database if auth else tenant.database
    uri = (f"mysql+pymysql://{tenant.db_user}:{quote(password, safe='')}@{b.host}:{b.port}/"
           f"{database}?charset=utf8mb4")
    if certificates.mysql_tls(config):
        ca = ca or certificates.ca_certificate_path(config)
        uri += f"&ssl_ca={quote(str(ca), safe='/')}&ssl_check_hostname=true"
    return uri


def verified_ssl(ca: Path | str) -> ssl.SSLContext:
    """A client TLS context that accepts only a server certificate from ``ca`` for the host name it dialled."""
    context = ssl.create_default_context(cafile=str(ca))
    context.check_hostname = True
    context.verify_mode = ssl.CERT_REQUIRED
    return context


@dataclass(frozen=True)
class AdminConnection:
    """How to reach the server as the account that provisions tenants."""

    host: str
    port: int
    user: str
    password: str
    unix_socket: str | None = None
    ca: Path | None = None  # over TCP: verify the server against this CA certificate (backend_store.tls)

    def connect(self, password: str | None = None, database: str | None = None) -> pymysql.Connection:
        kwargs = {"unix_socket": self.unix_socket} if self.unix_socket else {"host": self.host, "port": self.port}
        if self.ca is not None and not self.unix_socket:
            kwargs["ssl"] = verified_ssl(self.ca)
        return pymysql.connect(user=self.user, password=self.password if password is None else password,
                               database=database, connect_timeout=5, autocommit=True, **kwargs)


def provision_tenants(admin: AdminConnection, config: StackConfig, secrets: Secrets) -> None:
    """Create (or bring in line) each tenant's database and user; safe to run again."""
    where = admin.unix_socket or f"{admin.host}:{admin.port}"
    try:
        _provision(admin, config, secrets)
    except pymysql.err.OperationalError as exc:
        hint = ""
        if exc.args and exc.args[0] == 1045:
            hint = (f"; FLOPS_MYSQL_ADMIN_PASSWORD in {secrets.path} is not the password this server was set up "
                    "with (after `secrets init --force`, the old one is in the .env backup it made)")
        raise StackError(f"backend store {where}: cannot provision tenants as {admin.user}: "
                         f"{exc.args[-1]}{hint}") from None
    except pymysql.err.MySQLError as exc:
        raise StackError(f"backend store {where}: provisioning tenants failed: {exc.args[-1]}") from None


def _provision(admin: AdminConnection, config: StackConfig, secrets: Secrets) -> None:
    sql = tenant_db.render(tenant_db.with_secrets(config, secrets))
    with admin.connect() as conn, conn.cursor() as cur:
        for statement in tenant_db.statements(sql):
            cur.execute(statement)  # no parameters: pymysql sends the rendered statement as it is


def find_server_binary() -> str | None:
    for name in SERVER_NAMES:
        found = shutil.which(name, path=SERVICE_PATH)
        if found:
            return found
    return None


class ManagedMySQL:
    """A private MariaDB (or MySQL) server with its data under ``<state_dir>/mysql``."""

    def __init__(self, config: StackConfig, secrets: Secrets):
        self.config = config
        self.secrets = secrets
        self.home = config.state_dir / "mysql"
        self.datadir = self.home / "data"
        self.socket = self.home / "mysqld.sock"
        self.process = ManagedProcess("backend-store", config.state_dir)

    def check_binaries(self) -> str:
        binary = find_server_binary()
        if binary is None:
            raise ConfigError(
                f"{self.config.source}: backend_store: kind mysql with managed: true needs a MariaDB or MySQL "
                f"server binary ({' or '.join(SERVER_NAMES)}), and none is installed; on Debian: "
                "apt-get install mariadb-server (or set managed: false and point host/port at a running server)")
        return binary

    @property
    def admin(self) -> AdminConnection:
        return AdminConnection(self.config.backend_store.host, self.config.backend_store.port, "root",
                               self.secrets.mysql_admin_password, unix_socket=str(self.socket))

    def start(self, progress: Callable[[str], None] | None = None) -> None:
        """Start and wait until it accepts connections (``progress``: see processes.wait_until)."""
        binary = self.check_binaries()
        first_start = not (self.datadir / "mysql").is_dir()
        if first_start:
            self._initialize(binary)
        for folder in (self.home, self.datadir):  # closed to others, data dirs of older releases too
            os.chmod(folder, 0o700)
        b = self.config.backend_store
        argv = [binary, "--no-defaults", f"--datadir={self.datadir}", f"--socket={self.socket}",
                f"--port={b.port}", f"--bind-address={b.host}", f"--pid-file={self.home / 'mysqld.pid'}",
                "--skip-name-resolve", "--character-set-server=utf8mb4",
                # Small-machine tuning: the metadata of a few tenants fits easily.
                "--innodb-buffer-pool-size=64M", "--max-connections=100", "--performance-schema=OFF"]
        argv += self._tls_options()
        if os.geteuid() == 0:
            argv.append(f"--user={self._run_user()}")
        self.process.start(argv, env=_plain_env())
        wait_until(self._accepts_connections, self.process, "backend store (MySQL) did not come up", 120,
                   progress=progress, waiting_for=f"backend store (MySQL/MariaDB, {b.host}:{b.port})")
        self._secure_accounts()

    def _tls_options(self) -> list[str]:
        """With backend_store.tls: the server's TLS options, its certificate and key copied into ``<home>/tls``
        (mode 0600, owned by the account the server runs as, which may not reach the secrets file's folder).
        The certificates are made first when missing (an older deployment's secrets)."""
        if not certificates.mysql_tls(self.config):
            return []
        certificates.make_mysql_certificate(self.config)
        folder = self.home / "tls"
        private_dir(folder)
        owner = pwd.getpwnam(self._run_user()) if os.geteuid() == 0 else None
        copies = []
        for source, name in zip(certificates.mysql_files(self.config), ("ca.crt", "server.crt", "server.key")):
            target = folder / name
            target.unlink(missing_ok=True)
            fd = os.open(target, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
            with os.fdopen(fd, "wb") as handle:
                handle.write(source.read_bytes())
            if owner is not None:
                os.chown(target, owner.pw_uid, owner.pw_gid)
            copies.append(target)
        if owner is not None:
            os.chown(folder, owner.pw_uid, owner.pw_gid)
        ca, crt, key = copies
        return [f"--ssl-ca={ca}", f"--ssl-cert={crt}", f"--ssl-key={key}", "--tls-version=TLSv1.2,TLSv1.3"]

    def _secure_accounts(self) -> None:
        """Give root its password and drop every other passwordless account, if that is not done yet.

        A new data dir has root without a password on localhost, 127.0.0.1, ::1 and the host name, and
        anonymous accounts that would shadow tenant users. Checked on every start, so a first start that was
        interrupted half-way is completed by the next one.
        """
        try:
            conn = self.admin.connect(password="")
        except pymysql.err.OperationalError as exc:
            if exc.args and exc.args[0] == 1045:  # root already has a password
                return
            raise StackError(f"backend store: cannot connect to {self.socket}: {exc.args[-1]}") from None
        with conn, conn.cursor() as cur:
            cur.execute("ALTER USER 'root'@'localhost' IDENTIFIED BY %s", (self.secrets.mysql_admin_password,))
            cur.execute("SELECT User, Host FROM mysql.user WHERE User = '' OR (User = 'root' AND Host <> 'localhost')")
            for user, host in cur.fetchall():
                cur.execute("DROP USER %s@%s", (user, host))

    def _accepts_connections(self) -> bool:
        if not self.socket.exists():
            return False
        for password in (self.secrets.mysql_admin_password, ""):
            try:
                self.admin.connect(password=password).close()
                return True
            except pymysql.err.OperationalError as exc:
                if exc.args and exc.args[0] == 1045:  # access denied: up, but the other password
                    continue
                return False
        return True

    def _run_user(self) -> str:
        """The unprivileged account to run the server as (mysql), or root if it cannot reach the datadir."""
        for name in ("mysql",):
            try:
                account = pwd.getpwnam(name)
            except KeyError:
                continue
            if can_traverse(self.home, account):
                return name
        return "root"

    def _initialize(self, binary: str) -> None:
        private_dir(self.home)
        private_dir(self.datadir)
        log = self.process.log_file
        log.parent.mkdir(parents=True, exist_ok=True)
        user = self._run_user() if os.geteuid() == 0 else None
        if user:
            info = pwd.getpwnam(user)
            for path in (self.home, self.datadir):
                os.chown(path, info.pw_uid, info.pw_gid)
        install_db = shutil.which("mariadb-install-db", path=SERVICE_PATH) or shutil.which(
            "mysql_install_db", path=SERVICE_PATH)
        if "mariadb" in Path(binary).name or install_db:
            argv = [install_db or "mariadb-install-db", "--no-defaults", f"--datadir={self.datadir}",
                    "--auth-root-authentication-method=normal", "--skip-test-db", "--skip-name-resolve"]
        else:  # MySQL 8
            argv = [binary, "--no-defaults", "--initialize-insecure", f"--datadir={self.datadir}"]
        if user:
            argv.append(f"--user={user}")
        with open_log(log) as out:
            result = subprocess.run(argv, stdout=out, stderr=subprocess.STDOUT, env=_plain_env())
        if result.returncode != 0:
            raise self.process.failure(f"backend store: initializing {self.datadir} failed "
                                       f"(exit {result.returncode})")

    def stop(self) -> bool:
        return self.process.stop(timeout=60)


def _plain_env() -> dict[str, str]:
    return {"PATH": SERVICE_PATH, "LANG": "C.UTF-8", "HOME": os.environ.get("HOME", "/root")}
