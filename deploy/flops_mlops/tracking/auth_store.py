"""Where a tenant's MLflow basic-auth users and grants live, and how that database is made ready.

- **SQLite backend store** (the embedded default): a SQLite file beside the server (FLOPS_AUTH_DB); MLflow
  creates and migrates it itself when the server starts.
- **MySQL/MariaDB backend store**: the database ``<tenant database>_auth`` on the same server, reached with the
  tenant's own database user (stores/templates/tenants.sql.j2 creates it and grants that user, and only that user,
  its privileges). Nothing of the login stays beside the server, so any number of instances of the tenant's server,
  on any node, share one set of users and grants.

MLflow's initial auth migration (mlflow/server/auth/db/migrations/versions/8606fa83a998_initial_migration.py)
cannot run on MySQL/MariaDB: it names the foreign keys of experiment_permissions and registered_model_permissions
both ``fk_user_id``, and InnoDB wants constraint names unique per database (errno 121; upstream mlflow/mlflow#9642,
#10964). ``prepare`` creates the tables of that revision itself, with the same columns and unique constraints and
two distinct foreign key names, stamps alembic_version_auth at that revision, and lets MLflow's own migrations
(mlflow.server.auth.db.utils.migrate) run every later one as usual.

An auth database of an earlier release (the SQLite file FLOPS_AUTH_DB) is moved into MySQL once, in one
transaction, with every row of every table (users with their password hashes, all permission and role tables),
and the file is then renamed to ``<name>.moved-to-mysql``, never deleted.

``prepare`` runs before the server starts, in `upgrade-schema` (server.py), on every target: natively as the
tenant's account, in a container from its entrypoint. Concurrent starts of one tenant's instances take a MySQL
named lock, so only one creates or migrates the schema.
"""

from __future__ import annotations

import os
import re
import sqlite3
import tempfile
from pathlib import Path

import sqlalchemy
from sqlalchemy import Boolean, Column, ForeignKeyConstraint, Integer, MetaData, String, Table, UniqueConstraint

from ..configuration.secrets import redact
from ..stores.tenant_db import AUTH_SUFFIX

# mlflow/server/auth/db/utils.py: INITIAL_REVISION; the version table of MLflow's auth migrations (env.py).
INITIAL_REVISION = "8606fa83a998"
VERSION_TABLE = "alembic_version_auth"
MOVED_SUFFIX = ".moved-to-mysql"
LOCK_SECONDS = 300
# A database name that may reach SQL (mlflow_<tenant>_auth); quoted as an identifier after this check.
DATABASE_NAME = re.compile(r"^[a-z][a-z0-9_]{0,63}$")


class AuthStoreError(Exception):
    """The auth database cannot be made ready; the message names the database and never a password."""


def auth_database(database: str) -> str:
    """The auth database of the tenant database ``database``."""
    name = f"{database}{AUTH_SUFFIX}"
    if not DATABASE_NAME.fullmatch(name):
        raise AuthStoreError(f"auth database {name!r} is not a plain name (a lowercase letter, then lowercase "
                             "letters, digits or _; at most 64)")
    return name


def is_mysql(uri: str) -> bool:
    return uri.startswith("mysql")


def database_uri(env: dict[str, str]) -> str:
    """The auth database's SQLAlchemy URI: beside the tracking database on a MySQL backend store (same server, same
    user, database <database>_auth), else the SQLite file FLOPS_AUTH_DB."""
    backend = env.get("MLFLOW_BACKEND_STORE_URI", "")
    if is_mysql(backend):
        url = sqlalchemy.engine.make_url(backend)
        return url.set(database=auth_database(url.database or "")).render_as_string(hide_password=False)
    path = env.get("FLOPS_AUTH_DB", "")
    if not path or not os.path.isabs(path):
        raise AuthStoreError(f"FLOPS_AUTH_DB: expected the absolute path of the SQLite auth database, got {path!r}")
    return f"sqlite:///{path}"


def initial_tables(metadata: MetaData) -> list[Table]:
    """The tables of MLflow's initial auth revision, with a foreign key name of their own each."""
    users = Table(
        "users", metadata,
        Column("id", Integer, primary_key=True, nullable=False),
        Column("username", String(255), nullable=True),
        Column("password_hash", String(255), nullable=True),
        Column("is_admin", Boolean, nullable=True),
        UniqueConstraint("username"),
    )
    experiments = _grant_table(metadata, "experiment_permissions", "experiment_id", "unique_experiment_user")
    models = _grant_table(metadata, "registered_model_permissions", "name", "unique_name_user")
    return [users, experiments, models]


def _grant_table(metadata: MetaData, name: str, resource: str, unique: str) -> Table:
    """A grant table of the initial revision: its foreign key is named after the table (fk_<table>_user_id)."""
    return Table(
        name, metadata,
        Column("id", Integer, primary_key=True, nullable=False),
        Column(resource, String(255), nullable=False),
        Column("user_id", Integer, nullable=False),
        Column("permission", String(255), nullable=True),
        ForeignKeyConstraint(["user_id"], ["users.id"], name=f"fk_{name}_user_id"),
        UniqueConstraint(resource, "user_id", name=unique),
    )


def _alembic_config(engine: sqlalchemy.engine.Engine):
    from mlflow.server.auth.db.utils import _get_alembic_config

    return _get_alembic_config(engine.url.render_as_string(hide_password=False))


