"""MySQL TLS on the native stack (backend_store.tls, on by default): real MariaDB servers, no mocks.

The tenants' DB users REQUIRE SSL, the tracking servers (and our other clients) verify the server's certificate
against the deployment's CA, and a server whose certificate comes from another CA is refused.
"""

from __future__ import annotations

import shutil
import subprocess

import pymysql
import pytest
import sqlalchemy
from flops_mlops.configuration import certificates
from flops_mlops.stores import mysql
from flops_mlops.tracking.server import backend_store_uri, mysql_ca_path
from tracking_checks import log_example, mysql_counts

pytestmark = pytest.mark.services


def _status_warnings(stack) -> list[str]:
    import json

    return json.loads(stack.cli("status", "--json", check=True).stdout)["warnings"]


def test_tenants_reach_mysql_only_over_verified_tls(make_stack):
    stack = make_stack("native", ["acme"])
    stack.up()
    config, secrets = stack.load(), stack.secrets()
    acme, b = config.tenant("acme"), config.backend_store
    password = secrets.db_password("acme")

    # The tracking server came up through TLS (its schema upgrade and /health), and logs through it.
    logged = log_example(config.tracking_uri(acme), login=stack.admin())
    uri = backend_store_uri(config, acme, secrets, mysql_ca_path(config, acme))
    assert f"ssl_ca={mysql_ca_path(config, acme)}&ssl_check_hostname=true" in uri
    assert [w for w in _status_warnings(stack) if w.startswith("backend_store")] == []

    # A verified TLS login works, and the session is encrypted.
    ca = certificates.ca_certificate_path(config)
    with pymysql.connect(host=b.host, port=b.port, user=acme.db_user, password=password, database=acme.database,
                         ssl=mysql.verified_ssl(ca), connect_timeout=5) as conn, conn.cursor() as cur:
        cur.execute("SHOW SESSION STATUS LIKE 'Ssl_version'")
        assert cur.fetchone()[1].startswith("TLSv1.")
        cur.execute("SELECT COUNT(*) FROM runs WHERE run_uuid = %s", (logged.run_id,))
        assert cur.fetchone()[0] == 1
    assert mysql_counts(b.host, b.port, acme.db_user, password, acme.database, logged)["runs"] == 1

    # Without TLS the tenant's user is refused, by pymysql and by the mariadb client.
    with pytest.raises(pymysql.err.OperationalError) as refused:
        pymysql.connect(host=b.host, port=b.port, user=acme.db_user, password=password, ssl_disabled=True,
                        connect_timeout=5)
    assert refused.value.args[0] == 1045
    client = shutil.which("mariadb") or shutil.which("mysql")
    if client:
        result = subprocess.run([client, "--no-defaults", "--protocol=tcp", f"--host={b.host}", f"--port={b.port}",
                                 f"--user={acme.db_user}", "--ssl=0", "-e", "SELECT 1"],
                                env={"PATH": "/usr/bin:/bin", "MYSQL_PWD": password}, capture_output=True,
                                text=True, timeout=30)
        assert result.returncode != 0 and "Access denied" in result.stderr, result.stderr


def test_a_mysql_server_with_a_certificate_of_another_ca_is_refused(make_stack):
    """Our URI (ssl_ca + ssl_check_hostname) verifies: a MariaDB presenting another deployment's certificate fails
    the handshake before any password is sent. pymysql's ssl_ca keyword alone (what MLflow's MLFLOW_MYSQL_SSL_CA
    sets) does not verify: the same server gets as far as the login."""
    ours, other = make_stack("native", ["acme"]), make_stack("native", ["acme"])
    config, secrets = ours.load(), ours.secrets()
    other_config, other_secrets = other.load(), other.secrets()
    assert (certificates.ca_certificate_path(config).read_bytes()
            != certificates.ca_certificate_path(other_config).read_bytes())
    server = mysql.ManagedMySQL(other_config, other_secrets)  # the other deployment's CA signed its certificate
    try:
        server.start()
        mysql.provision_tenants(server.admin, other_config, other_secrets)  # else: 1130 before any handshake
        acme = config.tenant("acme")
        uri = backend_store_uri(config, acme, secrets).replace(
            f":{config.backend_store.port}/", f":{other_config.backend_store.port}/")
        engine = sqlalchemy.create_engine(uri, poolclass=sqlalchemy.pool.NullPool,
                                          connect_args={"connect_timeout": 5})
        with pytest.raises(sqlalchemy.exc.OperationalError, match="CERTIFICATE_VERIFY_FAILED"):
            engine.connect()
        engine.dispose()
        with pytest.raises(pymysql.err.OperationalError) as unverified:
            pymysql.connect(host=other_config.backend_store.host, port=other_config.backend_store.port,
                            user=acme.db_user, password=secrets.db_password("acme"), connect_timeout=5,
                            ssl_ca=str(certificates.ca_certificate_path(config)))
        assert unverified.value.args[0] == 1045  # through TLS to the login: the certificate was never checked
    finally:
        server.stop()


def test_tls_off_is_one_key_and_status_warns(make_stack):
    stack = make_stack("native", ["acme"], backend_store={"tls": False})
    stack.up()
    config, secrets = stack.load(), stack.secrets()
    acme, b = config.tenant("acme"), config.backend_store
    assert "ssl_ca" not in backend_store_uri(config, acme, secrets)
    assert any("backend_store.tls is false" in w for w in _status_warnings(stack))
    text = stack.cli("status", check=True).stdout
    assert "WARNING: backend_store.tls is false" in text
    with pymysql.connect(host=b.host, port=b.port, user=acme.db_user, password=secrets.db_password("acme"),
                         ssl_disabled=True, connect_timeout=5) as conn, conn.cursor() as cur:
        cur.execute("SELECT 1")
