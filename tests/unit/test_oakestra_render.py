"""Oakestra SLA rendering: golden files, byte-stable output, schema violations, the rr_ip plan, no secrets.

The golden files in tests/unit/golden/oakestra/ are what configs/oakestra.yaml renders; they were reviewed by
hand. After an intended change, FLOPS_UPDATE_GOLDEN=1 rewrites them (and fails); review the diff.
"""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import pytest
import yaml
from conftest import ROOT, compare_with_golden, run_cli
from flops_mlops.configuration import loading as config_module
from flops_mlops.configuration import secrets as secrets_module
from flops_mlops.configuration.schema import ConfigError
from flops_mlops.oakestra import sla

GOLDEN = Path(__file__).parent / "golden" / "oakestra"
SHIPPED = ROOT / "configs" / "oakestra.yaml"


def write_config(tmp_path: Path, edit=None, name: str = "stack.yaml") -> Path:
    """configs/oakestra.yaml with absolute paths under tmp_path, changed by ``edit(data)``."""
    data = yaml.safe_load(SHIPPED.read_text())
    data["state_dir"] = str(tmp_path / "state")
    data["secrets_file"] = str(tmp_path / "secrets.env")
    if edit:
        edit(data)
    path = tmp_path / name
    path.write_text(yaml.safe_dump(data, sort_keys=False))
    return path


def services(rendered: list[sla.Rendered]) -> dict[str, dict]:
    """Every rendered microservice by "<application>/<service>"."""
    return {f"{r.application_name}/{s['microservice_name']}": s
            for r in rendered for s in r.document["applications"][0]["microservices"]}


def env(service: dict) -> dict[str, str]:
    return dict(item.split("=", 1) for item in service.get("environment", []))


def rr_ips(rendered: list[sla.Rendered]) -> dict[str, str]:
    return {f"{r.application_name}/{s['microservice_name']}": s["addresses"]["rr_ip"]
            for r in rendered for s in r.document["applications"][0]["microservices"]}


# --- golden files and stability -------------------------------------------------------------------


def test_shipped_config_renders_the_golden_files(tmp_path):
    out = tmp_path / "out"
    result = run_cli("render", "--out", str(out), config=SHIPPED)
    assert result.returncode == 0, result.stderr
    written = sorted(p.name for p in out.iterdir())
    assert written == ["mnist.json", "stores.json", "tracking.json"]
    compare_with_golden(GOLDEN, {name: (out / name).read_bytes() for name in written})


def test_update_mode_rewrites_the_golden_files_and_still_fails(tmp_path, monkeypatch):
    golden = tmp_path / "golden"
    golden.mkdir()
    (golden / "gone.json").write_text("{}")
    monkeypatch.setenv("FLOPS_UPDATE_GOLDEN", "1")
    with pytest.raises(pytest.fail.Exception, match="rewrote 1 golden file"):
        compare_with_golden(golden, {"new.json": b"[1]"})
    assert {p.name: p.read_bytes() for p in golden.iterdir()} == {"new.json": b"[1]"}
    monkeypatch.delenv("FLOPS_UPDATE_GOLDEN")
    compare_with_golden(golden, {"new.json": b"[1]"})  # the next, normal run passes


def test_ci_refuses_to_run_in_update_mode():
    import subprocess

    done = subprocess.run(["bash", str(ROOT / ".ci" / "run")], capture_output=True, text=True, timeout=60,
                          env={**os.environ, "FLOPS_UPDATE_GOLDEN": "1"})
    assert done.returncode == 2 and "FLOPS_UPDATE_GOLDEN is set" in done.stderr, done


@pytest.mark.parametrize("reference, pulled", [
    ("flops-mlops/backend-store:0.1.0", "registry.example:5000/flops/flops-mlops/backend-store:0.1.0"),
    ("docker.io/library/mysql:8.4.6", "docker.io/library/mysql:8.4.6"),  # names its registry: as is
    ("localhost/mysql:8.4.6", "localhost/mysql:8.4.6"),
    ("mysql:8.4.6", "registry.example:5000/flops/mysql:8.4.6"),
    # pinned by digest (`push-image` prints it): the multi-platform index itself, which each node resolves to its
    # own platform's manifest
    (f"flops-mlops/backend-store@sha256:{'ab' * 32}",
     f"registry.example:5000/flops/flops-mlops/backend-store@sha256:{'ab' * 32}"),
    (f"registry.example:5000/flops-mlops/backend-store@sha256:{'cd' * 32}",
     f"registry.example:5000/flops-mlops/backend-store@sha256:{'cd' * 32}"),
])
def test_oakestra_prefixes_the_registry_to_images_that_name_none(tmp_path, reference, pulled):
    def edit(data):
        data["images"]["mysql"] = reference
        data["oakestra"]["registry"] = "registry.example:5000/flops"

    stores = services(sla.render_all(config_module.load(write_config(tmp_path, edit))))["stores/mysql"]
    assert stores["code"] == pulled


