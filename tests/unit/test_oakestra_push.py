"""`flops-mlops push` / `undeploy` against a fake root orchestrator (tests/fake_oakestra.py) on loopback.

The fake follows the real system manager's code (its docstring names the files and commits): the user-id check
of GET /api/applications/<id>, userId holding the user name, JSON-string bodies, instance lists that fill only
once a cluster took the request, 400 for every service error, expiring tokens, 409 on duplicates,
trailing-slash routes, services with 2+ instances deleted only partly. Each defect found against the real
orchestrator (issue 14) has a test here.
"""

from __future__ import annotations

import base64
import contextlib
import io
import json
from pathlib import Path
from types import SimpleNamespace

import pytest
import requests
import yaml
from conftest import ROOT, run_cli
from fake_oakestra import FakeOakestra
from flops_mlops.cli import main
from flops_mlops.oakestra.client import Client, OakestraError, check_url, decode

SHIPPED = ROOT / "configs" / "oakestra.yaml"
FAST = ["--poll-interval", "0.02", "--timeout", "20"]


def run_in_process(*argv: str) -> SimpleNamespace:
    """flops_mlops.cli.main(argv) with its exit code and what it printed, like a finished subprocess."""
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        code = main(list(argv))
    return SimpleNamespace(returncode=code, stdout=out.getvalue(), stderr=err.getvalue())


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
        assert run_in_process("--config", str(self.config), "secrets", "init").returncode == 0
        self.secrets = dict(line.split("=", 1) for line in (tmp_path / "secrets.env").read_text().splitlines()
                            if "=" in line and not line.startswith("#"))

    def cli(self, command: str, *extra: str, subprocess: bool = False):
        """The CLI on this deployment, in this process (fast) or as a subprocess (the installed entry point)."""
        args = [command, "--orchestrator", self.url, "--username", "Admin", "--password-file",
                str(self.password_file), *extra]
        if subprocess:
            return run_cli(*args, config=self.config, timeout=120)
        return run_in_process("--config", str(self.config), *args)

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
    state = json.loads(d.state_file.read_text())
    assert state["user_id"] == d.fake.user_id()  # the database id, recorded with the application ids
    assert state["apps"] == {f"flops/{a['application_name']}": a["applicationID"] for a in d.fake.apps.values()}


def environment_of(service: dict) -> dict[str, str]:
    return dict(item.split("=", 1) for item in service["environment"])


def test_push_fills_the_login_secrets_and_pins_no_tracking_server(deployment):
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
    # Logins are in the backend store: no volume, no node of their own.
    assert not tracking["acme"].get("volumes") and not tracking["globex"].get("constraints")
    stores = d.fake.services_of("stores")  # the stores' data folders and their node reach the orchestrator
    assert stores["mysql"]["volumes"][0]["config"] == {"host_path": "/mnt/oakestra/hostpath/flops-mlops/mysql"}
    assert stores["ftpglobex"]["volumes"][0]["config"] == {"host_path": "/mnt/oakestra/hostpath/flops-mlops/ftp/globex"}
    assert stores["mysql"]["target_node"] == stores["ftpacme"]["target_node"] == "worker1"
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


def test_without_the_state_file_push_finds_the_applications_by_the_users_database_id(deployment):
    d = deployment()
    assert d.push("--app", "stores").returncode == 0
    d.state_file.unlink()  # another machine: nothing recorded
    again = d.push("--app", "stores")
    assert again.returncode == 0, again.stderr
    assert "flops/stores: application exists" in again.stderr
    assert len(d.fake.apps) == 1 and len(d.fake.services) == 3
    assert d.fake.count("POST", "/api/application/") == 1


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
    d.fake.restart_at = r"/api/applications/[0-9a-f]+"  # restarts before the applications are listed
    result = d.push("--app", "stores")
    assert result.returncode == 0, result.stderr
    assert ("GET", "422") in {(m, str(status)) for m, _, status in d.fake.calls}  # jwt_required: bad signature
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
    assert "flops/stores: not running after 0s:" in result.stderr and "mysql CLUSTER_SCHEDULED" in result.stderr
    assert "it waits for these requests, it does not repeat them" in result.stderr


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
    assert again.returncode == 0 and "flops/stores: not deployed, nothing to do" in again.stderr


