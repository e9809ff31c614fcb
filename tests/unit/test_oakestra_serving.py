"""The Oakestra serving application: one model server per project with serve: true, at a service IP from the
address plan that stays put when projects come and go, logged in as serve-<project> through a placeholder."""

from __future__ import annotations

import pytest
from flops_mlops.configuration import loading as config_module
from flops_mlops.configuration.schema import ConfigError
from flops_mlops.oakestra import sla
from test_oakestra_render import services, write_config


def with_projects(*projects: dict):
    def edit(data):
        data["oakestra"]["projects"] = list(projects)
    return edit


MNIST = {"name": "mnist", "tenant": "acme", "slot": 1, "serve": True}
CIFAR = {"name": "cifar", "tenant": "globex", "slot": 2, "serve": True}


def render(tmp_path, *projects: dict) -> dict[str, dict]:
    tmp_path.mkdir(exist_ok=True)
    return services(sla.render_all(config_module.load(write_config(tmp_path, with_projects(*projects)))))


def test_one_model_server_per_served_project_logged_in_as_its_reader(tmp_path):
    rendered = render(tmp_path, MNIST, {**CIFAR, "serve": False})
    served = {name: service for name, service in rendered.items() if name.startswith("serving/")}
    assert list(served) == ["serving/mnist"]
    service = served["serving/mnist"]
    assert service["code"].endswith("/flops-mlops/model-server:0.1.0")
    assert service["cmd"] == ["python", "-m", "flops_mlops.serving.server"]
    environment = dict(item.split("=", 1) for item in service["environment"])
    assert environment["MLFLOW_TRACKING_URI"] == f"https://{rendered['tracking/acme']['addresses']['rr_ip']}:5000"
    assert environment["FLOPS_TRACKING_CA_B64"] == "${file:ca.crt}"  # the model server verifies it against the CA
    assert environment["MLFLOW_TRACKING_USERNAME"] == "serve-mnist"
    assert environment["MLFLOW_TRACKING_PASSWORD"] == "${FLOPS_TENANT_ACME_SERVE_PASSWORD}"
    assert environment["FLOPS_SERVE_MODEL_NAME"] == "mnist" and environment["FLOPS_SERVE_ALIAS"] == "champion"
    # The tenant's tracking server creates that reader (with the same placeholder); globex serves nothing.
    tracking = dict(item.split("=", 1) for item in rendered["tracking/acme"]["environment"])
    assert tracking["FLOPS_SERVE_USERS"] == "mnist:${FLOPS_TENANT_ACME_SERVE_PASSWORD}"
    assert not any(item.startswith("FLOPS_SERVE_USERS=") for item in rendered["tracking/globex"]["environment"])


def test_no_serving_application_without_a_served_project(tmp_path):
    assert not [name for name in render(tmp_path, {**MNIST, "serve": False}) if name.startswith("serving/")]


def test_service_ip_comes_from_the_plan_and_stays_when_projects_change(tmp_path):
    alone = render(tmp_path / "a", MNIST)["serving/mnist"]["addresses"]["rr_ip"]
    both = render(tmp_path / "b", CIFAR, MNIST)
    assert alone == both["serving/mnist"]["addresses"]["rr_ip"] == "10.30.103.1"
    assert both["serving/cifar"]["addresses"]["rr_ip"] == "10.30.103.2"


def test_a_serving_block_that_overlaps_another_is_refused(tmp_path):
    def overlap(data):
        with_projects(MNIST)(data)
        data["oakestra"]["ip_plan"]["serving_block"] = data["oakestra"]["ip_plan"]["tracking_block"]

    with pytest.raises(ConfigError, match="oakestra.ip_plan.serving_block"):
        config_module.load(write_config(tmp_path, overlap))