def test_render_is_byte_identical_across_runs_and_check_reports_drift(tmp_path):
    first, second = tmp_path / "a", tmp_path / "b"
    assert run_cli("render", "--out", str(first), config=SHIPPED).returncode == 0
    assert run_cli("render", "--out", str(second), config=SHIPPED).returncode == 0
    for path in first.iterdir():
        assert path.read_bytes() == (second / path.name).read_bytes()
    assert run_cli("render", "--out", str(first), "--check", config=SHIPPED).returncode == 0
    (first / "tracking.json").write_text("{}\n")
    check = run_cli("render", "--out", str(first), "--check", config=SHIPPED)
    assert check.returncode == 1 and "tracking.json" in check.stderr
    assert (first / "tracking.json").read_text() == "{}\n"  # --check writes nothing
    (first / "oldproject.json").write_text("{}\n")
    stray = run_cli("render", "--out", str(first), config=SHIPPED)
    assert stray.returncode == 0 and "oldproject.json is not rendered by this configuration" in stray.stderr


def test_every_rendered_document_passes_the_schema_and_names_fit_old_releases(tmp_path):
    config = config_module.load(write_config(tmp_path, lambda d: d["oakestra"].update(name_limit=10)))
    rendered = sla.render_all(config)
    for item in rendered:
        sla.validate(item.document, item.template, name_limit=10)
    ips = list(rr_ips(rendered).values())
    assert len(ips) == len(set(ips))


def read_secrets(path: Path) -> dict[str, str]:
    return dict(line.split("=", 1) for line in path.read_text().splitlines() if "=" in line and not line.startswith("#"))


# Every secret an Oakestra deployment of configs/oakestra.yaml uses, as the placeholder and where it must be.
PLACEHOLDERS = [
    ("stores/mysql", "MYSQL_ROOT_PASSWORD", "${FLOPS_MYSQL_ADMIN_PASSWORD}"),
    ("stores/mysql", "FLOPS_TENANT_ACME_DB_PASSWORD", "${FLOPS_TENANT_ACME_DB_PASSWORD}"),
    ("stores/ftpacme", "FLOPS_TENANT_ACME_FTP_PASSWORD", "${FLOPS_TENANT_ACME_FTP_PASSWORD}"),
    ("tracking/acme", "FLOPS_DB_PASSWORD", "${FLOPS_TENANT_ACME_DB_PASSWORD}"),
    ("tracking/acme", "FLOPS_FTP_PASSWORD", "${FLOPS_TENANT_ACME_FTP_PASSWORD}"),
    ("tracking/acme", "FLOPS_ADMIN_PASSWORD", "${FLOPS_TENANT_ACME_ADMIN_PASSWORD}"),
    ("tracking/acme", "FLOPS_SECRET_KEY", "${FLOPS_TENANT_ACME_SECRET_KEY}"),
    ("tracking/acme", "FLOPS_FL_USERS", "mnist:${FLOPS_PROJECT_MNIST_PASSWORD}"),
    ("tracking/globex", "FLOPS_ADMIN_PASSWORD", "${FLOPS_TENANT_GLOBEX_ADMIN_PASSWORD}"),
    ("tracking/globex", "FLOPS_SECRET_KEY", "${FLOPS_TENANT_GLOBEX_SECRET_KEY}"),
    ("mnist/aggregator", "MLFLOW_TRACKING_PASSWORD", "${FLOPS_PROJECT_MNIST_PASSWORD}"),
]


def test_no_secret_reaches_a_rendered_file(tmp_path):
    path = write_config(tmp_path)
    assert run_cli("secrets", "init", config=path).returncode == 0
    values = read_secrets(tmp_path / "secrets.env")
    config = config_module.load(path)
    assert sorted(values) == sorted(secrets_module.required_keys(config))  # counted from the file, every key
    out = tmp_path / "out"
    assert run_cli("render", "--out", str(out), config=path).returncode == 0
    text = "".join(p.read_text() for p in out.iterdir())
    for key, value in values.items():
        assert value not in text, key
    rendered = services(sla.render_all(config))
    for name, variable, placeholder in PLACEHOLDERS:
        assert env(rendered[name])[variable] == placeholder, (name, variable)
    for name, service in rendered.items():
        cmd = json.dumps(service.get("cmd", []))
        assert "${" not in cmd and "MLFLOW_TRACKING_PASSWORD" not in cmd, name
        assert not any(value in cmd for value in values.values()), name
        # Placeholders only in environment: nowhere else in the service (volumes, constraints, ...).
        assert "${" not in json.dumps({k: v for k, v in service.items() if k != "environment"}), name


def test_learners_get_no_mlflow_variables_and_no_credentials(tmp_path):
    def two_projects(data):
        data["oakestra"]["projects"].append({"name": "cifar", "tenant": "globex", "slot": 2, "learners": 3})
    rendered = services(sla.render_all(config_module.load(write_config(tmp_path, two_projects))))
    learners = {name: s for name, s in rendered.items() if "/learner" in name}
    assert len(learners) == 5
    for name, service in learners.items():
        for item in service["environment"]:
            assert not item.startswith("MLFLOW_"), (name, item)
            assert "${" not in item and "PASSWORD" not in item and "USERNAME" not in item, (name, item)
        assert "FLOPS_TRACKING_URI" not in env(service), name


