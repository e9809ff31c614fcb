"""HTTPS on the tracking servers (tracking.tls) of the native stack: real MariaDB, vsftpd, MLflow and Flower.

With tracking.tls on, a real FL round logs over HTTPS, the champion is served and answers, plain HTTP to the
tracking port gets no MLflow answer, a client that does not trust the deployment's CA fails verification,
`status` shows each certificate's expiry, and renewed certificates are served after a restart with every run kept.
"""

from __future__ import annotations

import json
import re
import shlex
import socket
import ssl
import subprocess

import conftest
import pytest
import requests
from conftest import free_port
from flops_mlops.configuration import certificates

pytestmark = [pytest.mark.services, pytest.mark.timeout(900)]
QUIET = {"MLFLOW_HTTP_REQUEST_MAX_RETRIES": "1", "FLWR_TELEMETRY_ENABLED": "0", "MLFLOW_DISABLE_TELEMETRY": "true"}
EXPIRY = re.compile(r"^[A-Z][a-z]{2} [ \d]\d \d\d:\d\d:\d\d \d{4} GMT$")  # openssl's notAfter


@pytest.fixture(scope="module")
def https(tmp_path_factory):
    """A native stack (MariaDB with TLS, vsftpd) with tracking.tls on, up, and one FL round of project demo."""
    folder = tmp_path_factory.mktemp("https")
    stack = conftest.TestStack.create("native", folder, ["acme"], tracking={"tls": True})
    try:
        up = stack.up()
        done = stack.cli("round", "--tenant", "acme", "--project", "demo", "--rounds", "2", "--learners", "2",
                         "--json", env=QUIET, timeout=600)
        assert done.returncode == 0, done.stderr[-3000:]
        yield stack, up.stdout, json.loads(done.stdout)
    finally:
        stack.cli("down", "--purge")


def tracking(stack) -> tuple[str, str, int]:
    """(tracking URI, CA file, port) of tenant acme."""
    config = stack.load()
    acme = config.tenant("acme")
    return config.tracking_uri(acme), str(certificates.ca_certificate_path(config)), config.tracking_port(acme)


def runs_of(stack, project: str) -> list[str]:
    """The run names of ``project``, read over HTTPS by MLflow's client trusting our CA."""
    from mlflow import MlflowClient
    from tracking_checks import logged_in

    uri, ca, _ = tracking(stack)
    with logged_in(stack.admin()), pytest.MonkeyPatch.context() as patch:
        patch.setenv("MLFLOW_TRACKING_SERVER_CERT_PATH", ca)
        client = MlflowClient(uri)
        experiment = client.get_experiment_by_name(project)
        names = [run.info.run_name for run in client.search_runs([experiment.experiment_id])]
        assert client.get_model_version_by_alias(project, "champion").version == "1"
    return sorted(names)


def test_a_real_round_logs_over_https_and_the_urls_say_so(https):
    stack, up, summary = https
    uri, ca, _ = tracking(stack)
    assert uri.startswith("https://") and f"MLflow UI and tracking URI {uri}" in up
    assert f"MLFLOW_TRACKING_SERVER_CERT_PATH={ca}" in up
    assert summary["model_uri"] == "models:/demo@champion" and summary["ui_url"].startswith(f"{uri}/")
    assert runs_of(stack, "demo") == ["round-1", "round-2"]
    listed = stack.cli("user", "list", "--tenant", "acme", check=True).stdout  # the CLI's user commands too
    assert "fl-demo" in listed


def test_plain_http_to_the_tracking_port_gets_no_mlflow_answer(https):
    stack, _, _ = https
    _, _, port = tracking(stack)
    with pytest.raises(requests.ConnectionError):
        requests.get(f"http://127.0.0.1:{port}/health", timeout=10)
    with pytest.raises(requests.ConnectionError):  # nor a login attempt
        requests.get(f"http://127.0.0.1:{port}/api/2.0/mlflow/experiments/search", auth=stack.admin(), timeout=10)


def test_a_client_without_our_ca_fails_verification(https):
    stack, _, _ = https
    uri, ca, port = tracking(stack)
    with pytest.raises(requests.exceptions.SSLError, match="CERTIFICATE_VERIFY_FAILED"):
        requests.get(f"{uri}/health", timeout=10, verify=True)  # the system's store
    context = ssl.create_default_context()
    with socket.create_connection(("127.0.0.1", port), timeout=10) as raw:
        with pytest.raises(ssl.SSLCertVerificationError):
            context.wrap_socket(raw, server_hostname="127.0.0.1")
    assert requests.get(f"{uri}/health", timeout=10, verify=ca).status_code == 200


