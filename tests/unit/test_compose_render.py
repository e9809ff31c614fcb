"""Compose from the configuration: `flops-mlops render --target compose` for one tenant (the compose.yaml at the
root) and for several, and the artifact-store image's list of FTP users. The rendered stacks run for real in
tests/compose/."""

from __future__ import annotations

import os
import re
import subprocess
from pathlib import Path

import pytest
import yaml
from conftest import ROOT, run_cli

ENTRYPOINT = ROOT / "deploy" / "images" / "artifact-store" / "entrypoint.sh"


def write_config(folder: Path, tenants: list[dict], **changes) -> Path:
    """configs/compose.yaml with other tenants, its secrets file in ``folder``."""
    data = yaml.safe_load((ROOT / "configs" / "compose.yaml").read_text(encoding="utf-8"))
    data.update(state_dir=str(folder / "state"), secrets_file=str(folder / "secrets.env"), tenants=tenants)
    for key, value in changes.items():
        section, _, name = key.partition(".")
        data[section][name] = value
    path = folder / "stack.yaml"
    path.write_text(yaml.safe_dump(data, sort_keys=False), encoding="utf-8")
    return path


def render(tmp_path: Path, tenants: list[dict], **changes) -> dict:
    config = write_config(tmp_path, tenants, **changes)
    run_cli("render", "--target", "compose", "--out", str(tmp_path / "out"), config=config, check=True)
    return yaml.safe_load((tmp_path / "out" / "compose.yaml").read_text(encoding="utf-8"))


def test_the_root_compose_yaml_is_the_render_of_configs_compose_yaml():
    result = run_cli("render", "--target", "compose", "--out", ".", "--check", config=ROOT / "configs" / "compose.yaml")
    assert result.returncode == 0, result.stderr
    assert "all 2 file(s) are up to date" in result.stdout


def test_check_names_a_file_that_drifted(tmp_path):
    config = write_config(tmp_path, [{"id": "default"}])
    run_cli("render", "--target", "compose", "--out", str(tmp_path / "out"), config=config, check=True)
    compose_file = tmp_path / "out" / "compose.yaml"
    compose_file.write_text(compose_file.read_text() + "# edited by hand\n")
    result = run_cli("render", "--target", "compose", "--out", str(tmp_path / "out"), "--check", config=config)
    assert result.returncode == 1
    assert f"differs from the configuration: {compose_file}" in result.stderr


