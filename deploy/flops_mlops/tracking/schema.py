"""Which MLflow and which database schema a tenant runs: the installed MLflow version, and the alembic revision
its tracking database (table alembic_version) and its auth database (alembic_version_auth) are at.

`status` shows them, and a backup's manifest records them: a restore refuses an archive of a newer MLflow than
the one installed, and brings an older schema up to date (`mlflow db upgrade`, run by every tracking server start).
heads() and unknown_to_this_mlflow() tell `up` whether a start is about to upgrade a schema (it backs the tenant up
first) or would meet one that a newer MLflow wrote (it refuses).
"""

from __future__ import annotations

import importlib.util
from functools import cache
from importlib import metadata
from pathlib import Path

from ..configuration.secrets import redact

TRACKING_VERSION_TABLE = "alembic_version"
AUTH_VERSION_TABLE = "alembic_version_auth"


def mlflow_version() -> str:
    return metadata.version("mlflow")


@cache
def _scripts(which: str):
    """alembic's view of the installed MLflow's migrations: "tracking" or "auth" (found without importing MLflow)."""
    from alembic.script import ScriptDirectory

    package = Path(importlib.util.find_spec("mlflow").submodule_search_locations[0])
    folder = {"tracking": package / "store" / "db_migrations",
              "auth": package / "server" / "auth" / "db" / "migrations"}[which]
    return ScriptDirectory(str(folder))


def heads() -> dict[str, str]:
    """The revision the installed MLflow brings each schema to: {"tracking": ..., "auth": ...}."""
    return {which: _scripts(which).get_current_head() for which in ("tracking", "auth")}


def unknown_to_this_mlflow(which: str, rev: str) -> bool:
    """Whether revision ``rev`` of the ``which`` schema is not among the installed MLflow's migrations (a newer
    MLflow wrote it: this one cannot run on it, nor bring it back)."""
    from alembic.util import CommandError

    try:
        return _scripts(which).get_revision(rev) is None
    except CommandError:
        return True


def revision(uri: str, table: str = TRACKING_VERSION_TABLE) -> str | None:
    """The alembic revision of the database at ``uri`` (SQLAlchemy URI); None when it has no schema yet.
    Raises RuntimeError (without the URI's password) when the database cannot be read."""
    import sqlalchemy

    if table not in (TRACKING_VERSION_TABLE, AUTH_VERSION_TABLE):
        raise ValueError(f"not an alembic version table of MLflow: {table!r}")
    connect_args = {"connect_timeout": 5} if uri.startswith("mysql") else {}
    engine = sqlalchemy.create_engine(uri, poolclass=sqlalchemy.pool.NullPool, connect_args=connect_args)
    try:
        with engine.connect() as conn:
            if not sqlalchemy.inspect(conn).has_table(table):
                return None
            return conn.execute(sqlalchemy.text(f"SELECT version_num FROM {table}")).scalar()
    except sqlalchemy.exc.SQLAlchemyError as exc:
        password = engine.url.password or ""
        raise RuntimeError(redact(str(exc.orig or exc).splitlines()[0], [password] if password else [])) from None
    finally:
        engine.dispose()