@pytest.mark.parametrize("project, tenant_ip, key", [
    ("mnist", "10.30.101.1", "FLOPS_PROJECT_MNIST_PASSWORD"),
    ("cifar", "10.30.101.2", "FLOPS_PROJECT_CIFAR_PASSWORD"),
])
def test_the_aggregator_logs_in_as_its_project_user_with_a_placeholder_push_fills(tmp_path, project, tenant_ip, key):
    def two_projects(data):
        data["oakestra"]["projects"].append({"name": "cifar", "tenant": "globex", "slot": 2, "learners": 1})
    config = config_module.load(write_config(tmp_path, two_projects))
    item = next(r for r in sla.render_all(config) if r.application_name == project)
    aggregator = item.document["applications"][0]["microservices"][0]
    assert aggregator["microservice_name"] == "aggregator"
    assert env(aggregator)["MLFLOW_TRACKING_USERNAME"] == f"fl-{project}"
    assert env(aggregator)["MLFLOW_TRACKING_PASSWORD"] == "${" + key + "}"
    assert env(aggregator)["FLOPS_TRACKING_URI"] == f"https://{tenant_ip}:5000"
    assert env(aggregator)["FLOPS_TRACKING_CA_B64"] == "${file:ca.crt}"
    resolved = sla.resolve_secrets(item.document, {key: "project-Pass_123"}, files={"ca.crt": "Q0E"})
    assert "MLFLOW_TRACKING_PASSWORD=project-Pass_123" in resolved["applications"][0]["microservices"][0]["environment"]


def test_placeholders_resolve_from_the_secrets_file_only_in_environment(tmp_path):
    config = config_module.load(write_config(tmp_path))
    item = next(r for r in sla.render_all(config) if r.application_name == "tracking")
    values = {key: "x" for key in secrets_module.required_keys(config)}
    values.update({"FLOPS_TENANT_ACME_DB_PASSWORD": "db-Pass_1", "FLOPS_TENANT_ACME_FTP_PASSWORD": "ftpPass2"})
    files = {name: "pem" for name in sla.pem_files(config)}
    resolved = sla.resolve_secrets(item.document, values, files=files)
    acme = resolved["applications"][0]["microservices"][0]
    assert "FLOPS_DB_PASSWORD=db-Pass_1" in acme["environment"]
    assert "FLOPS_FTP_PASSWORD=ftpPass2" in acme["environment"]
    assert "FLOPS_DB_HOST=10.30.100.1" in acme["environment"] and "FLOPS_FTP_HOST=10.30.102.1" in acme["environment"]
    assert "${" in json.dumps(item.document)  # the rendered document itself is untouched
    with pytest.raises(ConfigError, match="FLOPS_TENANT_ACME_DB_PASSWORD holds characters"):
        sla.resolve_secrets(item.document, {**values, "FLOPS_TENANT_ACME_DB_PASSWORD": "a'b"}, files=files)
    with pytest.raises(ConfigError, match="FLOPS_TENANT_GLOBEX_FTP_PASSWORD is missing"):
        sla.resolve_secrets(item.document, {k: v for k, v in values.items() if "GLOBEX_FTP" not in k}, files=files)


def test_fl_users_list_the_tenants_projects_and_push_fills_every_placeholder_in_the_value(tmp_path):
    def projects(data):
        data["oakestra"]["projects"].append({"name": "cifar", "tenant": "acme", "slot": 2, "learners": 1})
    config = config_module.load(write_config(tmp_path, projects))
    item = next(r for r in sla.render_all(config) if r.application_name == "tracking")
    acme, globex = item.document["applications"][0]["microservices"]
    assert env(acme)["FLOPS_FL_USERS"] == "mnist:${FLOPS_PROJECT_MNIST_PASSWORD},cifar:${FLOPS_PROJECT_CIFAR_PASSWORD}"
    assert "FLOPS_FL_USERS" not in env(globex)  # no project logs in to globex's server
    values = {key: f"v{i}-{key.lower()}" for i, key in enumerate(secrets_module.required_keys(config))}
    resolved = sla.resolve_secrets(item.document, values, files={name: "pem" for name in sla.pem_files(config)})
    users = env(resolved["applications"][0]["microservices"][0])["FLOPS_FL_USERS"]
    assert users == (f"mnist:{values['FLOPS_PROJECT_MNIST_PASSWORD']},"
                     f"cifar:{values['FLOPS_PROJECT_CIFAR_PASSWORD']}")
    assert "${" not in json.dumps(resolved)


@pytest.mark.parametrize("tenant, index", [("acme", 0), ("globex", 1)])
def test_a_tracking_server_has_no_volume_and_no_node_of_its_own(tmp_path, tenant, index):
    """Its logins are in the backend store (tracking/auth_store.py): nothing pins it, a rescheduled one loses none."""
    config = config_module.load(write_config(tmp_path))
    item = next(r for r in sla.render_all(config) if r.application_name == "tracking")
    service = item.document["applications"][0]["microservices"][index]
    assert service["microservice_name"] == tenant
    assert "volumes" not in service and "target_node" not in service
    assert "FLOPS_AUTH_DB" not in env(service)
    assert service["constraints"] == []  # oakestra.target of configs/oakestra.yaml names no cluster or node