def test_every_tenant_gets_its_database_ftp_user_and_tracking_server(tmp_path):
    document = render(tmp_path, [{"id": "default"}, {"id": "acme"}, {"id": "globex", "port": 5100}])
    services = document["services"]
    assert set(services) == {"backend-store", "artifact-store", "tracking-volumes", "tracking-server",
                             "tracking-server-acme", "tracking-server-globex", "fl-aggregator", "fl-learner-0", "fl-learner-1", "model-server"}
    assert set(document["volumes"]) == {"backend-store", "artifact-store", "tracking-auth", "tracking-auth-acme",
                                        "tracking-auth-globex"}
    backend = services["backend-store"]["environment"]
    for tenant in ("DEFAULT", "ACME", "GLOBEX"):
        assert backend[f"FLOPS_TENANT_{tenant}_DB_PASSWORD"] == \
            f"${{FLOPS_TENANT_{tenant}_DB_PASSWORD:?set by flops-mlops secrets init}}"
    initdb = (tmp_path / "out" / "deploy/compose/backend-store/initdb.d/10-flops-tenants.sh").read_text()
    for database in ("mlflow_default", "mlflow_acme", "mlflow_globex"):
        assert f"CREATE DATABASE IF NOT EXISTS `{database}`" in initdb
    store = services["artifact-store"]["environment"]
    assert store["FLOPS_FTP_USERS"].split() == ["flops_default=FLOPS_TENANT_DEFAULT_FTP_PASSWORD",
                                                "flops_acme=FLOPS_TENANT_ACME_FTP_PASSWORD",
                                                "flops_globex=FLOPS_TENANT_GLOBEX_FTP_PASSWORD"]
    # Each server: its own tenant, stores logins, login database and published port (base_port + position,
    # or the tenant's own port), overridable per tenant.
    for service, tenant, variable, port in (("tracking-server", "default", "FLOPS_TRACKING_PORT", 5000),
                                            ("tracking-server-acme", "acme", "FLOPS_TENANT_ACME_TRACKING_PORT", 5001),
                                            ("tracking-server-globex", "globex", "FLOPS_TENANT_GLOBEX_TRACKING_PORT",
                                             5100)):
        environment = services[service]["environment"]
        assert environment["FLOPS_TENANT"] == tenant
        assert environment["FLOPS_DB_PASSWORD"].startswith(f"${{FLOPS_TENANT_{tenant.upper()}_DB_PASSWORD:?")
        assert environment["FLOPS_FTP_PASSWORD"].startswith(f"${{FLOPS_TENANT_{tenant.upper()}_FTP_PASSWORD:?")
        assert environment["FLOPS_ADMIN_PASSWORD"].startswith(f"${{FLOPS_TENANT_{tenant.upper()}_ADMIN_PASSWORD:?")
        assert environment["FLOPS_PUBLIC_PORT"] == f"${{{variable}:-{port}}}"
        assert services[service]["ports"] == [f"${{FLOPS_TRACKING_BIND_ADDRESS:-127.0.0.1}}:${{{variable}:-{port}}}:5000"]
        volume = "tracking-auth" if tenant == "default" else f"tracking-auth-{tenant}"
        assert services[service]["volumes"] == [f"{volume}:/srv/mlflow/auth"]
        # ... and a uid of its own, which tracking-volumes gives that volume to first.
        uid = {"default": 20001, "acme": 20002, "globex": 20003}[tenant]
        assert services[service]["user"] == f"{uid}:{uid}"
        assert f"{uid}:{tenant}" in services["tracking-volumes"]["command"]
        assert f"{volume}:/auth/{tenant}" in services["tracking-volumes"]["volumes"]
        assert services[service]["depends_on"]["tracking-volumes"] == {"condition": "service_completed_successfully"}
        assert ("FLOPS_FL_USERS" in environment) == (tenant == "default")  # the fl profile's tenant: the first


def test_the_fl_profile_prints_links_a_browser_on_this_machine_opens(tmp_path):
    document = render(tmp_path, [{"id": "acme"}], **{"tracking.public_host": "mlflow.example.org",
                                                     "tracking.base_port": 5500})
    aggregator = document["services"]["fl-aggregator"]["environment"]
    assert aggregator["FLOPS_TRACKING_URI"] == "https://tracking-server:5000"  # inside the compose network
    assert aggregator["FLOPS_UI_URL"] == "https://${FLOPS_PUBLIC_HOST:-mlflow.example.org}:${FLOPS_TRACKING_PORT:-5500}"


def test_the_fl_profile_runs_the_project_of_compose_fl(tmp_path):
    """compose.fl, the same keys as an Oakestra project: 3 classic learners, rounds, flavour, name."""
    document = render(tmp_path, [{"id": "default"}], **{"compose.fl": {
        "name": "Digits", "learners": 3, "rounds": 7, "flavor": "pytorch", "min_learners": 2}})
    services = document["services"]
    assert {name for name in services if name.startswith("fl-")} == {"fl-aggregator", *(f"fl-learner-{i}"
                                                                                        for i in range(3))}
    aggregator = services["fl-aggregator"]["environment"]
    assert (aggregator["FLOPS_PROJECT"], aggregator["FLOPS_ROUNDS"], aggregator["FLOPS_FLAVOR"]) == (
        "${FLOPS_FL_PROJECT:-Digits}", "${FLOPS_FL_ROUNDS:-7}", "${FLOPS_FL_FLAVOR:-pytorch}")  # .env may override
    assert (aggregator["FLOPS_LEARNERS"], aggregator["FLOPS_MIN_LEARNERS"]) == ("3", "2")
    assert aggregator["MLFLOW_TRACKING_USERNAME"] == "fl-${FLOPS_FL_PROJECT:-Digits}"
    assert services["tracking-server"]["environment"]["FLOPS_FL_USERS"].startswith("${FLOPS_FL_PROJECT:-Digits}:")
    assert set(services["fl-aggregator"]["depends_on"]) == {"tracking-server", "fl-learner-0", "fl-learner-1",
                                                            "fl-learner-2"}
    for i in range(3):
        learner = services[f"fl-learner-{i}"]
        assert (learner["environment"]["FLOPS_LEARNER_INDEX"], learner["environment"]["FLOPS_LEARNERS"]) == (str(i), "3")
        assert learner["environment"]["FLOPS_AGGREGATOR_ADDRESS"] == "fl-aggregator:9092"
        assert learner["volumes"] == [f"${{FLOPS_FL_DATA:-./.flops/fl-data}}/learner-{i}:/srv/fl/data:ro"]


