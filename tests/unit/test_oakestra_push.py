"""`flops-mlops push` / `undeploy` against a fake root orchestrator (tests/fake_oakestra.py) on loopback.

The fake follows the reference's API facts and quirks (JSON-string bodies, 400 for every service error,
200 null on GET application, expiring tokens, 409 on duplicates, trailing-slash routes, instance POST always
ok, services with 2+ instances deleted only partly).
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import requests
import yaml

from flops_mlops.oakestra.client import Client, OakestraError, check_url, decode

from conftest import ROOT, run_cli
from fake_oakestra import FakeOakestra

SHIPPED = ROOT / "configs" / "oakestra.yaml"
FAST = ["--poll-interval", "0.02", "--timeout", "20"]


class Deployment:
    """A stack configuration, its secrets and an Oakestra account on a fake orchestrator."""

    def __init__(self, tmp_path: Path, fake: FakeOakestra, url: str):
        self.fake, self.url, self.tmp = fake, url, tmp_path
        data = yaml.safe_load(SHIPPED.read_text())
        data["state_dir"] = str(tmp_path / "state")
        data["secrets_file"] = str(tmp_path / "secrets.env")
        self.config = tmp_path / "stack.yaml"
        self.config.write_text(yaml.safe_dump(data, sort_keys=False))
        self.password_file = tmp_path / "oakestra-password"
        self.password_file.write_text("secret\n")
        assert run_cli("secrets", "init", config=self.config).returncode == 0
        self.secrets = dict(line.split("=", 1) for line in (tmp_path / "secrets.env").read_text().splitlines()
                            if "=" in line and not line.startswith("#"))

    def cli(self, command: str, *extra: str, env: dict | None = None):
        args = [command, "--orchestrator", self.url, "--username", "admin", "--password-file",
                str(self.password_file), *extra]
        return run_cli(*args, config=self.config, timeout=120, env=env)

    def push(self, *extra: str):
        return self.cli("push", *FAST, *extra)

    @property
    def state_file(self) -> Path:
        return next((self.tmp / "state" / "oakestra").glob("*.json"))


@pytest.fixture
def deployment(tmp_path):
    made = []

    def factory(**fake_options) -> Deployment:
        fake = FakeOakestra(**fake_options)
        made.append(fake)
        folder = tmp_path / f"d{len(made)}"
        folder.mkdir()
        return Deployment(folder, fake, fake.start())

    yield factory
    for fake in made:
        fake.stop()


def all_running(fake: FakeOakestra) -> dict[str, list[str]]:
    return {f"{s['app_name']}/{s['microservice_name']}": [i["status"] for i in s["instance_list"]]
            for s in fake.services.values()}


EXPECTED_SERVICES = ["mnist/aggregator", "mnist/learner0", "mnist/learner1", "stores/ftpacme", "stores/ftpglobex",
                     "stores/mysql", "tracking/acme", "tracking/globex"]


def test_push_deploys_every_service_to_running_with_secrets_only_in_environment(deployment):
    d = deployment()
    result = d.push()
    assert result.returncode == 0, result.stderr
    assert sorted(all_running(d.fake)) == EXPECTED_SERVICES
    assert all(statuses == ["RUNNING"] for statuses in all_running(d.fake).values())
    assert sorted(a["application_name"] for a in d.fake.apps.values()) == ["mnist", "stores", "tracking"]
    # Deploy order: stores before tracking before the project.
    assert [a["application_name"] for a in d.fake.apps.values()] == ["stores", "tracking", "mnist"]
    # Placeholders were filled in from the secrets file, in environment only: none is left in what was stored.
    acme = d.fake.services_of("tracking")["acme"]
    assert f"FLOPS_DB_PASSWORD={d.secrets['FLOPS_TENANT_ACME_DB_PASSWORD']}" in acme["environment"]
    assert "${" not in json.dumps(list(d.fake.services.values()))
    assert acme["RR_ip"] == "10.30.101.1"
    # Progress and the environment warning on stderr; no secret anywhere in the output.
    assert "returns it to anyone who can read the service" in result.stderr
    assert "flops/tracking/acme: RUNNING" in result.stderr and "NODE_SCHEDULED" in result.stderr
    for value in d.secrets.values():
        assert value not in result.stdout + result.stderr
    assert "pushed 3 application(s)" in result.stdout
    assert json.loads(d.state_file.read_text())["user_id"] == d.fake.user_id()


def environment_of(service: dict) -> dict[str, str]:
    return dict(item.split("=", 1) for item in service["environment"])


def test_push_fills_the_login_secrets_and_stores_the_auth_volume(deployment):
    d = deployment()
    result = d.push()
    assert result.returncode == 0, result.stderr
    project_password = d.secrets["FLOPS_PROJECT_MNIST_PASSWORD"]
    tracking = d.fake.services_of("tracking")
    acme, globex = environment_of(tracking["acme"]), environment_of(tracking["globex"])
    assert acme["FLOPS_ADMIN_PASSWORD"] == d.secrets["FLOPS_TENANT_ACME_ADMIN_PASSWORD"]
    assert acme["FLOPS_SECRET_KEY"] == d.secrets["FLOPS_TENANT_ACME_SECRET_KEY"]
    assert acme["FLOPS_FL_USERS"] == f"mnist:{project_password}"  # a placeholder inside a longer value
    assert globex["FLOPS_ADMIN_PASSWORD"] == d.secrets["FLOPS_TENANT_GLOBEX_ADMIN_PASSWORD"]
    assert "FLOPS_FL_USERS" not in globex
    mnist = d.fake.services_of("mnist")
    aggregator = environment_of(mnist["aggregator"])
    assert aggregator["MLFLOW_TRACKING_USERNAME"] == "fl-mnist"
    assert aggregator["MLFLOW_TRACKING_PASSWORD"] == project_password  # the same password the server sets
    for name in ("learner0", "learner1"):
        learner = mnist[name]["environment"]
        assert not any(item.startswith("MLFLOW_") for item in learner), name
        assert not any(value in item for value in d.secrets.values() for item in learner), name
    assert tracking["acme"]["volumes"] == [{
        "volume_id": "flops-acme-auth", "csi_driver": "csi.oakestra.io/hostpath", "mount_path": "/srv/mlflow/auth",
        "config": {"host_path": "/mnt/oakestra/hostpath/flops-mlops/auth/acme"}}]
    assert tracking["globex"]["constraints"] == [{"type": "direct", "cluster": "cluster1", "node": "worker1"}]
    # No secret in any cmd, and none of the new ones in the output either.
    for service in d.fake.services.values():
        cmd = json.dumps(service.get("cmd", []))
        assert "MLFLOW_TRACKING_PASSWORD" not in cmd and not any(v in cmd for v in d.secrets.values())
    for value in d.secrets.values():
        assert value not in result.stdout + result.stderr


def test_push_again_creates_nothing(deployment):
    d = deployment()
    assert d.push().returncode == 0
    apps, services = dict(d.fake.apps), dict(d.fake.services)
    instances = {sid: list(s["instance_list"]) for sid, s in d.fake.services.items()}
    posts = d.fake.count("POST", r"/api/service/[0-9a-f]+/instance")
    again = d.push()
    assert again.returncode == 0, again.stderr
    assert d.fake.apps.keys() == apps.keys() and d.fake.services.keys() == services.keys()
    assert {sid: len(s["instance_list"]) for sid, s in d.fake.services.items()} == \
           {sid: len(v) for sid, v in instances.items()}
    assert d.fake.count("POST", r"/api/service/[0-9a-f]+/instance") == posts
    assert d.fake.count("POST", "/api/application/") == 3
    assert "flops/tracking: application exists" in again.stderr
    assert "flops/tracking/acme: service exists" in again.stderr


def test_push_adds_only_what_is_missing(deployment):
    d = deployment()
    assert d.push("--app", "tracking").returncode == 0
    # Somebody deleted one service by hand.
    globex = next(sid for sid, s in d.fake.services.items() if s["microservice_name"] == "globex")
    del d.fake.services[globex]
    again = d.push("--app", "tracking")
    assert again.returncode == 0, again.stderr
    assert sorted(s["microservice_name"] for s in d.fake.services.values()) == ["acme", "globex"]
    assert "added service(s) globex" in again.stderr


@pytest.mark.parametrize("field, value", [
    ("code", "docker.io/flops-mlops/tracking-server:0.0.9"),
    ("volumes", [{"volume_id": "flops-acme-auth", "csi_driver": "csi.oakestra.io/hostpath",
                  "mount_path": "/srv/mlflow/auth", "config": {"host_path": "/elsewhere/acme"}}]),
])
def test_a_service_that_differs_from_the_sla_is_reported_not_changed(deployment, field, value):
    d = deployment()
    assert d.push("--app", "tracking").returncode == 0
    d.fake.services_of("tracking")["acme"][field] = value
    again = d.push("--app", "tracking")
    assert again.returncode == 0, again.stderr
    assert f"flops/tracking/acme: service exists; differs from the SLA in {field}" in again.stderr
    assert "undeploy --app tracking, then push" in again.stderr
    assert d.fake.services_of("tracking")["acme"][field] == value


def test_an_existing_application_is_found_after_a_409_with_the_user_id(deployment):
    d = deployment()
    assert d.push("--app", "stores").returncode == 0
    d.state_file.unlink()  # another machine: no recorded user id
    lost = d.push("--app", "stores")
    assert lost.returncode == 1
    assert "POST /api/application/: HTTP 409:" in lost.stderr and "pass --user-id" in lost.stderr
    found = d.push("--app", "stores", "--user-id", d.fake.user_id())
    assert found.returncode == 0, found.stderr
    assert len(d.fake.apps) == 1 and len(d.fake.services) == 3


def test_expired_tokens_are_refreshed_and_renewed_by_login(deployment):
    d = deployment(token_lifetime=0.15, refresh_lifetime=0.6)
    result = d.push("--poll-interval", "0.1")
    assert result.returncode == 0, result.stderr
    assert d.fake.count("POST", "/api/auth/refresh") >= 1
    assert d.fake.count("POST", "/api/auth/login") >= 2  # the refresh token expired too
    assert any(status == 401 for _, _, status in d.fake.calls)


def test_tokens_lost_in_an_orchestrator_restart_are_renewed(deployment):
    d = deployment()
    assert d.push("--app", "stores").returncode == 0
    logins = d.fake.count("POST", "/api/auth/login")
    d.fake.restart_at = r"/api/service/[0-9a-f]+"  # restarts during the status checks
    result = d.push("--app", "stores")
    assert result.returncode == 0, result.stderr
    assert ("GET", "422") in {(m, str(status)) for m, _, status in d.fake.calls}
    assert d.fake.count("POST", "/api/auth/refresh") >= 1  # tried first, refused: the refresh token is gone too
    assert d.fake.count("POST", "/api/auth/login") == logins + 2


def test_api_errors_show_call_status_and_body(deployment):
    d = deployment()
    # Another user's service already holds the MySQL service IP: the orchestrator refuses ours with a 400.
    d.fake.services["f" * 24] = {"microservice_name": "other", "applicationID": "x", "RR_ip": "10.30.100.1",
                                 "instance_list": [], "app_name": "other", "environment": []}
    result = d.push()
    assert result.returncode == 1
    assert 'error: POST /api/service/: HTTP 400: {"code": 400, "status": "Bad Request"}' in result.stderr


def test_a_scheduling_failure_stops_push_with_its_detail(deployment):
    d = deployment()
    d.fake.force_status["mysql"] = "NoActiveClusterWithCapacity"
    result = d.push()
    assert result.returncode == 1
    assert "flops/stores/mysql is NoActiveClusterWithCapacity: scheduler: NoActiveClusterWithCapacity" in result.stderr
    assert not any(a["application_name"] == "tracking" for a in d.fake.apps.values())  # stopped before it


def test_push_times_out_when_services_never_run(deployment):
    d = deployment()
    d.fake.frozen = True
    result = d.cli("push", "--poll-interval", "0.05", "--timeout", "0.3")
    assert result.returncode == 1
    assert "flops/stores: not running after 0s:" in result.stderr and "mysql REQUESTED" in result.stderr


def test_undeploy_removes_instances_one_by_one_then_services_then_applications(deployment):
    d = deployment()
    assert d.push().returncode == 0
    # A second instance on one service: deleting it at once would leak one (the server's quirk).
    acme = next(sid for sid, s in d.fake.services.items() if s["microservice_name"] == "acme")
    d.fake.services[acme]["instance_list"].append({"instance_number": 1, "status": "RUNNING"})
    result = d.cli("undeploy")
    assert result.returncode == 0, result.stderr
    assert d.fake.apps == {} and d.fake.services == {} and d.fake.leaked == []
    deletes = [(m, p) for m, p, _ in d.fake.calls if m == "DELETE"]
    position = deletes.index
    assert position(("DELETE", f"/api/service/{acme}/instance/1")) < position(("DELETE", f"/api/service/{acme}"))
    app_deletes = [p for m, p in deletes if p.startswith("/api/application/")]
    assert len(app_deletes) == 3
    assert "removed 3 application(s)" in result.stdout and "mnist, tracking, stores" in result.stdout
    again = d.cli("undeploy")
    assert again.returncode == 0 and "flops/stores: not deployed" in again.stderr


def test_reviewed_files_must_match_what_is_pushed(deployment, tmp_path):
    d = deployment()
    reviewed = tmp_path / "reviewed"
    assert run_cli("render", "--out", str(reviewed), config=d.config).returncode == 0
    assert d.push("--reviewed", str(reviewed), "--app", "stores").returncode == 0
    (reviewed / "tracking.json").write_text("{}\n")
    stale = d.push("--reviewed", str(reviewed))
    assert stale.returncode == 2 and "tracking.json differ(s)" in stale.stderr


@pytest.mark.parametrize("args, env, message", [
    (["--orchestrator", "ftp://10.0.0.1:10000"], {}, "--orchestrator: 'ftp://10.0.0.1:10000' must be http(s)"),
    (["--orchestrator", "http://admin:pw@10.0.0.1:10000"], {}, "(no credentials, path or query)"),
    (["--orchestrator", "http://10.0.0.1:10000/api"], {}, "must be http(s)://host[:port]"),
    (["--orchestrator", "http://10.0.0.1:10000", "--username", "admin"], {"FLOPS_OAKESTRA_PASSWORD": ""},
     "no Oakestra password: give --password-file FILE"),
    (["--orchestrator", "http://10.0.0.1:10000", "--password-file", "/nonexistent"], {"FLOPS_OAKESTRA_USERNAME": ""},
     "--username: give the Oakestra user"),
    (["--orchestrator", "http://10.0.0.1:10000", "--username", "a", "--password-file", "/nonexistent"], {},
     "--password-file: /nonexistent: cannot read"),
    (["--orchestrator", "http://10.0.0.1:10000", "--username", "a", "--app", "nope"], {"FLOPS_OAKESTRA_PASSWORD": "x"},
     "--app: nope is not rendered by"),
    (["--orchestrator", "http://10.0.0.1:10000", "--username", "a", "--user-id", "../x"],
     {"FLOPS_OAKESTRA_PASSWORD": "x"}, "--user-id: '../x' is not a user id"),
])
def test_bad_invocations_exit_2(args, env, message):
    result = run_cli("undeploy", *args, config=SHIPPED, env={"FLOPS_OAKESTRA_USERNAME": "", "FLOPS_OAKESTRA_URL": "",
                                                          "FLOPS_OAKESTRA_PASSWORD_FILE": "", **env})
    assert result.returncode == 2, result.stderr
    assert message in result.stderr


def test_wrong_password_shows_the_login_call(deployment):
    d = deployment()
    d.password_file.write_text("wrong\n")
    result = d.push()
    assert result.returncode == 1
    assert 'POST /api/auth/login: HTTP 401: {"message": "Invalid username or password"}' in result.stderr
    assert "wrong" not in result.stderr


def test_ids_from_responses_are_checked_before_use(deployment):
    d = deployment()
    d.fake.bad_app_ids = True
    result = d.push("--app", "stores")
    assert result.returncode == 1
    assert "applicationID of stores" in result.stderr and "not a plain id" in result.stderr
    assert not any("/.." in path for _, path, _ in d.fake.calls)


# --- the client's handling of the API's quirks, in-process ------------------------------------------


def test_client_decodes_json_strings_and_follows_documented_quirks():
    fake = FakeOakestra()
    url = fake.start()
    try:
        client = Client(url, "admin", "secret", timeout=5)
        assert client.create_application({"sla_version": "v2.0", "customerID": "x", "applications": [
            {"application_name": "demo", "application_namespace": "test", "microservices": []}]})[0]["userId"] \
            == fake.user_id()
        app_id = next(iter(fake.apps))
        assert client.call("GET", f"/api/application/{app_id}") is None  # 200 null
        with pytest.raises(OakestraError) as info:
            client.call("GET", "/api/application/0123456789abcdef01234567")
        assert info.value.status == 404
        with pytest.raises(OakestraError) as info:
            client.create_application({"sla_version": "v2.0", "customerID": "x", "applications": [
                {"application_name": "demo", "application_namespace": "test", "microservices": []}]})
        assert info.value.status == 409
        with pytest.raises(OakestraError) as info:
            client.create_application({"sla_version": "v2.0", "customerID": "x", "applications": [
                {"application_name": "de-mo", "application_namespace": "test", "microservices": []}]})
        assert info.value.status == 422
        with pytest.raises(OakestraError) as info:
            client.append_services({"sla_version": "v2.0", "customerID": "x", "applications": [
                {"applicationID": "0" * 24, "application_name": "demo", "application_namespace": "test",
                 "microservices": []}]})
        assert info.value.status == 400 and info.value.call == "POST /api/service/"
        client.deploy_instance("0" * 24)  # unknown id: still "ok"
        app = {"applicationID": app_id, "application_name": "demo", "application_namespace": "test"}
        service = {"microservice_name": "db", "microservice_namespace": "test", "virtualization": "container",
                   "code": "docker.io/library/alpine:3.20"}
        for volumes in ([{"volume_id": "v", "mount_path": "/data"}], [{"csi_driver": "csi.oakestra.io/hostpath"}],
                        {"volume_id": "v"}, [{"volume_id": "v", "csi_driver": "x", "config": "host_path=/x"}]):
            with pytest.raises(OakestraError) as info:  # a volume breaks the schema: 400, as every service error
                client.append_services({"sla_version": "v2.0", "customerID": "x", "applications": [
                    dict(app, microservices=[dict(service, volumes=volumes)])]})
            assert info.value.status == 400, volumes
        volume = {"volume_id": "v", "csi_driver": "csi.oakestra.io/hostpath", "mount_path": "/data",
                  "config": {"host_path": "/srv/v"}}
        client.append_services({"sla_version": "v2.0", "customerID": "x", "applications": [
            dict(app, microservices=[dict(service, volumes=[volume])])]})
        assert fake.services_of("demo")["db"]["volumes"] == [volume]  # stored as sent
        client.delete_application(app_id)
        with pytest.raises(OakestraError) as info:
            client.delete_application(app_id)
        assert info.value.status == 501
        assert fake.count("POST", "/api/application") == 0  # always the trailing-slash route
        bare = requests.post(f"{url}/api/application", json={}, allow_redirects=False, timeout=5)
        assert bare.status_code == 308 and bare.headers["Location"] == "/api/application/"
    finally:
        fake.stop()


def test_error_bodies_are_masked_and_urls_checked():
    assert decode('"[{\\"a\\": 1}]"') == [{"a": 1}]
    assert decode("null") is None and decode("not json") == "not json"
    assert check_url("http://10.0.0.1:10000/") == "http://10.0.0.1:10000"
    fake = FakeOakestra(users={"admin": "pw-1"})
    url = fake.start()
    try:
        client = Client(url, "admin", "pw-1", timeout=5, redact=["Bad Request"])
        with pytest.raises(OakestraError) as info:
            client.call("POST", "/api/service/", {"nothing": True})
        assert "Bad Request" not in str(info.value) and "***" in str(info.value)
    finally:
        fake.stop()