def test_the_stores_keep_their_data_on_a_host_path_of_their_pinned_node(tmp_path):
    rendered = services(sla.render_all(config_module.load(write_config(tmp_path))))
    pinned = [{"type": "direct", "cluster": "cluster1", "node": "worker1"}]
    mysql = rendered["stores/mysql"]
    assert mysql["volumes"] == [{"volume_id": "flops-mysql-data", "csi_driver": "csi.oakestra.io/hostpath",
                                 "mount_path": "/var/lib/mysql",
                                 "config": {"host_path": "/mnt/oakestra/hostpath/flops-mlops/mysql"}}]
    assert mysql["target_node"] == "worker1" and mysql["constraints"] == pinned
    for tenant in ("acme", "globex"):
        ftp = rendered[f"stores/ftp{tenant}"]
        assert ftp["volumes"] == [{"volume_id": f"flops-ftp{tenant}-data", "csi_driver": "csi.oakestra.io/hostpath",
                                   "mount_path": "/srv/ftp",  # the image's FTP root (deploy/images/artifact-store)
                                   "config": {"host_path": f"/mnt/oakestra/hostpath/flops-mlops/ftp/{tenant}"}}]
        assert ftp["target_node"] == "worker1" and ftp["constraints"] == pinned
    assert "VOLUME /srv/ftp" in (ROOT / "deploy" / "images" / "artifact-store" / "Dockerfile").read_text()


def test_a_store_without_settings_keeps_its_data_only_in_its_container(tmp_path):
    def edit(data):
        data["oakestra"]["stores"] = {"artifact_store": {"target_node": "worker2"}}
        data["oakestra"]["stores_target"] = {"cluster": "edge1"}
    rendered = services(sla.render_all(config_module.load(write_config(tmp_path, edit))))
    assert "volumes" not in rendered["stores/mysql"] and "target_node" not in rendered["stores/mysql"]
    assert rendered["stores/mysql"]["constraints"] == [{"type": "direct", "cluster": "edge1"}]
    assert "volumes" not in rendered["stores/ftpacme"]
    assert rendered["stores/ftpacme"]["target_node"] == "worker2"
    assert rendered["stores/ftpacme"]["constraints"] == [{"type": "direct", "cluster": "edge1", "node": "worker2"}]


def test_the_tracking_servers_go_where_target_says(tmp_path):
    def edit(data):
        data["oakestra"]["target"] = {"cluster": "edge1", "node": "disknode"}
        data["oakestra"]["stores"] = {}  # the stores' data only in their containers
        data["oakestra"]["stores_target"] = None
    config = config_module.load(write_config(tmp_path, edit))
    rendered = services(sla.render_all(config))
    for name in ("tracking/acme", "tracking/globex", "mnist/aggregator"):
        assert rendered[name]["constraints"] == [{"type": "direct", "cluster": "edge1", "node": "disknode"}], name
    assert all("volumes" not in s for s in rendered.values())


# --- the service IP plan --------------------------------------------------------------------------


def test_adding_a_tenant_or_project_moves_no_existing_address(tmp_path):
    before = rr_ips(sla.render_all(config_module.load(write_config(tmp_path, name="before.yaml"))))

    def grow(data):
        data["tenants"].insert(0, {"id": "initech"})          # first in the list, new slot
        data["oakestra"]["tenants"].insert(0, {"id": "initech", "slot": 3})
        data["oakestra"]["projects"].insert(0, {"name": "cifar", "tenant": "initech", "slot": 2, "learners": 3})
    after = rr_ips(sla.render_all(config_module.load(write_config(tmp_path, grow, name="after.yaml"))))
    for service, ip in before.items():
        assert after[service] == ip, service
    assert after["tracking/initech"] == "10.30.101.3" and after["stores/ftpinitech"] == "10.30.102.3"
    assert after["cifar/aggregator"] == "10.30.111.1" and after["cifar/learner2"] == "10.30.111.4"
    assert len(set(after.values())) == len(after)


def test_the_plan_follows_the_slots(tmp_path):
    rendered = sla.render_all(config_module.load(write_config(tmp_path)))
    assert rr_ips(rendered) == {
        "stores/mysql": "10.30.100.1", "stores/ftpacme": "10.30.102.1", "stores/ftpglobex": "10.30.102.2",
        "tracking/acme": "10.30.101.1", "tracking/globex": "10.30.101.2",
        "mnist/aggregator": "10.30.110.1", "mnist/learner0": "10.30.110.2", "mnist/learner1": "10.30.110.3",
    }
    mnist = rendered[2].document["applications"][0]["microservices"]
    assert "FLOPS_TRACKING_URI=https://10.30.101.1:5000" in mnist[0]["environment"]
    assert "FLOPS_AGGREGATOR_ADDRESS=10.30.110.1:8080" in mnist[1]["environment"]


# --- configuration errors (table) -----------------------------------------------------------------


def _set(path: str, value):
    def edit(data):
        target = data
        keys = path.split(".")
        for key in keys[:-1]:
            target = target[int(key)] if key.isdigit() else target[key]
        last = keys[-1]
        target[int(last) if last.isdigit() else last] = value
    return edit