def test_a_hierarchical_compose_fl_runs_a_root_over_cluster_aggregators(tmp_path):
    """FLOps' hierarchical mode from compose.fl: the aggregator is the root (the only one with a login), one
    cluster aggregator per cluster joins it, and each cluster's learners (numbered across clusters, the data split
    of all of them) join their cluster's aggregator."""
    document = render(tmp_path, [{"id": "default"}], **{"compose.fl": {
        "mode": "hierarchical", "clusters": ["factory", "district", "fleet"], "learners": 2, "cycles": 4,
        "rounds": 2, "min_clusters": 2, "min_learners": 1}})
    services = document["services"]
    assert {name for name in services if name.startswith("fl-")} == {
        "fl-aggregator", "fl-cluster-0", "fl-cluster-1", "fl-cluster-2", *(f"fl-learner-{i}" for i in range(6))}
    root = services["fl-aggregator"]["environment"]
    assert {key: root[key] for key in ("FLOPS_MODE", "FLOPS_CLUSTERS", "FLOPS_LEARNERS", "FLOPS_CYCLES",
                                       "FLOPS_ROUNDS", "FLOPS_MIN_CLUSTERS")} == {
        "FLOPS_MODE": "hierarchical", "FLOPS_CLUSTERS": "3", "FLOPS_LEARNERS": "2",
        "FLOPS_CYCLES": "${FLOPS_FL_CYCLES:-4}", "FLOPS_ROUNDS": "${FLOPS_FL_ROUNDS:-2}", "FLOPS_MIN_CLUSTERS": "2"}
    assert set(services["fl-aggregator"]["depends_on"]) == {"tracking-server", "fl-cluster-0", "fl-cluster-1",
                                                            "fl-cluster-2"}
    for k in range(3):
        cluster = services[f"fl-cluster-{k}"]
        assert cluster["command"] == ["python", "-m", "flops_mlops.fl.cluster"]
        assert {key: cluster["environment"][key] for key in ("FLOPS_CLUSTER_INDEX", "FLOPS_LEARNERS",
                                                             "FLOPS_MIN_LEARNERS", "FLOPS_AGGREGATOR_ADDRESS")} == {
            "FLOPS_CLUSTER_INDEX": str(k), "FLOPS_LEARNERS": "2", "FLOPS_MIN_LEARNERS": "1",
            "FLOPS_AGGREGATOR_ADDRESS": "fl-aggregator:9092"}
        assert set(cluster["depends_on"]) == {f"fl-learner-{2 * k}", f"fl-learner-{2 * k + 1}"}
    for i in range(6):
        learner = services[f"fl-learner-{i}"]["environment"]
        assert (learner["FLOPS_LEARNER_INDEX"], learner["FLOPS_LEARNERS"]) == (str(i), "6")
        assert learner["FLOPS_AGGREGATOR_ADDRESS"] == f"fl-cluster-{i // 2}:9093"
    # Only the root logs in: cluster aggregators and learners get no MLflow variable and no password.
    for name, service in services.items():
        if name.startswith("fl-") and name != "fl-aggregator":
            assert not [key for key in service["environment"] if "TRACKING" in key or key.startswith("MLFLOW")
                        or "PASSWORD" in key or "SECRET" in key], name


