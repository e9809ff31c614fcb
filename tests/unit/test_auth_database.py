"""The auth database's place and schema (tracking/auth_store.py) and the login cache instances share
(tracking/logins.py: remember_checked_passwords, read_users_once_per_request), on real SQLite databases.
On MariaDB: tests/integration/test_auth_store.py."""

from __future__ import annotations

import sqlalchemy
import pytest
from flops_mlops.tracking import auth_store, logins
from flops_mlops.tracking.app import write_auth_config

MYSQL = "mysql+pymysql://mlflow_acme:p%40ss@db.example.org:3306/mlflow_acme?charset=utf8mb4"


def test_with_mysql_the_auth_database_is_beside_the_tracking_database():
    uri = auth_store.database_uri({"MLFLOW_BACKEND_STORE_URI": MYSQL, "FLOPS_AUTH_DB": "/srv/mlflow/auth/auth.db"})
    assert uri == "mysql+pymysql://mlflow_acme:p%40ss@db.example.org:3306/mlflow_acme_auth?charset=utf8mb4"


def test_with_sqlite_the_auth_database_is_the_file_beside_the_server():
    env = {"MLFLOW_BACKEND_STORE_URI": "sqlite:////state/tenants/acme/metadata.db",
           "FLOPS_AUTH_DB": "/state/tenants/acme/auth.db"}
    assert auth_store.database_uri(env) == "sqlite:////state/tenants/acme/auth.db"


@pytest.mark.parametrize("env, message", [
    ({"MLFLOW_BACKEND_STORE_URI": "sqlite:////x.db", "FLOPS_AUTH_DB": "auth.db"},
     "FLOPS_AUTH_DB: expected the absolute path of the SQLite auth database, got 'auth.db'"),
    ({"MLFLOW_BACKEND_STORE_URI": "sqlite:////x.db"}, "FLOPS_AUTH_DB: expected the absolute path"),
    ({"MLFLOW_BACKEND_STORE_URI": MYSQL.replace("/mlflow_acme?", "/mlflow-acme`x?")},
     "auth database 'mlflow-acme`x_auth' is not a plain name"),
    ({"MLFLOW_BACKEND_STORE_URI": MYSQL.replace("/mlflow_acme?", f"/{'a' * 60}?")}, "at most 64"),
])
def test_bad_names_and_paths_are_refused_by_name(env, message):
    with pytest.raises(auth_store.AuthStoreError, match=message.replace("`", ".").replace("(", ".").replace(")", ".")):
        auth_store.database_uri(env)


def test_the_initial_revision_has_distinct_foreign_key_names_and_mlflow_takes_it_to_head(tmp_path):
    engine = sqlalchemy.create_engine(f"sqlite:///{tmp_path / 'auth.db'}")
    assert auth_store.create_initial_schema(engine)
    inspector = sqlalchemy.inspect(engine)
    names = [fk["name"] for table in ("experiment_permissions", "registered_model_permissions")
             for fk in inspector.get_foreign_keys(table)]
    assert names == ["fk_experiment_permissions_user_id", "fk_registered_model_permissions_user_id"]
    with engine.connect() as conn:
        assert conn.execute(sqlalchemy.text("SELECT version_num FROM alembic_version_auth")).scalar() == \
            auth_store.INITIAL_REVISION
    auth_store.upgrade(engine)  # MLflow's later migrations run from the stamp
    with engine.connect() as conn:
        head = conn.execute(sqlalchemy.text("SELECT version_num FROM alembic_version_auth")).scalar()
    assert head != auth_store.INITIAL_REVISION
    assert not auth_store.create_initial_schema(engine)  # once
    engine.dispose()


def test_the_ini_escapes_percent_signs_and_turns_mlflows_login_cache_off(tmp_path):
    import configparser

    path = write_auth_config(MYSQL.replace("_acme?", "_acme_auth?"), tmp_path / "ini")
    parser = configparser.ConfigParser()
    parser.read(path)
    assert parser["mlflow"]["database_uri"].endswith("p%40ss@db.example.org:3306/mlflow_acme_auth?charset=utf8mb4")
    assert parser["mlflow"]["auth_cache_ttl_seconds"] == "0"
    assert oct(path.stat().st_mode & 0o777) == "0o600"