# --- the defects found against the real system manager (issue 14), one test each ---------------------


def token_subject(token: str) -> str:
    payload = token.split(".")[1]
    return json.loads(base64.urlsafe_b64decode(payload + "=" * (-len(payload) % 4)))["sub"]


def test_the_user_id_is_the_database_id_from_the_user_record_never_the_name(deployment):
    """Every push after the first application failed: the client listed applications by the token subject, or
    an application's userId, both the user NAME, which GET /api/applications/<id> answers with 401."""
    d = deployment()
    login = requests.post(f"{d.url}/api/auth/login", json={"username": "Admin", "password": "secret"}, timeout=5)
    token = login.json()["token"]
    assert token_subject(token) == "Admin"  # what the client used to take as the id
    by_name = requests.get(f"{d.url}/api/applications/Admin", headers={"Authorization": f"Bearer {token}"},
                           timeout=5)
    assert (by_name.status_code, by_name.json()) == (401, {"code": 401, "status": "Unauthorized"})
    d.fake.calls.clear()

    result = d.push()
    assert result.returncode == 0, result.stderr
    assert sorted(a["application_name"] for a in d.fake.apps.values()) == ["mnist", "stores", "tracking"]
    assert all(app["userId"] == "Admin" for app in d.fake.apps.values())  # a name, never used as the id
    listed = {p for m, p, _ in d.fake.calls if p.startswith("/api/applications/")}
    assert listed == {f"/api/applications/{d.fake.user_id()}"}
    assert d.fake.count("GET", "/api/user/Admin") == 1
    assert "HTTP 401" not in result.stderr
    again = d.push()  # a second push used to fail at once
    assert again.returncode == 0, again.stderr


def test_a_wrong_recorded_user_id_is_replaced_by_the_looked_up_one(deployment):
    """With --user-id the first call worked, then the id was overwritten by an application's userId."""
    d = deployment()
    assert d.push("--app", "stores").returncode == 0
    d.state_file.write_text(json.dumps({"user_id": "Admin", "apps": {}}))
    again = d.push()
    assert again.returncode == 0, again.stderr
    assert f"user Admin now has id {d.fake.user_id()} (recorded: Admin)" in again.stderr
    assert json.loads(d.state_file.read_text())["user_id"] == d.fake.user_id()
    assert {p for m, p, _ in d.fake.calls if p.startswith("/api/applications/")} == \
           {f"/api/applications/{d.fake.user_id()}"}
    # Undeploy used to delete one application, then fail with the same 401 and leave the others.
    d.state_file.write_text(json.dumps({"user_id": "Admin", "apps": {}}))
    removed = d.cli("undeploy")
    assert removed.returncode == 0, removed.stderr
    assert "removed 3 application(s)" in removed.stdout and d.fake.apps == {} and d.fake.services == {}


def test_push_push_undeploy_undeploy_run_cleanly_in_sequence(deployment):
    """The whole cycle through the command as a user runs it (subprocesses)."""
    d = deployment()
    first = d.cli("push", *FAST, subprocess=True)
    assert first.returncode == 0, first.stderr
    posts = d.fake.count("POST", r"/api/service/[0-9a-f]+/instance")
    assert posts == len(EXPECTED_SERVICES)
    second = d.cli("push", *FAST, subprocess=True)
    assert second.returncode == 0, second.stderr
    assert d.fake.count("POST", r"/api/service/[0-9a-f]+/instance") == posts
    assert d.fake.count("POST", "/api/application/") == 3 and d.fake.count("POST", "/api/service/") == 3
    # Both end with what exists: every application with its services and instance counts.
    for result in (first, second):
        assert "stores (" in result.stdout and "mysql: 1 instance(s), RUNNING" in result.stdout
        assert "tracking (" in result.stdout and "acme: 1 instance(s), RUNNING" in result.stdout
        assert "mnist (" in result.stdout and "learner1: 1 instance(s), RUNNING" in result.stdout
    removed = d.cli("undeploy", subprocess=True)
    assert removed.returncode == 0, removed.stderr
    assert d.fake.apps == {} and d.fake.services == {} and d.fake.leaked == []
    deletes = d.fake.count("DELETE", ".*")
    assert "removed 3 application(s)" in removed.stdout
    for name in ("stores", "tracking", "mnist"):
        assert f"  {name}: not deployed" in removed.stdout
    again = d.cli("undeploy", subprocess=True)
    assert again.returncode == 0, again.stderr
    assert "removed 0 application(s)" in again.stdout and "(nothing to do)" in again.stdout
    assert d.fake.count("DELETE", ".*") == deletes  # found nothing to do
    assert json.loads(d.state_file.read_text())["apps"] == {}