CONFIG_ERRORS = [
    ("missing slot", _set("oakestra.tenants", [{"id": "acme", "slot": 1}]),
     "oakestra.tenants: no slot for tenant(s) globex"),
    ("slot reused", _set("oakestra.tenants.1.slot", 1),
     "oakestra.tenants[1].slot: slot 1 is already used by tenant acme"),
    ("slot range", _set("oakestra.tenants.0.slot", 255), "oakestra.tenants[0].slot: expected 1-254, got 255"),
    ("unknown tenant", _set("oakestra.tenants.1.id", "nobody"),
     "oakestra.tenants[1].id: 'nobody' is not in tenants[]"),
    ("unpinned image", _set("images.fl_actor", "flops-mlops/fl-actor:latest"),
     "images.fl_actor: 'flops-mlops/fl-actor:latest' is not a pinned image reference"),
    ("untagged image", _set("images.mysql", "mysql"), "images.mysql: 'mysql' is not a pinned"),
    ("sqlite backend", _set("backend_store.kind", "sqlite"),
     "backend_store.kind: Oakestra tracking servers need mysql"),
    ("reserved project", _set("oakestra.projects.0.name", "tracking"), "oakestra.projects[0].name: 'tracking' must"),
    ("project of unknown tenant", _set("oakestra.projects.0.tenant", "nobody"),
     "oakestra.projects[0].tenant: 'nobody'"),
    ("project block overlaps", _set("oakestra.ip_plan.projects_block", 101),
     "oakestra.projects[0].slot: its addresses 10.30.101.x overlap ip_plan.tracking_block"),
    ("namespace with dash", _set("oakestra.namespace", "flo-ps"), "oakestra.namespace: 'flo-ps' must be 1-30 letters"),
    ("resources as string", _set("oakestra.mysql.memory", "1024"), "oakestra.mysql.memory: expected an integer"),
    ("tracking_target is gone", _set("oakestra.tracking_target", {"cluster": "c", "node": "n"}),
     "oakestra.tracking_target"),
    ("auth_host_path is gone", _set("oakestra.auth_host_path", "/srv/flops/auth"), "oakestra.auth_host_path"),
    ("store volume without a node", _set("oakestra.stores.mysql.target_node", None),
     "oakestra.stores.mysql.target_node: a volume's folder is on one node: name the node"),
    ("store node without a cluster", _set("oakestra.stores_target", None),
     "oakestra.stores.mysql.target_node: set the node's cluster too, in oakestra.stores_target.cluster"),
    ("store node against stores_target", _set("oakestra.stores_target.node", "worker2"),
     "oakestra.stores.mysql.target_node: 'worker1' differs from stores_target.node 'worker2'"),
    ("relative store host path", _set("oakestra.stores.artifact_store.volume.host_path", "ftp"),
     "oakestra.stores.artifact_store.volume.host_path: 'ftp' must be an absolute path"),
    ("store mount path escaping", _set("oakestra.stores.mysql.volume.mount_path", "/var/lib/../../etc"),
     "oakestra.stores.mysql.volume.mount_path: '/var/lib/../../etc' must be an absolute path"),
    ("bad CSI driver", _set("oakestra.stores.mysql.volume.csi_driver", "Host Path"),
     "oakestra.stores.mysql.volume.csi_driver: 'Host Path' is not a CSI driver name"),
    ("unknown volume key", _set("oakestra.stores.mysql.volume.size", 10), "oakestra.stores.mysql.volume.size"),
    ("stores settings without stores",
     lambda d: d["oakestra"].update(run_stores=False) or d["backend_store"].update(host="db.example.org")
     or d["artifact_store"].update(host="ftp.example.org"),
     "oakestra.stores.mysql: applies to the stores application, which run_stores: false does not render"),
    ("loopback external store",
     lambda d: d["oakestra"].update(run_stores=False) or d["backend_store"].update(host="127.0.0.1"),
     "backend_store.host: '127.0.0.1' is not reachable from Oakestra workers"),
]


@pytest.mark.parametrize("edit, expected", [c[1:] for c in CONFIG_ERRORS], ids=[c[0] for c in CONFIG_ERRORS])
def test_configuration_errors_name_the_key_and_value(tmp_path, edit, expected):
    path = write_config(tmp_path, edit)
    with pytest.raises(ConfigError) as info:
        sla.render_all(config_module.load(path))
    assert str(info.value).startswith(str(path)), info.value
    assert expected in str(info.value)


# --- schema violations in templates (table) -------------------------------------------------------

