"""The pyinfra model_server role as rendered: a service per served model running our model server from the
stack's venv as the service account, its reader's password in the 0600 environment file only."""

from __future__ import annotations

import shlex

from test_pyinfra_render import FAKE_SECRETS, TEMPLATES, host_settings, render  # sets up deploy/pyinfra imports
from tasks import model_server, services  # noqa: E402

SERVE_PASSWORD = "acme-serve-pass"


def settings(tmp_path, init="systemd", root=""):
    s = host_settings(tmp_path, init, root)
    s.secrets.values.update({**FAKE_SECRETS, "FLOPS_TENANT_ACME_SERVE_PASSWORD": SERVE_PASSWORD})
    return s


def test_unit_runs_the_model_server_as_the_service_account_without_its_password(tmp_path):
    s = settings(tmp_path)
    acme = s.config.tenant("acme")
    svc = model_server.service(s, acme, "mnist", "0.0.0.0", 8081)
    unit = render(services.UNIT_TEMPLATE, services.unit_data(svc))
    assert f"ExecStart={shlex.join(['/opt/flops-mlops/venv/bin/python', '-m', 'flops_mlops.model_server'])}" in unit
    assert "User=flops-mlops" in unit and f"EnvironmentFile={svc.env_file}" in unit
    assert "http://127.0.0.1:8081/ping" in svc.ready
    for secret in (SERVE_PASSWORD, *FAKE_SECRETS.values()):
        assert secret not in unit and secret not in " ".join(svc.argv)


def test_environment_file_reads_the_champion_as_its_reader(tmp_path):
    s = settings(tmp_path)
    acme = s.config.tenant("acme")
    env = model_server.environment(s, acme, "mnist", "10.0.0.13", "0.0.0.0", 8081)
    assert env["MLFLOW_TRACKING_URI"] == f"http://10.0.0.13:{s.config.tracking_port(acme)}"
    assert (env["MLFLOW_TRACKING_USERNAME"], env["MLFLOW_TRACKING_PASSWORD"]) == ("serve-mnist", SERVE_PASSWORD)
    assert (env["FLOPS_SERVE_MODEL_NAME"], env["FLOPS_SERVE_ALIAS"], env["FLOPS_SERVE_PORT"]) == ("mnist", "champion",
                                                                                                 "8081")
    text = render(TEMPLATES / "model-server.env.j2", {"stack": "golden", "tenant": "acme", "project": "mnist",
                                                        "env": env})
    assert f"MLFLOW_TRACKING_PASSWORD='{SERVE_PASSWORD}'" in text
    # Only the tenant's serving password: no admin, store or FL password reaches a model server.
    assert not [key for key, value in FAKE_SECRETS.items() if value in text]