def test_the_served_champion_answers_the_printed_curl_line(https):
    stack, _, _ = https
    port = free_port()
    done = stack.cli("serve", "--tenant", "acme", "--project", "demo", "--port", str(port), "--detach", env=QUIET)
    assert done.returncode == 0, done.stderr + done.stdout
    line = next(line for line in done.stdout.splitlines() if line.startswith("predict:"))
    answer = subprocess.run(shlex.split(line.removeprefix("predict:")), capture_output=True, text=True, timeout=30)
    assert answer.returncode == 0 and len(json.loads(answer.stdout)["predictions"]) == 5, answer


def test_status_shows_each_certificates_expiry_and_no_http_warning(https):
    stack, _, _ = https
    report = json.loads(stack.cli("status", "--json", check=True).stdout)
    (tenant,) = report["tenants"]
    assert tenant["healthy"] and tenant["tracking_uri"].startswith("https://")
    assert tenant["certificate"]["file"].endswith(".tracking-acme.crt")
    assert EXPIRY.match(tenant["certificate"]["expires"]), tenant["certificate"]
    assert not [w for w in report["warnings"] if w.startswith("tracking.tls")]
    text = stack.cli("status", check=True).stdout
    assert f"certificate:    {tenant['certificate']['file']}, expires {tenant['certificate']['expires']}" in text


def test_gc_runs_mlflow_gc_through_the_https_server(https):
    stack, _, _ = https
    done = stack.cli("gc", "--tenant", "acme", env=QUIET, timeout=300)
    assert done.returncode == 0 and "tenant acme: gc done" in done.stdout, done.stderr[-2000:]


def test_renewed_certificates_are_served_after_a_restart_and_keep_the_runs(https):
    stack, _, _ = https
    config = stack.load()
    _, ca, port = tracking(stack)
    crt = certificates.tracking_files(config, "acme")[0]
    old = crt.read_text(encoding="ascii")
    assert served_certificate(port, ca) == ssl.PEM_cert_to_DER_cert(old)
    renewed = stack.cli("secrets", "renew-certificates", check=True).stdout
    assert "tenant acme: new certificate" in renewed and "restart --tenant acme" in renewed
    new = crt.read_text(encoding="ascii")
    assert new != old and certificates.ca_certificate_path(config).is_file()
    assert served_certificate(port, ca) == ssl.PEM_cert_to_DER_cert(old)  # until the restart
    stack.cli("restart", "--tenant", "acme", check=True)
    assert served_certificate(port, ca) == ssl.PEM_cert_to_DER_cert(new)
    assert runs_of(stack, "demo") == ["round-1", "round-2"]  # verified against the same CA, nothing lost
    report = json.loads(stack.cli("status", "--json", check=True).stdout)
    assert report["tenants"][0]["healthy"]


def served_certificate(port: int, ca: str) -> bytes:
    """The DER certificate the server on ``port`` presents, verified against ``ca`` for 127.0.0.1."""
    context = ssl.create_default_context(cafile=ca)
    with socket.create_connection(("127.0.0.1", port), timeout=10) as raw:
        with context.wrap_socket(raw, server_hostname="127.0.0.1") as tls:
            return tls.getpeercert(binary_form=True)


def test_a_certificate_of_ones_own_is_served_and_verified_against_its_ca(tmp_path):
    """tracking.tls_certificate, tls_key and tls_ca (here: made by another deployment's CA) on the embedded stack:
    `up` serves them, and our clients verify them against tls_ca."""
    for folder in ("other", "own"):
        (tmp_path / folder).mkdir()
    other = conftest.TestStack.create("local", tmp_path / "other", ["acme"], tracking={"tls": True})
    theirs = other.load()
    crt, key = certificates.tracking_files(theirs, "acme")
    ca = certificates.ca_certificate_path(theirs)
    stack = conftest.TestStack.create("local", tmp_path / "own", ["acme"], tracking={
        "tls": True, "tls_certificate": str(crt), "tls_key": str(key), "tls_ca": str(ca)})
    try:
        stack.up()
        config = stack.load()
        uri, port = config.tracking_uri(config.tenant("acme")), config.tracking_port(config.tenant("acme"))
        assert served_certificate(port, str(ca)) == ssl.PEM_cert_to_DER_cert(crt.read_text(encoding="ascii"))
        assert requests.get(f"{uri}/health", timeout=10, verify=str(ca)).status_code == 200
        report = json.loads(stack.cli("status", "--json", check=True).stdout)
        assert report["tenants"][0]["healthy"] and report["tenants"][0]["certificate"]["file"] == str(crt)
        assert "admin" in stack.cli("user", "list", "--tenant", "acme", check=True).stdout
    finally:
        stack.cli("down", "--purge")
        other.cli("down", "--purge")