def test_a_remembered_login_ends_at_once_when_the_password_changes_elsewhere(tmp_path):
    """Two stores on one database, as two instances of a tenant's server: one changes the password, the other
    (which remembered the login) refuses the old password at the next request."""
    from mlflow.server.auth.sqlalchemy_store import SqlAlchemyStore

    uri = f"sqlite:///{tmp_path / 'auth.db'}"
    first, second = SqlAlchemyStore(), SqlAlchemyStore()
    first.init_db(uri)
    second.init_db(uri)
    now = [1000.0]
    logins.remember_checked_passwords(second, 30, clock=lambda: now[0])
    first.create_user("alice", "alice-first-password")
    assert second.authenticate_user("alice", "alice-first-password")
    assert not second.authenticate_user("alice", "not-her-password")
    first.update_user("alice", password="alice-second-password")
    assert not second.authenticate_user("alice", "alice-first-password")
    assert second.authenticate_user("alice", "alice-second-password")
    first.delete_user("alice")
    assert not second.authenticate_user("alice", "alice-second-password")
    assert not second.authenticate_user("nobody", "alice-second-password")
    for store in (first, second):
        store.engine.dispose()


def test_within_a_get_request_a_user_is_read_once_and_the_next_request_sees_changes_made_elsewhere(tmp_path):
    """read_users_once_per_request: one SELECT of the user per GET request for every login and admin check, and a
    user demoted or deleted through another instance counts from the next request on; writes read every time."""
    from mlflow.exceptions import MlflowException
    from mlflow.server.auth.sqlalchemy_store import SqlAlchemyStore

    uri = f"sqlite:///{tmp_path / 'auth.db'}"
    first, second = SqlAlchemyStore(), SqlAlchemyStore()
    first.init_db(uri)
    second.init_db(uri)
    logins.remember_checked_passwords(second, 30)
    logins.read_users_once_per_request(second)
    first.create_user("alice", "alice-first-password", is_admin=True)
    statements = []
    sqlalchemy.event.listen(second.engine, "before_cursor_execute", lambda *args: statements.append(args[2]))

    def request(method: str):
        attempt = logins.Attempt("alice", users={} if method == "GET" else None)
        token = logins.CURRENT.set(attempt)
        try:
            statements.clear()
            checks = [second.authenticate_user("alice", "alice-first-password") for _ in range(3)]
            admin = [second.get_user("alice").is_admin for _ in range(3)]
            return all(checks), admin, len(statements)
        finally:
            logins.CURRENT.reset(token)

    assert request("GET") == (True, [True] * 3, 1)
    assert request("POST")[2] >= 6
    first.update_user("alice", is_admin=False)
    assert request("GET") == (True, [False] * 3, 1)
    first.delete_user("alice")
    token = logins.CURRENT.set(logins.Attempt("alice", users={}))
    try:
        assert not second.authenticate_user("alice", "alice-first-password")
        with pytest.raises(MlflowException):
            second.get_user("alice")
    finally:
        logins.CURRENT.reset(token)
    for store in (first, second):
        store.engine.dispose()


def _auth_db(path, users: dict[str, str]):
    from mlflow.server.auth.sqlalchemy_store import SqlAlchemyStore

    store = SqlAlchemyStore()
    store.init_db(f"sqlite:///{path}")
    for name, password in users.items():
        store.create_user(name, password)
    if users:
        store.create_experiment_permission("7", next(iter(users)), "EDIT")
    return store


def test_a_move_takes_every_row_once_and_refuses_over_other_users(tmp_path):
    """move_sqlite into another database (SQLite here; MariaDB in tests/integration/test_auth_store.py)."""
    old = tmp_path / "auth.db"
    _auth_db(old, {"bob": "bob-password-of-before"}).engine.dispose()
    target = _auth_db(tmp_path / "target.db", {})
    assert auth_store.move_sqlite(old, target.engine, say=lambda line: None) == 1
    assert not old.exists() and (tmp_path / "auth.db.moved-to-mysql").exists()
    assert target.authenticate_user("bob", "bob-password-of-before")
    # Another file with other users is not moved over them, and stays where it is.
    _auth_db(old, {"eve": "eve-password-of-before"}).engine.dispose()
    with pytest.raises(auth_store.AuthStoreError, match="already has users of its own"):
        auth_store.move_sqlite(old, target.engine, say=lambda line: None)
    assert old.exists() and not target.authenticate_user("eve", "eve-password-of-before")
    target.engine.dispose()