def create_initial_schema(engine: sqlalchemy.engine.Engine) -> bool:
    """On a database without MLflow's auth tables: create the initial revision's tables and stamp it. False when
    the database already has them (MLflow's migrations take it from there)."""
    from alembic.command import stamp

    tables = set(sqlalchemy.inspect(engine).get_table_names())
    if VERSION_TABLE in tables or "users" in tables:
        return False
    metadata = MetaData()
    initial_tables(metadata)
    config = _alembic_config(engine)
    with engine.begin() as conn:
        metadata.create_all(conn)
        config.attributes["connection"] = conn
        stamp(config, INITIAL_REVISION)
    return True


def upgrade(engine: sqlalchemy.engine.Engine) -> None:
    """MLflow's own auth migrations, up to this MLflow's head."""
    from mlflow.server.auth.db.utils import migrate

    migrate(engine, "head")


def prepare(env: dict[str, str], say=print) -> None:
    """Make the tenant's auth database ready before its server starts (MySQL backend store only; MLflow migrates a
    SQLite auth database itself): schema, later migrations, and the one-time move of an earlier SQLite file."""
    uri = database_uri(env)
    if not is_mysql(uri):
        return
    engine = sqlalchemy.create_engine(uri, poolclass=sqlalchemy.pool.NullPool, connect_args={"connect_timeout": 10})
    name = engine.url.database
    try:
        with engine.connect() as lock:
            got = lock.execute(sqlalchemy.text("SELECT GET_LOCK(:name, :wait)"),
                               {"name": f"flops-mlops:{name}", "wait": LOCK_SECONDS}).scalar()
            if got != 1:
                raise AuthStoreError(f"auth database {name}: another instance held its lock for {LOCK_SECONDS} s")
            try:
                if create_initial_schema(engine):
                    say(f"auth database {name}: created MLflow's initial auth schema (revision {INITIAL_REVISION}, "
                        "distinct foreign key names)")
                upgrade(engine)
                old = env.get("FLOPS_AUTH_DB", "")
                if old and os.path.isabs(old) and Path(old).is_file():
                    move_sqlite(Path(old), engine, say)
            finally:
                lock.execute(sqlalchemy.text("SELECT RELEASE_LOCK(:name)"), {"name": f"flops-mlops:{name}"})
    except sqlalchemy.exc.SQLAlchemyError as exc:
        password = engine.url.password or ""
        text = str(getattr(exc, "orig", None) or exc).splitlines()[0]
        raise AuthStoreError(f"auth database {name}: {redact(text, [password] if password else [])}") from None
    finally:
        engine.dispose()


def _rows(conn, table: Table) -> list[dict]:
    return [dict(row._mapping) for row in conn.execute(table.select())]


def move_sqlite(path: Path, engine: sqlalchemy.engine.Engine, say=print) -> int:
    """Copy every row of the SQLite auth database ``path`` into the MySQL auth database (at the same revision),
    in one transaction, then rename the file. Returns the number of users moved.

    The MySQL database must not have users of its own yet, unless they are exactly the file's (an earlier move
    that stopped before the rename): then only the rename is left to do.
    """
    with tempfile.TemporaryDirectory(prefix="flops-auth-move-") as folder:
        copy = Path(folder) / "auth.db"
        with sqlite3.connect(f"file:{path}?mode=ro", uri=True) as source, sqlite3.connect(copy) as target:
            source.backup(target)  # the file itself stays as it was; the copy is brought to this MLflow's head
        source_engine = sqlalchemy.create_engine(f"sqlite:///{copy}", poolclass=sqlalchemy.pool.NullPool)
        try:
            upgrade(source_engine)
            moved = _copy_rows(source_engine, engine, path)
        finally:
            source_engine.dispose()
    target = path.with_name(path.name + MOVED_SUFFIX)
    if target.exists():
        target = path.with_name(f"{path.name}{MOVED_SUFFIX}-{int(os.path.getmtime(path))}")
    os.replace(path, target)
    say(f"auth database {engine.url.database}: moved {moved} user(s) and their grants from {path}; "
        f"the file is kept as {target}")
    return moved


def _copy_rows(source_engine, engine, path: Path) -> int:
    source_meta, target_meta = MetaData(), MetaData()
    source_meta.reflect(source_engine)
    target_meta.reflect(engine)
    tables = [t for t in source_meta.sorted_tables if t.name != VERSION_TABLE]
    for table in tables:
        if table.name not in target_meta.tables:
            raise AuthStoreError(f"{path}: table {table.name} has no counterpart in {engine.url.database}")
        missing = set(table.c.keys()) - set(target_meta.tables[table.name].c.keys())
        if missing:
            raise AuthStoreError(f"{path}: columns {sorted(missing)} of {table.name} have no counterpart in "
                                 f"{engine.url.database}")
    with source_engine.connect() as src:
        rows = {table.name: _rows(src, table) for table in tables}
    users = {(r["username"], r["password_hash"]) for r in rows.get("users", [])}
    with engine.begin() as conn:
        present = {(r.username, r.password_hash) for r in conn.execute(
            sqlalchemy.text("SELECT username, password_hash FROM users"))}
        if present and present == users:
            return 0  # moved before; only the rename was left
        if present:
            raise AuthStoreError(
                f"{path}: {engine.url.database} already has users of its own ({len(present)}); not moving the "
                f"file's {len(users)} over them. Keep one: rename {path} to keep MySQL's, or empty the auth "
                "database to move the file's in")
        for table in reversed(tables):  # rows seeded by migrations give way to the file's
            conn.execute(target_meta.tables[table.name].delete())
        for table in tables:
            if rows[table.name]:
                conn.execute(target_meta.tables[table.name].insert(), rows[table.name])
    return len(users)

