"""The tracking-server image's entrypoint as Oakestra starts it (tracking.tls, artifact_store.tls): certificate, key
and CA only as base64url environment values, as push fills them in. Against real MariaDB and vsftpd with FTPS
(native stores), the entrypoint serves HTTPS verified by the deployment's CA, and an artifact travels over FTPS."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

import conftest
import pytest
import requests
from conftest import free_port
from flops_mlops.configuration import certificates, pem_env

pytestmark = [pytest.mark.services, pytest.mark.timeout(900)]

CLIENT = """
import mlflow, sys
mlflow.set_tracking_uri(sys.argv[1])
mlflow.set_experiment("tlsdemo")
with mlflow.start_run() as run:
    mlflow.log_text("over ftps", "note.txt")
print(mlflow.artifacts.load_text(f"runs:/{run.info.run_id}/note.txt"))
"""


def _wait_healthy(url: str, ca: Path, process: subprocess.Popen, log: Path) -> None:
    deadline = time.monotonic() + 240
    while time.monotonic() < deadline:
        assert process.poll() is None, log.read_text()[-3000:]
        try:
            if requests.get(f"{url}/health", verify=str(ca), timeout=2).status_code == 200:
                return
        except requests.RequestException:
            pass
        time.sleep(1)
    raise AssertionError(f"{url} did not answer: {log.read_text()[-3000:]}")


def test_the_entrypoint_serves_https_and_stores_over_ftps_from_base64_settings(tmp_path):
    stack = conftest.TestStack.create("native", tmp_path, ["acme"], tracking={"tls": True},
                                      backend_store={"tls": False}, artifact_store={"tls": True})
    try:
        stack.up()
        config, secrets = stack.load(), stack.secrets()
        crt, key = certificates.tracking_files(config, "acme")
        ca = certificates.ca_certificate_path(config)
        port = free_port()
        env = {"PATH": os.environ["PATH"], "HOME": str(tmp_path), "TMPDIR": str(tmp_path), "FLOPS_TENANT": "acme",
               "FLOPS_DB_HOST": "127.0.0.1", "FLOPS_DB_PORT": str(config.backend_store.port),
               "FLOPS_DB_PASSWORD": secrets.db_password("acme"),
               "FLOPS_FTP_HOST": "127.0.0.1", "FLOPS_FTP_PORT": str(config.artifact_store.port),
               "FLOPS_FTP_PASSWORD": secrets.ftp_password("acme"),
               "FLOPS_ADMIN_PASSWORD": secrets.admin_password("acme"), "FLOPS_SECRET_KEY": secrets.secret_key("acme"),
               "FLOPS_PORT": str(port), "FLOPS_PUBLIC_PORT": str(port), "FLOPS_AUTH_DB": str(tmp_path / "auth.db"),
               "FLOPS_TLS": "true", "FLOPS_TLS_CERTIFICATE_B64": pem_env.encode(crt.read_bytes()),
               "FLOPS_TLS_KEY_B64": pem_env.encode(key.read_bytes()),
               "FLOPS_TLS_CA_B64": pem_env.encode(ca.read_bytes()),
               "FLOPS_FTP_TLS": "true", "FLOPS_FTP_CA_B64": pem_env.encode(ca.read_bytes())}
        log = tmp_path / "container.log"
        with open(log, "wb") as out:
            process = subprocess.Popen([sys.executable, "-m", "flops_mlops.tracking.container", "tracking-server"],
                                       env=env, stdout=out, stderr=subprocess.STDOUT)
        try:
            url = f"https://127.0.0.1:{port}"
            _wait_healthy(url, ca, process, log)
            # The key reached no argument list, of the entrypoint or the server it became (the same pid).
            arguments = Path(f"/proc/{process.pid}/cmdline").read_bytes().decode()
            assert "--ssl-keyfile" in arguments and env["FLOPS_TLS_KEY_B64"] not in arguments
            assert key.read_text() not in arguments
            with pytest.raises(requests.RequestException):
                requests.get(f"http://127.0.0.1:{port}/health", timeout=5).raise_for_status()
            with pytest.raises(requests.exceptions.SSLError):
                requests.get(f"{url}/health", timeout=5)  # a client without our CA refuses it
            client = subprocess.run([sys.executable, "-c", CLIENT, url], capture_output=True, text=True, timeout=300,
                                    env={**os.environ, "MLFLOW_TRACKING_USERNAME": "admin",
                                         "MLFLOW_TRACKING_PASSWORD": secrets.admin_password("acme"),
                                         "MLFLOW_TRACKING_SERVER_CERT_PATH": str(ca),
                                         "MLFLOW_HTTP_REQUEST_MAX_RETRIES": "1", "MLFLOW_DISABLE_TELEMETRY": "true"})
            assert client.returncode == 0, client.stderr[-3000:] + log.read_text()[-3000:]
            assert client.stdout.strip().endswith("over ftps")
        finally:
            process.terminate()
            process.wait(timeout=60)
    finally:
        stack.cli("down", "--purge")