@pytest.mark.parametrize("fl, message", [
    ({"mode": "hierarchical"}, "compose.fl.clusters: mode hierarchical needs the clusters"),
    ({"cycles": 3}, "compose.fl.cycles: only for mode: hierarchical"),
    ({"mode": "hierarchical", "clusters": ["a", "a"]}, "compose.fl.clusters[1]: cluster 'a' is listed twice"),
    ({"mode": "hierarchical", "clusters": ["a"], "min_clusters": 2},
     "compose.fl.min_clusters: expected 0 (all) to 1 (the project's clusters), got 2"),
    ({"learners": 2, "min_learners": 3}, "compose.fl.min_learners: expected 0 (all) to 2 (the project's learners), "
                                         "got 3"),
    ({"mode": "tiered"}, "compose.fl.mode"),
    ({"name": "my-project"}, "compose.fl.name"),
])
def test_a_bad_compose_fl_is_refused_naming_its_key(tmp_path, fl, message):
    config = write_config(tmp_path, [{"id": "default"}], **{"compose.fl": fl})
    result = run_cli("render", "--target", "compose", "--out", str(tmp_path / "out"), config=config)
    assert result.returncode == 2 and message in result.stderr and str(config) in result.stderr, result.stderr
    assert not (tmp_path / "out").exists()


def test_nothing_rendered_holds_a_secret_value(tmp_path):
    config = write_config(tmp_path, [{"id": "default"}, {"id": "acme"}])
    run_cli("secrets", "init", config=config, check=True)
    run_cli("render", "--target", "compose", "--out", str(tmp_path / "out"), config=config, check=True)
    secrets = [line.split("=", 1)[1] for line in (tmp_path / "secrets.env").read_text().splitlines()
               if "=" in line and not line.startswith("#")]
    for path in (tmp_path / "out").rglob("*"):
        if path.is_file():
            text = path.read_text()
            assert not [value for value in secrets if value in text], path


@pytest.mark.parametrize("changes, message", [
    ({"backend_store.kind": "sqlite"}, "backend_store.kind: compose runs MySQL, so expected mysql, got 'sqlite'"),
    ({"artifact_store.kind": "embedded", "artifact_store.tls": False},
     "artifact_store.kind: compose runs vsftpd, so expected vsftpd, got 'embedded'"),
    # Certificates of the user's own are for `up`: compose hands each server the one `secrets init` made for it.
    ({"tracking.tls_certificate": str(ROOT / "README.md"), "tracking.tls_key": str(ROOT / "README.md")},
     "tracking.tls_certificate: compose serves the certificates `secrets init` makes from the deployment's CA, "
     "so expected none, got"),
])
def test_a_configuration_compose_cannot_run_is_refused_and_nothing_is_written(tmp_path, changes, message):
    config = write_config(tmp_path, [{"id": "default"}], **changes)
    result = run_cli("render", "--target", "compose", "--out", str(tmp_path / "out"), config=config)
    assert result.returncode == 2 and message in result.stderr and str(config) in result.stderr
    assert not (tmp_path / "out").exists()


def test_sla_templates_are_an_oakestra_option(tmp_path):
    config = write_config(tmp_path, [{"id": "default"}])
    result = run_cli("render", "--target", "compose", "--out", str(tmp_path), "--templates", "sla_templates",
                     config=config)
    assert result.returncode == 2 and "--templates: only for --target oakestra" in result.stderr


