"""What a wiretapper sees of the compose stack with TLS on every hop (configs/compose.yaml as shipped: HTTPS on the
tracking server, MySQL TLS, FTPS; issue 24): a capture on every interface of this machine (the containers' veth
pairs on the compose network's bridge, and lo for the published ports), kept by the kernel to the stack's ports:
inside the network the tracking server's 5000, MySQL's 3306, FTP's 21 and passive range; outside, the ports
compose publishes. Under it the stack comes up, the fl profile's aggregator runs a real FL project and registers
its champion, the serve profile's model server fetches that model from the tracking server, and a client on this
machine downloads it with MLflow. No secret of the secrets file, no Authorization header and no piece of the model
crosses in clear, between containers or to the published ports.

The capture is checked to see: nothing dropped, traffic between containers on each service's port, and a canary
sent in clear from the tracking server's container to the backend store's port is found. Flower's gRPC between the
aggregator and its learners is not one of the stack's services and is not part of this test.
"""

from __future__ import annotations

import ftplib
import os
import subprocess
from pathlib import Path

import pytest
import requests
from compose_stack import QUIET, TENANT, start_stack
from conftest import free_port, missing_service
from wire import Capture, assert_nothing_in_clear

pytestmark = [pytest.mark.docker, pytest.mark.services, pytest.mark.timeout(1800)]
PROJECT, ROUNDS = "WireFL", 2
INSIDE = {"tracking": {5000}, "mysql": {3306}}  # the services' ports on the compose network


def send_in_clear(stack, message: bytes) -> None:
    """From inside the tracking server's container, the bytes ``message`` to the backend store's MySQL port in
    clear: what the capture must see between containers when something does cross in clear."""
    code = ("import socket,sys; s=socket.create_connection(('backend-store',3306),timeout=10); s.recv(4096); "
            "s.sendall(sys.stdin.buffer.read()); s.close()")
    argv = ["docker", "compose", *stack.files, "--env-file", str(stack.env_file), "-p", stack.project,
            "exec", "-T", "tracking-server", "python", "-c", code]
    subprocess.run(argv, input=message, env=stack.env, check=True, timeout=60, capture_output=True)


@pytest.fixture(scope="module")
def tapped(tmp_path_factory):
    if os.geteuid() != 0:
        missing_service("a packet capture on the Docker bridge needs root (CAP_NET_RAW)")
    import mlflow
    from tracking_checks import logged_in

    folder = tmp_path_factory.mktemp("wire")
    canary = f"Authorization: Basic {os.urandom(12).hex()}".encode()
    stacks = start_stack(tmp_path_factory)
    stack = next(stacks)  # up already: its first start (the stores' logins) is in the FL run's restart below
    ports = stack.ports
    passive = set(range(ports["FLOPS_FTP_PASV_MIN_PORT"], ports["FLOPS_FTP_PASV_MAX_PORT"] + 1))
    services = {**INSIDE, "ftp": {21, *passive}}
    published = {ports["FLOPS_TRACKING_PORT"], ports["FLOPS_MYSQL_PORT"], ports["FLOPS_FTP_PORT"]}
    serve_port = free_port()
    fl_env = {"FLOPS_FL_PROJECT": PROJECT, "FLOPS_FL_ROUNDS": str(ROUNDS), "FLOPS_SERVE_PORT": str(serve_port)}
    try:
        with Capture({*set().union(*services.values()), *published}, interface=None) as capture, \
                pytest.MonkeyPatch.context() as patch:
            for key, value in QUIET.items():
                patch.setenv(key, value)
            # Recreated with FLOPS_FL_USERS for this project: the server logs in to MySQL and FTP again, captured.
            stack.compose("up", "--detach", "--wait", "--pull", "never", "--no-build", "tracking-server",
                          extra_env=fl_env)
            stack.compose("run", "--rm", "--use-aliases", "--pull", "never", "fl-aggregator", extra_env=fl_env)
            stack.compose("--profile", "serve", "up", "--detach", "--wait", "--wait-timeout", "300",
                          "--pull", "never", "--no-build", extra_env=fl_env)
            served = requests.get(f"http://127.0.0.1:{serve_port}/model", timeout=30).json()
            with logged_in(stack.admin):
                mlflow.set_tracking_uri(stack.tracking_uri)
                downloaded = Path(mlflow.artifacts.download_artifacts(f"models:/{PROJECT}@champion",
                                                                      dst_path=str(folder / "by-mlflow")))
            send_in_clear(stack, canary + b"\r\n")
        yield stack, capture, services, canary, [downloaded], served
    finally:
        next(stacks, None)  # start_stack's clean-up: every profile down, volumes removed


def between_containers(capture: Capture) -> dict[tuple, bytes]:
    """The flows whose both ends are not loopback: between containers on the compose network."""
    return {flow: data for flow, data in capture.streams.items()
            if not flow[0].startswith("127.") and not flow[2].startswith("127.")}


