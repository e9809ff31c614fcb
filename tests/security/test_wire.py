"""What a wiretapper on the network sees of the native stack with TLS on every hop (issue 24, point 7): a capture
of the loopback traffic to and from the stack's services (each tracking server, MySQL, the FTP store's control and
passive ports) while `up` creates the tenant, a real FL round logs and registers its model, and the champion is
downloaded through the tracking server twice (MLflow's client; the model server's one-request archive). No secret
of the secrets file, no Authorization header and no piece of the model crosses in clear.

The capture is checked to see: nothing dropped, traffic on every service port, and a canary sent in clear on a
watched port is found. Flower's gRPC between the aggregator and its learners is not one of the stack's services
and is not part of this test.
"""

from __future__ import annotations

import ftplib
import json
import os
import socket
import threading
from pathlib import Path

import conftest
import pytest
import requests
from conftest import free_port
from wire import Capture, assert_nothing_in_clear

pytestmark = [pytest.mark.services, pytest.mark.timeout(900)]
QUIET = {"MLFLOW_HTTP_REQUEST_MAX_RETRIES": "1", "FLWR_TELEMETRY_ENABLED": "0", "MLFLOW_DISABLE_TELEMETRY": "true"}


def send_in_clear(port: int, message: bytes) -> None:
    """One plain TCP exchange on loopback: what the capture must see when something does cross in clear."""
    with socket.create_server(("127.0.0.1", port)) as server:
        def answer() -> None:
            connection, _ = server.accept()
            with connection:
                connection.recv(4096)
        thread = threading.Thread(target=answer)
        thread.start()
        with socket.create_connection(("127.0.0.1", port), timeout=10) as client:
            client.sendall(message)
        thread.join(10)


@pytest.fixture(scope="module")
def tapped(tmp_path_factory):
    """The native stack with HTTPS, FTPS and MySQL TLS, brought up and used under a capture."""
    if os.geteuid() != 0:
        conftest.missing_service("a packet capture on lo needs root (CAP_NET_RAW)")
    import mlflow
    from flops_mlops.configuration import certificates
    from flops_mlops.serving.fetch import Registry
    from flops_mlops.tracking.users import AuthAdmin, ensure_serving_user
    from tracking_checks import logged_in

    folder = tmp_path_factory.mktemp("wire")
    stack = conftest.TestStack.create("native", folder, ["acme"], tracking={"tls": True},
                                      artifact_store={"tls": True}, backend_store={"tls": True})
    config = stack.load()
    acme, store = config.tenant("acme"), config.artifact_store
    services = {"tracking": {config.tracking_port(acme)}, "mysql": {config.backend_store.port},
                "ftp": {store.port, *range(store.passive_ports[0], store.passive_ports[1] + 1)}}
    canary_port, canary = free_port(), f"Authorization: Basic {os.urandom(12).hex()}".encode()
    uri, ca = config.tracking_uri(acme), str(certificates.ca_certificate_path(config))
    try:
        with Capture({canary_port, *set().union(*services.values())}) as capture:
            stack.up()
            done = stack.cli("round", "--tenant", "acme", "--project", "demo", "--rounds", "2", "--learners", "2",
                             "--json", env=QUIET, timeout=600)
            assert done.returncode == 0, done.stderr[-3000:]
            version = json.loads(done.stdout)["model_version"]
            with logged_in(stack.admin()), pytest.MonkeyPatch.context() as patch:
                patch.setenv("MLFLOW_TRACKING_SERVER_CERT_PATH", ca)
                mlflow.set_tracking_uri(uri)
                downloaded = Path(mlflow.artifacts.download_artifacts(f"models:/demo/{version}",
                                                                      dst_path=str(folder / "by-mlflow")))
            reader = os.urandom(16).hex()
            admin = AuthAdmin(uri, stack.secrets().admin_password("acme"), verify=ca)
            user = ensure_serving_user(admin, "demo", reader)
            fetched = Registry(uri, user, reader, verify=ca).fetch("demo", str(version), folder / "by-archive")
            send_in_clear(canary_port, canary + b"\r\n")
        yield stack, capture, services, canary, [downloaded, fetched], [reader]
    finally:
        stack.cli("down", "--purge")


def test_the_capture_sees_every_service_and_what_crosses_in_clear(tapped):
    _, capture, services, canary, _, _ = tapped
    assert capture.packets > 0 and capture.dropped == 0, (capture.packets, capture.dropped)
    seen = {flow[1] for flow in capture.streams} | {flow[3] for flow in capture.streams}
    for service, ports in services.items():
        assert seen & ports, f"no traffic seen on {service} ({sorted(ports)[:3]}...)"
    assert capture.find(canary), "the canary sent in clear was not captured"


def test_no_secret_no_authorization_header_and_no_model_bytes_cross_in_clear(tapped):
    stack, capture, _, canary, models, extra_secrets = tapped
    secrets = [v for v in stack.secrets().values.values() if len(v) >= 8] + extra_secrets
    assert len(secrets) >= 5
    streams = {flow: data for flow, data in capture.streams.items() if canary not in data}
    assert sum(len(data) for data in streams.values()) > 100_000  # a round and two downloads went through
    assert_nothing_in_clear(streams, secrets, models)


def test_plain_logins_are_refused_on_every_hop(tapped):
    """Plain HTTP to the tracking server, a plain FTP login and a MySQL login without TLS, as the tenant."""
    import pymysql

    stack, _, services, _, _, _ = tapped
    config, secrets = stack.load(), stack.secrets()
    acme, store, backend = config.tenant("acme"), config.artifact_store, config.backend_store
    with pytest.raises(requests.ConnectionError):
        requests.get(f"http://127.0.0.1:{config.tracking_port(acme)}/health", auth=stack.admin(), timeout=10)
    with ftplib.FTP() as ftp:
        ftp.connect(store.host, store.port, timeout=10)
        with pytest.raises(ftplib.error_perm, match="^530"):
            ftp.login(acme.ftp_user, secrets.ftp_password("acme"))
    with pytest.raises(pymysql.err.OperationalError) as refused:
        pymysql.connect(host=backend.host, port=backend.port, user=acme.db_user,
                        password=secrets.db_password("acme"), ssl_disabled=True, connect_timeout=5)
    assert refused.value.args[0] == 1045