def test_ftps_gives_the_store_its_key_as_a_file_and_the_tracking_servers_only_the_ca(tmp_path):
    """artifact_store.tls (on in configs/compose.yaml): certificate and key reach the artifact store as files
    mounted from beside the secrets file, the tracking servers get the CA alone and verify the store with it."""
    document = render(tmp_path, [{"id": "default"}, {"id": "acme"}],
                      **{"tracking.tls": False, "backend_store.tls": False})
    services = document["services"]
    mounted = {s["source"]: s["target"] for s in services["artifact-store"]["secrets"]}
    assert mounted == {"ftp-tls-certificate": "/etc/flops-tls/ftp.crt", "ftp-tls-key": "/etc/flops-tls/ftp.key",
                       "deployment-ca": "/etc/flops-tls/ca.crt"}
    assert services["artifact-store"]["environment"]["FLOPS_FTP_TLS"] == "true"
    for name in ("tracking-server", "tracking-server-acme"):
        assert services[name]["secrets"] == [{"source": "deployment-ca", "target": "/etc/flops-tls/ca.crt"}]
        assert services[name]["environment"]["FLOPS_FTP_TLS"] == "true"
        assert services[name]["environment"]["FLOPS_FTP_CA_FILE"] == "/etc/flops-tls/ca.crt"
    beside = "${FLOPS_SECRETS_FILE:-../secrets.env}"  # the secrets file, relative to the compose project
    assert document["secrets"] == {"deployment-ca": {"file": f"{beside}.ca.crt"},
                                   "ftp-tls-certificate": {"file": f"{beside}.ftp-tls.crt"},
                                   "ftp-tls-key": {"file": f"{beside}.ftp-tls.key"}}
    assert not any("FLOPS_FTP_TLS" in str(s.get("environment", "")) or "secrets" in s
                   for name, s in services.items() if name not in ("artifact-store", "tracking-server",
                                                                   "tracking-server-acme"))


def test_every_hop_on_gives_keys_only_to_root_and_clients_only_the_ca(tmp_path):
    """configs/compose.yaml as shipped (every hop TLS): the keys reach only root-run parts (vsftpd's listener,
    backend-store's entrypoint, tracking-volumes, which copies each tenant's pair into its own volume for its
    uid); the tracking servers serve HTTPS and verify MySQL and FTPS; every client gets the CA alone."""
    document = render(tmp_path, [{"id": "default"}, {"id": "acme"}])
    services = document["services"]
    beside = "${FLOPS_SECRETS_FILE:-../secrets.env}"
    assert document["secrets"] == {
        "deployment-ca": {"file": f"{beside}.ca.crt"},
        "ftp-tls-certificate": {"file": f"{beside}.ftp-tls.crt"}, "ftp-tls-key": {"file": f"{beside}.ftp-tls.key"},
        "mysql-tls-certificate": {"file": f"{beside}.mysql-tls.crt"},
        "mysql-tls-key": {"file": f"{beside}.mysql-tls.key"},
        **{f"tracking-tls-{t}-{kind}": {"file": f"{beside}.tracking-{t}.{ext}"}
           for t in ("default", "acme") for kind, ext in (("certificate", "crt"), ("key", "key"))}}
    mounted = {name: {m["source"]: m["target"] for m in s.get("secrets", [])} for name, s in services.items()}
    assert mounted["backend-store"] == {"mysql-tls-certificate": "/etc/flops-tls/mysql.crt",
                                        "mysql-tls-key": "/etc/flops-tls/mysql.key",
                                        "deployment-ca": "/etc/flops-tls/ca.crt"}
    assert "user" not in services["backend-store"]  # root, to give mariadbd its copy of the key (entrypoint.sh)
    assert services["backend-store"]["environment"]["FLOPS_MYSQL_TLS"] == "true"
    assert "--ssl-verify-server-cert" in services["backend-store"]["healthcheck"]["test"][1]
    assert mounted["tracking-volumes"] == {f"tracking-tls-{t}-{kind}": f"/etc/flops-tls/tracking-{t}.{ext}"
                                           for t in ("default", "acme")
                                           for kind, ext in (("certificate", "crt"), ("key", "key"))}
    assert services["tracking-volumes"]["user"] == "0:0" and services["tracking-volumes"]["network_mode"] == "none"
    for name in ("tracking-server", "tracking-server-acme", "fl-aggregator", "model-server"):
        assert mounted[name] == {"deployment-ca": "/etc/flops-tls/ca.crt"}, name
    for name in ("tracking-server", "tracking-server-acme"):
        environment = services[name]["environment"]
        assert {key: environment[key] for key in environment if key.startswith(("FLOPS_TLS", "FLOPS_DB_"))} == {
            "FLOPS_TLS": "true", "FLOPS_TLS_CERTIFICATE_FILE": "/srv/mlflow/auth/tls/tracking.crt",
            "FLOPS_TLS_KEY_FILE": "/srv/mlflow/auth/tls/tracking.key", "FLOPS_TLS_CA_FILE": "/etc/flops-tls/ca.crt",
            "FLOPS_DB_HOST": "backend-store", "FLOPS_DB_PASSWORD": environment["FLOPS_DB_PASSWORD"],
            "FLOPS_DB_TLS": "true", "FLOPS_DB_CA_FILE": "/etc/flops-tls/ca.crt"}
    for name, key in (("fl-aggregator", "FLOPS_TRACKING_URI"), ("model-server", "MLFLOW_TRACKING_URI")):
        environment = services[name]["environment"]
        assert environment[key] == "https://tracking-server:5000"
        assert environment["MLFLOW_TRACKING_SERVER_CERT_PATH"] == "/etc/flops-tls/ca.crt"
    assert not any("INSECURE" in key for s in services.values() for key in s.get("environment", {}))
    assert not any("secrets" in services[f"fl-learner-{i}"] for i in range(2))  # learners talk to no server