TRACKING_RR_IP = '"addresses": {"rr_ip": {{ t.rr_ip | tojson }}}'  # a volume goes after it in these cases
VIOLATIONS = [
    # (case, template, text to replace, replacement, expected message)
    ("memory as a string", "tracking.json.j2", '"memory": {{ resources.tracking_server.memory | tojson }}',
     '"memory": "1024"', 'tracking.json.j2: applications[0].microservices[0].memory (service acme): "1024": '
                         "'1024' is not of type 'integer'"),
    ("port as a number", "stores.json.j2", '"port": "",\n          "cmd"', '"port": 3306,\n          "cmd"',
     "stores.json.j2: applications[0].microservices[0].port (service mysql): 3306: 3306 is not of type 'string'"),
    ("bad port syntax", "project.json.j2", '"cmd": ["python", "-m", "flops_mlops.fl.aggregator"]',
     '"port": "8080:tcp", "cmd": ["python", "-m", "flops_mlops.fl.aggregator"]',
     'project.json.j2: applications[0].microservices[0].port (service aggregator): "8080:tcp"'),
    ("rr_ip outside 10.30/16", "tracking.json.j2", '"addresses": {"rr_ip": {{ t.rr_ip | tojson }}}',
     '"addresses": {"rr_ip": "10.31.0.5"}',
     'tracking.json.j2: applications[0].microservices[0].addresses.rr_ip (service acme): "10.31.0.5"'),
    ("rr_ip used twice", "tracking.json.j2", '"addresses": {"rr_ip": {{ t.rr_ip | tojson }}}',
     '"addresses": {"rr_ip": "10.30.101.9"}',
     'tracking.json.j2: applications[0].microservices[1].addresses.rr_ip (service globex): "10.30.101.9": '
     "already used by tracking/acme"),
    ("rr_ip of another application", "tracking.json.j2", '"addresses": {"rr_ip": {{ t.rr_ip | tojson }}}',
     '"addresses": {"rr_ip": "10.30.100.1"}', '"10.30.100.1": already used by stores/mysql'),
    ("name with a dash", "tracking.json.j2", '"application_name": "tracking"', '"application_name": "mlops-tracking"',
     'tracking.json.j2: applications[0].application_name: "mlops-tracking": '),
    ("unknown key (typo)", "tracking.json.j2", '"vcpus":', '"vcpu":', "tracking.json.j2: applications[0]."
                                                                        "microservices[0] (service acme): "),
    ("old sla_version", "stores.json.j2", '"sla_version": "v2.0"', '"sla_version": "v1.0"',
     'stores.json.j2: sla_version: "v1.0": \'v2.0\' was expected'),
    ("secret in cmd", "project.json.j2", '"flops_mlops.fl.aggregator"]', '"flops_mlops.fl.aggregator", "${FLOPS_X}"]',
     "project.json.j2: applications[0].microservices[0].cmd: "),
    ("unknown secret", "tracking.json.j2", 'secret(t.ftp_password_key)', '"${FLOPS_NOPE}"',
     "${FLOPS_NOPE} is not a secret of this configuration"),
    ("volume without csi_driver", "tracking.json.j2", TRACKING_RR_IP,
     TRACKING_RR_IP + ', "volumes": [{"volume_id": "x", "mount_path": "/srv/mlflow/auth"}]',
     "tracking.json.j2: applications[0].microservices[0].volumes[0] (service acme): "),
    ("volume config not a string", "tracking.json.j2", TRACKING_RR_IP,
     TRACKING_RR_IP + ', "volumes": [{"volume_id": "x", "csi_driver": "csi.oakestra.io/hostpath", '
     '"config": {"host_path": 1}}]',
     "tracking.json.j2: applications[0].microservices[0].volumes[0].config.host_path (service acme): 1: "),
    ("secret in a volume", "tracking.json.j2", TRACKING_RR_IP,
     TRACKING_RR_IP + ', "volumes": [{"volume_id": "${FLOPS_TENANT_ACME_SECRET_KEY}", '
     '"csi_driver": "csi.oakestra.io/hostpath"}]',
     "tracking.json.j2: applications[0].microservices[0].volumes: "),
    ("undefined variable", "tracking.json.j2", "{{ t.rr_ip | tojson }}", "{{ t.service_ip | tojson }}",
     "tracking.json.j2: 'dict object' has no attribute 'service_ip'"),
    ("not JSON", "tracking.json.j2", '"tracking-server"],', '"tracking-server"],,',
     "tracking.json.j2: rendered text is not JSON"),
]


@pytest.mark.parametrize("template, old, new, expected", [v[1:] for v in VIOLATIONS], ids=[v[0] for v in VIOLATIONS])
def test_schema_violations_name_template_field_and_value(tmp_path, template, old, new, expected):
    templates = tmp_path / "templates"
    shutil.copytree(sla.TEMPLATES_DIR, templates)
    text = (templates / template).read_text()
    assert old in text, "the case no longer matches the template"
    (templates / template).write_text(text.replace(old, new))
    config = config_module.load(write_config(tmp_path))
    with pytest.raises(ConfigError) as info:
        sla.render_all(config, templates)
    assert expected in str(info.value)


def test_name_limit_of_old_releases_is_enforced(tmp_path):
    def edit(data):
        data["tenants"].append({"id": "initechcorp"})
        data["oakestra"]["tenants"].append({"id": "initechcorp", "slot": 7})
        data["oakestra"]["name_limit"] = 10
    path = write_config(tmp_path, edit)
    out = tmp_path / "out"
    result = run_cli("render", "--out", str(out), config=path)
    assert result.returncode == 2
    assert ('stores.json.j2: applications[0].microservices[3].microservice_name (service ftpinitechcorp): '
            '"ftpinitechcorp": longer than 10 characters (oakestra.name_limit)') in result.stderr
    assert not out.exists()  # nothing is written


def test_a_violation_writes_nothing_even_when_earlier_documents_were_fine(tmp_path):
    templates = tmp_path / "templates"
    shutil.copytree(sla.TEMPLATES_DIR, templates)
    project = templates / "project.json.j2"
    project.write_text(project.read_text().replace('"storage": {{ resources.learner.storage | tojson }}',
                                                   '"storage": 1.5'))
    out = tmp_path / "out"
    result = run_cli("render", "--out", str(out), "--templates", str(templates), config=write_config(tmp_path))
    assert result.returncode == 2
    assert 'project.json.j2: applications[0].microservices[1].storage (service learner0): 1.5:' in result.stderr
    assert not out.exists()