def test_undeploy_after_a_partial_failure_is_rerun_and_leaves_nothing(deployment):
    """Undeploy deleted tracking, then failed and left stores deployed."""
    d = deployment()
    assert d.push().returncode == 0
    stores = next(a for a in d.fake.apps.values() if a["application_name"] == "stores")["applicationID"]
    d.fake.fail_once[("DELETE", f"/api/application/{stores}")] = 500
    broken = d.cli("undeploy")
    assert broken.returncode == 1
    assert f"DELETE /api/application/{stores}: HTTP 500" in broken.stderr
    assert "  mnist: not deployed" in broken.stdout and "  tracking: not deployed" in broken.stdout
    assert "stores (" in broken.stdout  # what is left is shown
    rerun = d.cli("undeploy")
    assert rerun.returncode == 0, rerun.stderr
    assert "removed 1 application(s)" in rerun.stdout and "stores" in rerun.stdout
    assert d.fake.apps == {} and d.fake.services == {}
    third = d.cli("undeploy")
    assert third.returncode == 0 and "(nothing to do)" in third.stdout


def test_a_request_still_waiting_for_a_cluster_is_not_repeated(deployment):
    """Every push asked for another instance of each service whose instance_list was still empty."""
    d = deployment()
    d.fake.scheduling = "hold"  # the scheduler has not answered: REQUESTED, instance_list empty
    waiting = d.cli("push", "--app", "stores", "--poll-interval", "0.02", "--timeout", "0.2")
    assert waiting.returncode == 1 and "mysql REQUESTED" in waiting.stderr
    assert d.fake.count("POST", r"/api/service/[0-9a-f]+/instance") == 3
    again = d.cli("push", "--app", "stores", "--poll-interval", "0.02", "--timeout", "0.2")
    assert again.returncode == 1
    assert "flops/stores/mysql: instance requested earlier, still waiting for a cluster (not requested again)" \
        in again.stderr
    assert d.fake.count("POST", r"/api/service/[0-9a-f]+/instance") == 3
    d.fake.scheduling = "run"
    done = d.push("--app", "stores")
    assert done.returncode == 0, done.stderr
    assert d.fake.count("POST", r"/api/service/[0-9a-f]+/instance") == 3
    assert {name: len(s["instance_list"]) for name, s in d.fake.services_of("stores").items()} == \
           {"mysql": 1, "ftpacme": 1, "ftpglobex": 1}


def test_a_request_no_cluster_could_take_is_made_again_on_the_next_push(deployment):
    d = deployment()
    d.fake.scheduling = "no_capacity"
    failed = d.push("--app", "stores")
    assert failed.returncode == 1
    assert "is NoActiveClusterWithCapacity" in failed.stderr
    assert all(s["instance_list"] == [] for s in d.fake.services.values())
    d.fake.scheduling = "run"
    retried = d.push("--app", "stores")
    assert retried.returncode == 0, retried.stderr
    assert "the last request ended NoActiveClusterWithCapacity; instance requested again" in retried.stderr
    assert all(len(s["instance_list"]) == 1 for s in d.fake.services.values())


