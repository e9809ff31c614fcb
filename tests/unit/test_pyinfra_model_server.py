"""The pyinfra model_server role as rendered: a service per served model running our model server from the
stack's venv as the service account, its reader's password in the 0600 environment file only."""

from __future__ import annotations

import shlex

from test_pyinfra_render import FAKE_SECRETS, TEMPLATES, host_settings, render  # isort: skip (sets up deploy/pyinfra imports)
from tasks import model_server, services  # noqa: E402

SERVE_PASSWORD = "acme-serve-pass"


def settings(tmp_path):
    s = host_settings(tmp_path)
    s.secrets.values.update({**FAKE_SECRETS, "FLOPS_TENANT_ACME_SERVE_PASSWORD": SERVE_PASSWORD})
    return s


def test_unit_runs_the_model_server_as_the_service_account_without_its_password(tmp_path):
    s = settings(tmp_path)
    acme = s.config.tenant("acme")
    svc = model_server.service(s, acme, "mnist", "0.0.0.0", 8081)
    unit = render(services.UNIT_TEMPLATE, services.unit_data(svc))
    assert f"ExecStart={shlex.join(['/opt/flops-mlops/venv/bin/python', '-m', 'flops_mlops.serving.server'])}" in unit
    assert "User=flops-mlops-acme\n" in unit and f"EnvironmentFile={svc.env_file}" in unit
    assert "http://127.0.0.1:8081/ping" in svc.ready
    for secret in (SERVE_PASSWORD, *FAKE_SECRETS.values()):
        assert secret not in unit and secret not in " ".join(svc.argv)


def test_environment_file_reads_the_champion_as_its_reader(tmp_path):
    s = settings(tmp_path)
    acme = s.config.tenant("acme")
    env = model_server.environment(s, acme, "mnist", "10.0.0.13", "0.0.0.0", 8081)
    # tracking.tls: HTTPS verified against the deployment's CA, put on the model server's host (never "insecure")
    assert env["MLFLOW_TRACKING_URI"] == f"https://10.0.0.13:{s.config.tracking_port(acme)}"
    assert env["MLFLOW_TRACKING_SERVER_CERT_PATH"] == "/etc/flops-mlops/golden/tracking-ca.crt"
    assert "MLFLOW_TRACKING_INSECURE_TLS" not in env
    assert (env["MLFLOW_TRACKING_USERNAME"], env["MLFLOW_TRACKING_PASSWORD"]) == ("serve-mnist", SERVE_PASSWORD)
    assert (env["FLOPS_SERVE_MODEL_NAME"], env["FLOPS_SERVE_ALIAS"], env["FLOPS_SERVE_PORT"]) == ("mnist", "champion",
                                                                                                 "8081")
    text = render(TEMPLATES / "model-server.env.j2", {"stack": "golden", "tenant": "acme", "project": "mnist",
                                                        "env": env})
    assert f"MLFLOW_TRACKING_PASSWORD='{SERVE_PASSWORD}'" in text
    # Only the tenant's serving password: no admin, store or FL password reaches a model server.
    assert not [key for key, value in FAKE_SECRETS.items() if value in text]


def test_tracking_server_creates_the_readers_of_the_models_served_anywhere_in_the_inventory(tmp_path):
    """A model server on one host reads as serve-<project> from the tracking server on another: the tracking
    server's environment names that user (with the tenant's serving password), found in every host's data."""
    from pyinfra.api import Inventory
    from pyinfra.context import ctx_inventory
    from tasks import tracking_server

    s = settings(tmp_path)
    acme = s.config.tenant("acme")
    hosts = Inventory(([("mlflow.example.org", {}),
                        ("serve-1.example.org", {"flops_served_models": ["acme/mnist", "acme/cifar"]}),
                        ("serve-2.example.org", {"flops_served_models": ["acme/mnist"]})], {}))
    with ctx_inventory.use(hosts):
        readers = tracking_server.served_projects(s.config, acme)
    assert readers == ["mnist", "cifar"]
    env = tracking_server.environment(s, s.config, acme, readers)
    assert env["FLOPS_SERVE_USERS"] == f"mnist:{SERVE_PASSWORD},cifar:{SERVE_PASSWORD}"
    # The server creates them through its own HTTPS address, verifying it against the CA on its host.
    assert env["FLOPS_LOCAL_URI"] == f"https://127.0.0.1:{s.config.tracking_port(acme)}"
    assert env["MLFLOW_TRACKING_SERVER_CERT_PATH"] == "/etc/flops-mlops/golden/tracking-ca.crt"
    assert "FLOPS_SERVE_USERS" not in tracking_server.environment(s, s.config, acme)