def test_placement_constraints_and_external_stores(tmp_path):
    def edit(data):
        data["oakestra"]["target"] = {"cluster": "edge1", "node": None}
        data["oakestra"]["stores_target"] = {"cluster": None, "node": "disknode"}
        data["oakestra"]["run_stores"] = False
        data["oakestra"]["stores"] = {}
        data["oakestra"]["tracking_host_port_base"] = None
        data["backend_store"]["host"] = "db.example.org"
        data["artifact_store"]["host"] = "ftp.example.org"
    rendered = sla.render_all(config_module.load(write_config(tmp_path, edit)))
    assert [r.file_name for r in rendered] == ["tracking.json", "mnist.json"]
    acme = rendered[0].document["applications"][0]["microservices"][0]
    assert acme["constraints"] == [{"type": "direct", "cluster": "edge1"}]  # target: nothing pins it further
    for service in rendered[1].document["applications"][0]["microservices"]:
        assert service["constraints"] == [{"type": "direct", "cluster": "edge1"}]
    assert acme["port"] == ""
    assert "FLOPS_DB_HOST=db.example.org" in acme["environment"]
    assert "FLOPS_FTP_HOST=ftp.example.org" in acme["environment"]
    assert "FLOPS_FTP_PASSWORD=${FLOPS_TENANT_ACME_FTP_PASSWORD}" in acme["environment"]


def test_stores_can_be_placed_apart_from_the_other_services(tmp_path):
    def edit(data):
        data["oakestra"]["target"] = {"cluster": "edge1"}
        data["oakestra"]["stores_target"] = {"node": "disknode"}
        data["oakestra"]["stores"] = {}
    config = config_module.load(write_config(tmp_path, edit))
    rendered = {r.application_name: r.document for r in sla.render_all(config)}
    for service in rendered["stores"]["applications"][0]["microservices"]:
        assert service["constraints"] == [{"type": "direct", "node": "disknode"}]
    for service in rendered["mnist"]["applications"][0]["microservices"]:
        assert service["constraints"] == [{"type": "direct", "cluster": "edge1"}]
    for service in rendered["tracking"]["applications"][0]["microservices"]:
        assert service["constraints"] == [{"type": "direct", "cluster": "edge1"}]  # as the other stateless ones


def test_cmd_of_our_images_is_their_entrypoint(tmp_path):
    """Oakestra's cmd replaces ENTRYPOINT and CMD: it must start the image the way its Dockerfile does
    (for the artifact store: tini first, or vsftpd as PID 1 exits after an upload)."""
    entrypoints = {}
    for dockerfile in (ROOT / "deploy" / "images").glob("*/Dockerfile"):
        image = dockerfile.parent.name  # a Dockerfile of one image, or a stage (build target) named after it
        for line in dockerfile.read_text().splitlines():
            if line.startswith("FROM "):
                image = line.split(" AS ")[1].strip() if " AS " in line else dockerfile.parent.name
            if line.startswith("ENTRYPOINT "):
                entrypoints[image] = json.loads(line.removeprefix("ENTRYPOINT "))
    assert set(entrypoints) == {"artifact-store", "backend-store", "tracking-server", "model-server"}

    def serve_mnist(data):
        data["oakestra"]["projects"][0]["serve"] = True

    config = config_module.load(write_config(tmp_path, serve_mnist))
    checked = set()
    for rendered in sla.render_all(config):
        for service in rendered.document["applications"][0]["microservices"]:
            image = service["code"].rsplit("/", 1)[-1].split(":")[0]
            if image == "backend-store":  # writes the tenants' SQL into initdb.d, then execs the entrypoint
                entrypoint = Path(entrypoints[image][0])
                assert entrypoint.parent == Path("/usr/local/bin")  # on PATH, so `exec <name>` finds it
                assert service["cmd"][:2] == ["sh", "-c"]
                assert service["cmd"][2].endswith(f"; exec {entrypoint.name} mysqld"), service["cmd"][2][-80:]
                checked.add(image)
            elif image in entrypoints:
                assert service["cmd"] == entrypoints[image], service["microservice_name"]
                checked.add(image)
    assert checked == set(entrypoints)


def test_config_check_runs_the_oakestra_checks_too(tmp_path):
    def reuse_a_slot(data):
        data["oakestra"]["tenants"][1]["slot"] = data["oakestra"]["tenants"][0]["slot"]

    result = run_cli("config", "check", config=write_config(tmp_path, reuse_a_slot))
    assert result.returncode == 2
    assert "oakestra.tenants" in result.stderr


# --- hierarchical projects ------------------------------------------------------------------------

HIERARCHICAL_GOLDEN = Path(__file__).parent / "golden" / "oakestra-hierarchical"


def add_fleet(data):
    """A hierarchical project beside mnist: 2 clusters x 2 learners, 2 cycles x 2 rounds."""
    data["oakestra"]["projects"].append({"name": "fleet", "tenant": "acme", "slot": 2, "learners": 2, "rounds": 2,
                                         "mode": "hierarchical", "clusters": ["factory", "district"], "cycles": 2,
                                         "min_clusters": 1})


