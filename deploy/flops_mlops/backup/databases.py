"""A tenant's databases in a backup: a consistent dump, and loading it back.

- Tracking database on MySQL/MariaDB: `mariadb-dump --single-transaction` (one consistent snapshot of InnoDB
  tables while the server keeps writing) as the tenant's own database user; loaded back with the `mariadb`
  client after every table of the tenant's database is dropped. The password reaches the clients in a
  --defaults-extra-file of mode 0600 in a private folder, never in their arguments. With backend_store.tls both
  clients speak TLS and verify the server's certificate against the deployment's CA (--ssl-verify-server-cert).
- The auth database (users, grants) on MySQL/MariaDB (<database>_auth, tracking/auth_store.py): the same, after
  the tracking database.
- Tracking and auth database on SQLite (embedded stack): SQLite's online backup API, which copies a consistent
  snapshot while the tracking server keeps writing; restored with the same API.
"""

from __future__ import annotations

import os
import shutil
import sqlite3
import subprocess
import tempfile
from collections.abc import Iterator
from contextlib import closing, contextmanager
from pathlib import Path

from ..configuration import certificates
from ..configuration.schema import ConfigError
from ..configuration.secrets import Secrets
from ..configuration.stack import StackConfig
from ..configuration.tracking import Tenant
from ..processes import SERVICE_PATH, StackError
from ..stores import tenant_db

DUMP_CLIENTS = ("mariadb-dump", "mysqldump")
SQL_CLIENTS = ("mariadb", "mysql")


def _client(names: tuple[str, ...]) -> str:
    for name in names:
        found = shutil.which(name, path=SERVICE_PATH)
        if found:
            return found
    raise ConfigError(f"backend_store: kind mysql: backup and restore need the {' or '.join(names)} client, and none "
                      "is installed; on Debian: apt-get install mariadb-client")


@contextmanager
def _login_file(config: StackConfig, tenant: Tenant, secrets: Secrets) -> Iterator[list[str]]:
    """The client options of the tenant's database user: the first is a --defaults-extra-file (mode 0600, in a
    private temporary folder, deleted afterwards) that holds the password."""
    b = config.backend_store
    password = secrets.db_password(tenant.id)
    if any(ch in password for ch in "\n\r\"\\"):
        raise ConfigError(f"{secrets.path}: the database password of tenant {tenant.id} holds a character an "
                          "option file cannot carry (newline, quote or backslash)")
    with tempfile.TemporaryDirectory(prefix="flops-db-login-") as folder:
        path = Path(folder) / "client.cnf"
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(fd, "w", encoding="utf-8") as handle:
            handle.write(f'[client]\npassword="{password}"\n')
        yield [f"--defaults-extra-file={path}", f"--host={b.host}", f"--port={b.port}", "--protocol=tcp",
               f"--user={tenant_db.TenantDB.of(tenant, password).user}", "--default-character-set=utf8mb4",
               *_tls_options(config)]


def _tls_options(config: StackConfig) -> list[str]:
    if not certificates.mysql_tls(config):
        return []
    return ["--ssl", f"--ssl-ca={certificates.mysql_ca(config)}", "--ssl-verify-server-cert"]


def _run(argv: list[str], what: str, stdin=None, stdout=None) -> None:
    env = {"PATH": SERVICE_PATH, "LANG": "C.UTF-8", "HOME": os.environ.get("HOME", "/")}
    result = subprocess.run(argv, stdin=stdin, stdout=stdout, stderr=subprocess.PIPE, env=env, timeout=3600)
    if result.returncode != 0:
        message = result.stderr.decode("utf-8", "replace").strip().splitlines()
        raise StackError(f"{what} failed (exit {result.returncode}): {message[-1] if message else 'no message'}")


def _database(tenant: Tenant, auth: bool) -> str:
    names = tenant_db.TenantDB.of(tenant, "")  # validated names
    return names.auth_database if auth else names.database


def dump_mysql(config: StackConfig, tenant: Tenant, secrets: Secrets, out: Path, auth: bool = False) -> None:
    """The tenant's tracking database (or ``auth``: its auth database) as SQL, one consistent snapshot
    (--single-transaction), into ``out``."""
    database = _database(tenant, auth)
    with _login_file(config, tenant, secrets) as login, open(out, "wb") as handle:
        _run([_client(DUMP_CLIENTS), *login, "--single-transaction", "--skip-lock-tables", "--no-tablespaces",
              "--hex-blob", "--skip-comments", database],
             f"dumping database {database}", stdout=handle)


def load_mysql(config: StackConfig, tenant: Tenant, secrets: Secrets, dump: Path, auth: bool = False) -> None:
    """Replace the tenant's tracking database (or ``auth``: its auth database) with ``dump``: every table dropped
    first (a newer MLflow may have tables the dump does not name), then the dump loaded."""
    database = _database(tenant, auth)
    drop = ("SET FOREIGN_KEY_CHECKS=0;\n"
            "SET @tables = (SELECT GROUP_CONCAT('`', table_name, '`') FROM information_schema.tables "
            f"WHERE table_schema = '{database}');\n"
            "SET @drop = IF(@tables IS NULL, 'DO 0', CONCAT('DROP TABLE ', @tables));\n"
            "PREPARE statement FROM @drop;\nEXECUTE statement;\nDEALLOCATE PREPARE statement;\n")
    with _login_file(config, tenant, secrets) as login:
        client = [_client(SQL_CLIENTS), *login, "--batch", database]
        with tempfile.TemporaryFile() as script:
            script.write(drop.encode())
            script.seek(0)
            _run(client, f"emptying database {database}", stdin=script)
        with open(dump, "rb") as handle:
            _run(client, f"loading the dump into database {database}", stdin=handle)


def copy_sqlite(source: Path, target: Path) -> None:
    """A consistent copy of the SQLite database ``source`` into ``target`` (replacing its content)."""
    if not source.is_file():
        raise StackError(f"{source}: no such SQLite database")
    try:
        with closing(sqlite3.connect(f"file:{source}?mode=ro", uri=True, timeout=30)) as src, \
                closing(sqlite3.connect(target, timeout=30)) as dst:
            src.backup(dst)
    except sqlite3.Error as exc:
        raise StackError(f"copying the SQLite database {source} to {target} failed: {exc}") from None


def rows(uri: str, queries: dict[str, tuple[str, str]]) -> dict[str, list[tuple]]:
    """``queries`` (name -> (table, SELECT ...)) on the database at ``uri``: each one's rows; a missing table
    gives none."""
    import sqlalchemy

    engine = sqlalchemy.create_engine(uri, poolclass=sqlalchemy.pool.NullPool)
    found = {}
    try:
        with engine.connect() as conn:
            tables = set(sqlalchemy.inspect(conn).get_table_names())
            for name, (table, query) in queries.items():
                found[name] = [tuple(row) for row in conn.execute(sqlalchemy.text(query))] if table in tables else []
    finally:
        engine.dispose()
    return found