def test_push_reports_drift_and_changes_none_of_it(deployment):
    d = deployment()
    assert d.push().returncode == 0
    tracking = next(a for a in d.fake.apps.values() if a["application_name"] == "tracking")
    acme = d.fake.services_of("tracking")["acme"]
    acme["instance_list"].append({"instance_number": 1, "status": "RUNNING"})
    extra = dict(acme, microservice_name="old", microserviceID="e" * 24, instance_list=[], RR_ip="10.30.9.9")
    d.fake.services[extra["microserviceID"]] = extra
    tracking["microservices"].append(extra["microserviceID"])
    d.fake.apps["f" * 24] = dict(tracking, applicationID="f" * 24, application_name="oldproject", microservices=[])
    again = d.push()
    assert again.returncode == 0, again.stderr
    assert "flops/tracking/acme: 2 instances (the SLA asks for one; push leaves them)" in again.stderr
    assert "flops/tracking/old: service is not in the SLA (left as it is; undeploy --app tracking removes it)" \
        in again.stderr
    assert "acme: 2 instance(s), RUNNING" in again.stdout and "old: 0 instance(s)" in again.stdout
    assert "oldproject (" + "f" * 24 + "): 0 service(s) [not rendered by this configuration]" in again.stdout
    assert len(d.fake.services_of("tracking")) == 3 and "f" * 24 in d.fake.apps


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
    (["--orchestrator", "http://10.0.0.1:10000", "--username", "../x"],
     {"FLOPS_OAKESTRA_PASSWORD": "x"}, "--username: '../x' is not an Oakestra user name"),
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
    assert 'POST /api/auth/login: HTTP 401: {"code": 401, "status": "Unauthorized"}' in result.stderr
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
        client = Client(url, "Admin", "secret", timeout=5)
        assert client.create_application({"sla_version": "v2.0", "customerID": "x", "applications": [
            {"application_name": "demo", "application_namespace": "test", "microservices": []}]})[0]["userId"] \
            == "Admin"  # the user NAME, as register_app stores it
        assert client.user_id() == fake.user_id()
        with pytest.raises(OakestraError) as info:
            client.applications("Admin")  # the name: refused even after a fresh login
        assert info.value.status == 401
        assert "does not take Admin as the database id of user Admin" in str(info.value)
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
    fake = FakeOakestra(users={"Admin": "pw-1"})
    url = fake.start()
    try:
        client = Client(url, "Admin", "pw-1", timeout=5, redact=["Bad Request"])
        with pytest.raises(OakestraError) as info:
            client.call("POST", "/api/service/", {"nothing": True})
        assert "Bad Request" not in str(info.value) and "***" in str(info.value)
    finally:
        fake.stop()


def test_a_hierarchical_project_is_pushed_pinned_and_undeployed_idempotently(deployment):
    d = deployment()
    data = yaml.safe_load(d.config.read_text())
    data["oakestra"]["projects"].append({"name": "fleet", "tenant": "acme", "slot": 2, "learners": 2, "rounds": 2,
                                         "mode": "hierarchical", "clusters": ["factory", "district"], "cycles": 2})
    d.config.write_text(yaml.safe_dump(data, sort_keys=False))
    assert run_in_process("--config", str(d.config), "secrets", "init").returncode == 0  # fleet's password
    first = d.push()
    assert first.returncode == 0, first.stderr
    fleet = d.fake.services_of("fleet")
    assert sorted(fleet) == ["aggregator", "cluster0", "cluster1", "learner0", "learner1", "learner2", "learner3"]
    assert all(fleet[name]["instance_list"] for name in fleet)  # every service was scheduled and runs
    assert fleet["learner3"]["constraints"] == [{"type": "direct", "cluster": "district"},
                                                {"type": "clusters", "allowed": ["district"]}]
    assert ",fleet:" in environment_of(d.fake.services_of("tracking")["acme"])["FLOPS_FL_USERS"]  # its login
    posts = d.fake.count("POST", r"/api/service/[0-9a-f]+/instance")
    again = d.push("--app", "fleet")
    assert again.returncode == 0, again.stderr
    assert d.fake.count("POST", r"/api/service/[0-9a-f]+/instance") == posts
    assert "flops/fleet: application exists" in again.stderr
    for attempt in range(2):
        removed = d.cli("undeploy", "--app", "fleet")
        assert removed.returncode == 0, removed.stderr
        assert d.fake.services_of("fleet") == {} and d.fake.leaked == []
        assert f"removed {1 - attempt} application(s)" in removed.stdout
    assert sorted(d.fake.services_of("mnist")) == ["aggregator", "learner0", "learner1"]  # untouched