def test_the_capture_sees_every_hop_between_containers_and_what_crosses_in_clear(tapped):
    _, capture, services, canary, _, served = tapped
    assert capture.packets > 0 and capture.dropped == 0, (capture.packets, capture.dropped)
    inside = between_containers(capture)
    seen = {flow[1] for flow in inside} | {flow[3] for flow in inside}
    for service, ports in services.items():
        assert seen & ports, f"no traffic between containers seen on {service} ({sorted(ports)[:3]}...)"
    assert [flow for flow in inside if canary in inside[flow]], "the canary sent in clear was not captured"
    assert served["name"] == PROJECT, served  # the model server fetched the champion through the tracking server


def test_no_secret_no_authorization_header_and_no_model_bytes_cross_in_clear(tapped):
    stack, capture, _, canary, models, _ = tapped
    secrets = [value for value in stack.secrets.values() if len(value) >= 8]
    assert len(secrets) >= 5
    streams = {flow: data for flow, data in capture.streams.items() if canary not in data}
    assert sum(len(data) for data in between_containers(capture).values()) > 100_000  # a project and two fetches
    assert_nothing_in_clear(streams, secrets, models)


def test_plain_logins_are_refused_on_every_hop(tapped):
    """Plain HTTP to the tracking server, a MySQL login without TLS and a plain FTP login, as the tenant, on the
    published ports and, for HTTP and MySQL, from inside the compose network."""
    import pymysql

    stack = tapped[0]
    with pytest.raises(requests.ConnectionError):
        requests.get(f"http://127.0.0.1:{stack.ports['FLOPS_TRACKING_PORT']}/health", auth=stack.admin, timeout=10)
    with pytest.raises(pymysql.err.OperationalError) as refused:
        pymysql.connect(host="127.0.0.1", port=stack.ports["FLOPS_MYSQL_PORT"], user=f"mlflow_{TENANT}",
                        password=stack.secrets[f"FLOPS_TENANT_{TENANT.upper()}_DB_PASSWORD"], ssl_disabled=True,
                        connect_timeout=10)
    assert refused.value.args[0] == 1045
    with ftplib.FTP() as ftp:
        ftp.connect("127.0.0.1", stack.ports["FLOPS_FTP_PORT"], timeout=10)
        with pytest.raises(ftplib.error_perm, match="^530"):
            ftp.login(f"flops_{TENANT}", stack.secrets[f"FLOPS_TENANT_{TENANT.upper()}_FTP_PASSWORD"])
    # From the tracking server's own container, on the network: plain HTTP gets no answer, MySQL refuses.
    code = ("import os,sys,urllib.request,pymysql\n"
            "try:\n urllib.request.urlopen('http://tracking-server:5000/health', timeout=5)\n"
            " sys.exit('plain http answered')\n"
            "except OSError: pass\n"
            "try:\n pymysql.connect(host='backend-store', user='mlflow_" + TENANT + "', "
            "password=os.environ['FLOPS_DB_PASSWORD'], ssl_disabled=True, connect_timeout=5)\n"
            "except pymysql.err.OperationalError as e:\n sys.exit(0 if e.args[0] == 1045 else f'mysql: {e.args}')\n"
            "sys.exit('mysql accepted a login without TLS')\n")
    result = stack.compose("exec", "-T", "tracking-server", "python", "-c", code, check=False, timeout=120)
    assert result.returncode == 0, result.stdout + result.stderr


def test_the_cli_verifies_the_compose_tracking_server_against_the_ca(tapped, tmp_path, monkeypatch):
    """`flops-mlops user list` with a configuration of this stack (configs/compose.yaml on its ports) reaches the
    tracking server over HTTPS and verifies it with the CA beside the secrets file, with no help from the
    environment; with another CA it stops at the handshake."""
    import yaml
    from conftest import ROOT, run_cli

    stack = tapped[0]
    for key in ("REQUESTS_CA_BUNDLE", "MLFLOW_TRACKING_SERVER_CERT_PATH"):
        monkeypatch.delenv(key, raising=False)
    data = yaml.safe_load((ROOT / "configs" / "compose.yaml").read_text(encoding="utf-8"))
    data.update(state_dir=str(tmp_path / "state"), secrets_file=str(stack.env_file))
    data["tracking"]["base_port"] = stack.ports["FLOPS_TRACKING_PORT"]
    config = tmp_path / "stack.yaml"
    config.write_text(yaml.safe_dump(data), encoding="utf-8")
    listed = run_cli("user", "list", "--tenant", TENANT, config=config, timeout=120)
    assert listed.returncode == 0 and "admin" in listed.stdout, listed.stdout + listed.stderr
    assert f"fl-{PROJECT}" in listed.stdout
    other = tmp_path / "other.env"  # the same passwords beside another CA: the handshake fails, nothing is sent
    other.write_bytes(stack.env_file.read_bytes())
    other.chmod(0o600)
    data["secrets_file"] = str(other)
    config.write_text(yaml.safe_dump(data), encoding="utf-8")
    assert run_cli("secrets", "init", config=config, timeout=120).returncode == 0  # a new CA and certificates
    refused = run_cli("user", "list", "--tenant", TENANT, config=config, timeout=120)
    assert refused.returncode != 0 and "admin" not in refused.stdout, refused.stdout