def test_a_hierarchical_project_renders_its_golden_file(tmp_path):
    rendered = {r.file_name: r for r in sla.render_all(config_module.load(write_config(tmp_path, add_fleet)))}
    compare_with_golden(HIERARCHICAL_GOLDEN, {"fleet.json": rendered["fleet.json"].file.text.encode()})
    # mnist (classic) renders as before
    assert rendered["mnist.json"].file.text.encode() == (GOLDEN / "mnist.json").read_bytes()


def test_hierarchical_services_are_pinned_to_their_cluster_and_only_the_root_logs(tmp_path):
    from flops_mlops.fl.settings import from_environment

    rendered = services(sla.render_all(config_module.load(write_config(tmp_path, add_fleet))))
    fleet = {name.split("/")[1]: service for name, service in rendered.items() if name.startswith("fleet/")}
    assert sorted(fleet) == ["aggregator", "cluster0", "cluster1", "learner0", "learner1", "learner2", "learner3"]
    pinned = {"factory": ["cluster0", "learner0", "learner1"], "district": ["cluster1", "learner2", "learner3"]}
    for cluster, names in pinned.items():
        for name in names:
            assert fleet[name]["constraints"] == [{"type": "direct", "cluster": cluster},
                                                  {"type": "clusters", "allowed": [cluster]}], name
    assert "constraints" not in fleet["aggregator"]  # the shipped target leaves the root to the scheduler
    root = env(fleet["aggregator"])
    assert (root["FLOPS_MODE"], root["FLOPS_CLUSTERS"], root["FLOPS_CYCLES"], root["FLOPS_MIN_CLUSTERS"],
            root["FLOPS_LEARNERS"]) == ("hierarchical", "2", "2", "1", "2")
    assert root["MLFLOW_TRACKING_USERNAME"] == "fl-fleet"
    root_address = f"{fleet['aggregator']['addresses']['rr_ip']}:8080"
    for k in (0, 1):
        cluster = env(fleet[f"cluster{k}"])
        assert fleet[f"cluster{k}"]["cmd"] == ["python", "-m", "flops_mlops.fl.cluster"]
        assert (cluster["FLOPS_AGGREGATOR_ADDRESS"], cluster["FLOPS_CLUSTER_INDEX"], cluster["FLOPS_LEARNERS"]) == \
            (root_address, str(k), "2")
        for i in (2 * k, 2 * k + 1):
            learner = env(fleet[f"learner{i}"])
            assert learner["FLOPS_AGGREGATOR_ADDRESS"] == f"{fleet[f'cluster{k}']['addresses']['rr_ip']}:8080"
            assert (learner["FLOPS_LEARNER_INDEX"], learner["FLOPS_LEARNERS"]) == (str(i), "4")  # the data split
    for name, service in fleet.items():
        if name != "aggregator":
            assert not [key for key in env(service) if key.startswith("MLFLOW_")], name
    # every process accepts the settings its service gets
    for name, role in (("aggregator", "aggregator"), ("cluster1", "cluster"), ("learner3", "learner")):
        variables = {key: value for key, value in env(fleet[name]).items() if key.startswith("FLOPS_")}
        with pytest.MonkeyPatch.context() as patch:
            for key, value in variables.items():
                patch.setenv(key, value)
            assert from_environment([], role, "test")


HIERARCHICAL_ERRORS = [
    ("classic with clusters", {"clusters": ["factory"]},
     "oakestra.projects[1].clusters: only for mode: hierarchical"),
    ("hierarchical without clusters", {"mode": "hierarchical"},
     "oakestra.projects[1].clusters: mode hierarchical needs the clusters"),
    ("a cluster twice", {"mode": "hierarchical", "clusters": ["factory", "factory"]},
     "oakestra.projects[1].clusters[1]: cluster 'factory' is listed twice"),
    ("min_clusters above the clusters", {"mode": "hierarchical", "clusters": ["factory"], "min_clusters": 2},
     "oakestra.projects[1].min_clusters: expected 0 (all) to 1 (the project's clusters), got 2"),
    ("a bad cluster name", {"mode": "hierarchical", "clusters": ["a b"]},
     "'a b' is not an Oakestra cluster name"),
    ("an unknown mode", {"mode": "tiered"}, "oakestra.projects[1].mode"),
    ("too many learners", {"mode": "hierarchical", "clusters": [f"c{k}" for k in range(5)], "learners": 20},
     "oakestra.projects[1].learners: 5 clusters x 20 learners do not fit one project"),
]


@pytest.mark.parametrize("fields, expected", [c[1:] for c in HIERARCHICAL_ERRORS],
                         ids=[c[0] for c in HIERARCHICAL_ERRORS])
def test_hierarchical_configuration_errors_name_the_key_and_value(tmp_path, fields, expected):
    def edit(data):
        data["oakestra"]["projects"].append({"name": "fleet", "tenant": "acme", "slot": 2, **fields})

    path = write_config(tmp_path, edit)
    with pytest.raises(ConfigError) as info:
        sla.render_all(config_module.load(path))
    assert expected in str(info.value)


def test_the_schema_refuses_a_clusters_constraint_without_allowed_clusters():
    document = json.loads((HIERARCHICAL_GOLDEN / "fleet.json").read_text())
    document["applications"][0]["microservices"][1]["constraints"][1] = {"type": "clusters", "allowed": []}
    with pytest.raises(sla.SlaError, match="allowed"):
        sla.validate(document, "project.json.j2")
