"""The end-to-end assertions every way of deploying must pass, written once.

Log through a tenant's tracking server, then look for the results where they must be: the model files on
the FTP artifact store as that tenant, the metadata rows in that tenant's database.
"""

from __future__ import annotations

import contextlib
import ftplib
import os
import posixpath
import ssl
from dataclasses import dataclass
from pathlib import Path

import numpy as np


@dataclass(frozen=True)
class Logged:
    experiment_id: str
    run_id: str
    model_id: str
    model_uri: str


@contextlib.contextmanager
def logged_in(login: tuple[str, str] | None):
    """MLflow's client logs in with MLFLOW_TRACKING_USERNAME/PASSWORD; set them for the duration (None: as is)."""
    keys = ("MLFLOW_TRACKING_USERNAME", "MLFLOW_TRACKING_PASSWORD")
    before = {key: os.environ.get(key) for key in keys}
    if login is not None:
        os.environ.update(dict(zip(keys, login)))
    try:
        yield
    finally:
        for key, value in before.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value


def log_example(tracking_uri: str, experiment: str = "smoke", login: tuple[str, str] | None = None) -> Logged:
    """Create an experiment, log params, metrics and a small scikit-learn model with a signature.

    ``login``: (user, password) for the tracking server (every server asks for one; None: from the environment).
    """
    import mlflow

    client_uri_before = mlflow.get_tracking_uri()
    mlflow.set_tracking_uri(tracking_uri)
    try:
        with logged_in(login):
            return _log_example(experiment)
    finally:
        mlflow.set_tracking_uri(client_uri_before)


def _log_example(experiment: str) -> Logged:
    import mlflow
    from mlflow.models import infer_signature
    from sklearn.linear_model import LogisticRegression

    rng = np.random.default_rng(7)
    features = rng.normal(size=(80, 3))
    labels = (features[:, 0] + features[:, 1] > 0).astype(int)
    model = LogisticRegression().fit(features, labels)
    experiment_id = mlflow.set_experiment(experiment).experiment_id
    with mlflow.start_run() as run:
        mlflow.log_params({"C": 1.0, "solver": "lbfgs"})
        mlflow.log_metrics({"accuracy": float(model.score(features, labels)), "Accuracy": 0.5})
        info = mlflow.sklearn.log_model(
            model, name="model", signature=infer_signature(features, model.predict(features)),
            input_example=features[:2], pip_requirements=["scikit-learn", "numpy"])
    return Logged(experiment_id, run.info.run_id, info.model_id, info.model_uri)


def load_and_predict(tracking_uri: str, model_uri: str, login: tuple[str, str] | None = None) -> np.ndarray:
    import mlflow

    mlflow.set_tracking_uri(tracking_uri)
    with logged_in(login):
        return mlflow.pyfunc.load_model(model_uri).predict(np.array([[2.0, 2.0, 0.0], [-2.0, -2.0, 0.0]]))


class VerifiedFTPS(ftplib.FTP_TLS):
    """Explicit FTPS as our tracking servers speak it: the store's certificate checked (chain and the host name
    dialled) against the CA file ``ca``, data connections encrypted too (PROT P, right after the login)."""

    def __init__(self, ca: Path) -> None:
        super().__init__(context=ssl.create_default_context(cafile=str(ca)))

    def login(self, user: str = "", passwd: str = "", acct: str = "", secure: bool = True) -> str:
        answer = super().login(user, passwd, acct, secure)
        self.prot_p()
        return answer


def ftp_client(host: str, port: int, ca: Path | None = None) -> ftplib.FTP:
    """A client connected to ``host``:``port``, not logged in: plain FTP, or with ``ca`` FTPS (VerifiedFTPS)."""
    ftp = ftplib.FTP() if ca is None else VerifiedFTPS(ca)
    ftp.connect(host, port, timeout=10)
    return ftp


def ftp_listing(host: str, port: int, user: str, password: str, path: str = "/", ca: Path | None = None) -> list[str]:
    """Every file path under ``path`` as seen by ``user`` (recursive); with ``ca`` over verified FTPS."""
    found: list[str] = []
    with ftp_client(host, port, ca) as ftp:
        ftp.login(user, password)

        def walk(folder: str) -> None:
            # NLST and CWD only: vsftpd does not speak MLSD.
            for entry in ftp.nlst(folder):
                full = entry if entry.startswith("/") else posixpath.join(folder, entry)
                try:
                    ftp.cwd(full)
                except ftplib.error_perm:
                    found.append(full)
                    continue
                walk(full)

        walk(path)
    return found


def model_files_on_ftp(host: str, port: int, user: str, password: str, logged: Logged,
                       artifact_path: str = "/artifacts", ca: Path | None = None) -> list[str]:
    folder = f"{artifact_path}/{logged.experiment_id}/models/{logged.model_id}/artifacts"
    return [posixpath.basename(p) for p in ftp_listing(host, port, user, password, folder, ca)]


def mysql_counts(host: str, port: int, user: str, password: str, database: str, logged: Logged) -> dict[str, int]:
    """How many rows of the logged run, its params and metrics, and its model are in the tenant's database."""
    import pymysql

    with pymysql.connect(host=host, port=port, user=user, password=password, database=database) as conn:
        with conn.cursor() as cur:
            counts = {}
            for table, column, value in (("runs", "run_uuid", logged.run_id), ("params", "run_uuid", logged.run_id),
                                         ("metrics", "run_uuid", logged.run_id),
                                         ("logged_models", "model_id", logged.model_id)):
                cur.execute(f"SELECT COUNT(*) FROM {table} WHERE {column} = %s", (value,))
                counts[table] = cur.fetchone()[0]
            return counts


# What every backend store the tests run reports (Debian's MariaDB 10.11: natively, on the pyinfra hosts, and in
# our backend-store image): the tenant database's character set and collation, and its user's auth plugin.
MARIADB_SERVER = "10.11."
TENANT_DATABASE = ("utf8mb4", "utf8mb4_nopad_bin")
TENANT_AUTH_PLUGIN = "mysql_native_password"


def backend_store_facts(host: str, port: int, login: tuple[str, str], database: str) -> dict[str, object]:
    """What the running server says: its version and the tenant database's character set and collation."""
    import pymysql

    with pymysql.connect(host=host, port=port, user=login[0], password=login[1]) as conn, conn.cursor() as cur:
        cur.execute("SELECT VERSION()")
        version = cur.fetchone()[0]
        cur.execute("SELECT DEFAULT_CHARACTER_SET_NAME, DEFAULT_COLLATION_NAME FROM information_schema.SCHEMATA "
                    "WHERE SCHEMA_NAME = %s", (database,))
        return {"version": version, "database": cur.fetchone()}


def auth_plugins(account: str, **admin) -> set[str]:
    """The auth plugins of ``account``'s rows, read from mysql.user by the server's admin (``admin``: pymysql's
    connect arguments: host and port or unix_socket, user, password)."""
    import pymysql

    with pymysql.connect(**admin) as conn, conn.cursor() as cur:
        cur.execute("SELECT plugin FROM mysql.user WHERE User = %s", (account,))
        return {row[0] for row in cur.fetchall()}


def assert_the_tested_mariadb(facts: dict[str, object]) -> None:
    assert str(facts["version"]).startswith(MARIADB_SERVER) and "MariaDB" in str(facts["version"]), facts
    assert facts["database"] == TENANT_DATABASE, facts