def test_plain_ftp_is_one_key_and_mounts_nothing(tmp_path):
    document = render(tmp_path, [{"id": "default"}], **{"artifact_store.tls": False, "tracking.tls": False,
                                                       "backend_store.tls": False})
    assert "secrets" not in document
    assert not any("secrets" in s or "FLOPS_FTP_TLS" in s.get("environment", {})
                   for s in document["services"].values() if isinstance(s.get("environment", {}), dict))


# --- the artifact-store image's FTP users (its checks run before it touches anything) ------------------------


def run_entrypoint(**environment: str) -> subprocess.CompletedProcess:
    return subprocess.run(["sh", str(ENTRYPOINT)], env={"PATH": os.environ["PATH"], **environment},
                          capture_output=True, text=True, timeout=30)


@pytest.mark.parametrize("environment, message", [
    ({}, "FLOPS_FTP_USERS: required"),
    ({"FLOPS_FTP_USERS": "flops_acme"}, "'flops_acme' is not NAME=VARIABLE"),
    ({"FLOPS_FTP_USERS": "Flops=P"}, "'Flops=P' is not NAME=VARIABLE"),
    ({"FLOPS_FTP_USERS": "flops_acme=A;reboot"}, "'flops_acme=A;reboot' is not NAME=VARIABLE"),
    ({"FLOPS_FTP_USERS": "flops_acme=$(id)"}, "is not NAME=VARIABLE"),
    ({"FLOPS_FTP_USERS": "flops_acme=ACME flops_b=B", "ACME": "pw-1"},
     "B: required: the password of FTP user flops_b"),
    ({"FLOPS_FTP_USERS": "flops_acme=ACME", "ACME": "placeholder-run-flops-mlops-secrets-init"},
     "ACME: still the .env.example placeholder"),
    ({"FLOPS_FTP_USERS": "*=*"}, "'*=*' is not NAME=VARIABLE"),
])
def test_the_artifact_store_refuses_a_bad_user_list(environment, message):
    result = run_entrypoint(**environment)
    assert result.returncode == 2, result.stderr
    assert message in result.stderr
    assert not re.search(r"pw-1", result.stderr)


@pytest.mark.parametrize("environment, message", [
    ({"FLOPS_FTP_TLS": "on"}, "FLOPS_FTP_TLS: expected true or false, got 'on'"),
    ({"FLOPS_FTP_TLS": "true", "FLOPS_FTP_TLS_KEY": "/nonexistent/ftp.key", "FLOPS_FTP_TLS_CERT": str(ENTRYPOINT),
      "FLOPS_FTP_CA_FILE": str(ENTRYPOINT)},
     "FLOPS_FTP_TLS is true, but '/nonexistent/ftp.key' is not a readable file (made by flops-mlops secrets init)"),
    ({"FLOPS_FTP_TLS": "true", "FLOPS_FTP_TLS_CERT": "/tmp/a b.crt"}, "FTPS file '/tmp/a b.crt' is not an absolute"),
])
def test_the_artifact_store_refuses_bad_ftps_settings(environment, message):
    result = run_entrypoint(FLOPS_FTP_USERS="flops_acme=ACME", ACME="pw-1", **environment)
    assert result.returncode == 2, result.stderr
    assert message in result.stderr
