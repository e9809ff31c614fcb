"""Attacks that must fail, tried as an outsider and as one tenant against another, on the embedded and native stacks.

Each test keeps a ledger: every attempt is counted, every attempt that worked is a success (with what it got).
The counts are printed; a test fails on any success and lists them. Two tenants, acme and globex, each with a
model, a marker file in its artifact store and two FL project users; every attack runs for both ordered pairs.
"""

from __future__ import annotations

import ftplib
import io
import itertools
import json
import os
import pwd
import signal
import sqlite3
import stat
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import quote

import conftest
import psutil
import pytest
import requests
from flops_mlops.tracking.logins import MAX_DELAY
from tracking_checks import log_example

pytestmark = [pytest.mark.services, pytest.mark.timeout(900)]

TENANTS = ("acme", "globex")
PAIRS = list(itertools.permutations(TENANTS, 2))  # (attacker, victim)
# Routes a client can reach: REST API, the UI's ajax-api, the artifact proxy, the UI itself, user management.
ROUTES = [
    ("GET", "/"), ("GET", "/signup"), ("POST", "/graphql"),
    ("GET", "/api/2.0/mlflow/experiments/search?max_results=10"),
    ("GET", "/api/2.0/mlflow/experiments/get?experiment_id=0"),
    ("GET", "/api/2.0/mlflow/experiments/get-by-name?experiment_name=secret"),
    ("POST", "/api/2.0/mlflow/experiments/create"),
    ("POST", "/api/2.0/mlflow/runs/search"), ("POST", "/api/2.0/mlflow/runs/create"),
    ("GET", "/api/2.0/mlflow/registered-models/search"), ("GET", "/api/2.0/mlflow/model-versions/search"),
    ("POST", "/api/2.0/mlflow/logged-models/search"),
    ("GET", "/api/2.0/mlflow/users/list"), ("POST", "/api/2.0/mlflow/users/create"),
    ("GET", "/api/2.0/mlflow/metrics/get-history?run_id=x&metric_key=loss"),
    ("GET", "/ajax-api/2.0/mlflow/experiments/search?max_results=10"),
    ("POST", "/ajax-api/2.0/mlflow/runs/search"),
    ("GET", "/ajax-api/2.0/mlflow/registered-models/search"),
    ("POST", "/ajax-api/2.0/mlflow/upload-artifact?run_uuid=x&path=a.txt"),
    ("GET", "/ajax-api/2.0/mlflow/metrics/get-history-bulk-interval?run_ids=x&metric_key=loss"),
    ("GET", "/api/2.0/mlflow-artifacts/artifacts?path=1"),
    ("GET", "/api/2.0/mlflow-artifacts/artifacts/1/marker.txt"),
    ("PUT", "/api/2.0/mlflow-artifacts/artifacts/1/planted.txt"),
    ("GET", "/ajax-api/2.0/mlflow-artifacts/artifacts/1/marker.txt"),
    ("GET", "/get-artifact?run_uuid=x&path=marker.txt"),
    ("GET", "/model-versions/get-artifact?name=secret&version=1&path=MLmodel"),
    ("GET", "/flops/model-versions/archive?name=secret&version=1"),
]


@dataclass
class Ledger:
    title: str
    attempts: int = 0
    successes: list[str] = field(default_factory=list)

    def attempt(self, what: str, succeeded: bool, detail: str = "") -> None:
        self.attempts += 1
        if succeeded:
            self.successes.append(f"{what}: {detail}"[:400])

    def verdict(self) -> None:
        print(f"\n{self.title}: {self.attempts} attempts, {len(self.successes)} successes")
        assert self.attempts > 0, "no attack was tried"
        assert not self.successes, f"{self.title}: attacks that worked:\n  " + "\n  ".join(self.successes)


@dataclass
class Target:
    """A running stack with two tenants, and what each tenant holds."""

    stack: conftest.TestStack
    kind: str
    uri: dict[str, str]
    markers: dict[str, bytes]
    run_ids: dict[str, str]
    experiment_ids: dict[str, str]
    projects: dict[str, dict[str, str]]   # tenant -> {project: password of fl-<project>}
    answers: list[requests.Response] = field(default_factory=list)  # every answer seen, for the secrets scan

    def secrets(self) -> list[str]:
        values = [v for v in self.stack.secrets().values.values() if len(v) >= 8]
        values += [p for per in self.projects.values() for p in per.values()]
        return values

    def call(self, method: str, tenant: str, path: str, login=None, raw: bool = False, **kwargs) -> requests.Response:
        """One request; ``raw``: the path is sent exactly as written (requests would resolve its `..` segments
        before sending, so the server would never see the climb)."""
        timeout = kwargs.pop("timeout", 30)
        if method in ("POST", "PUT", "PATCH") and "json" not in kwargs and "data" not in kwargs:
            kwargs["json"] = {}
        request = requests.Request(method, self.uri[tenant] + path, auth=login, **kwargs).prepare()
        if raw:
            request.url = self.uri[tenant] + path
        with requests.Session() as session:
            answer = session.send(request, allow_redirects=False, timeout=timeout)
        self.answers.append(answer)
        return answer

    def admin(self, tenant: str) -> tuple[str, str]:
        return self.stack.admin(tenant)


@pytest.fixture(scope="module", params=["local", "native"])
def target(request, tmp_path_factory):
    from flops_mlops.tracking.users import AuthAdmin, ensure_project_user

    kind = request.param
    folder = tmp_path_factory.mktemp(f"security-{kind}")
    stack = conftest.TestStack.create(kind, folder, list(TENANTS))
    stack.up()
    try:
        config = stack.load()
        uri = {t: config.tracking_uri(config.tenant(t)) for t in TENANTS}
        markers, run_ids, experiment_ids, projects = {}, {}, {}, {}
        for tenant in TENANTS:
            logged = log_example(uri[tenant], experiment="secret", login=stack.admin(tenant))
            marker = f"marker of {tenant} {os.urandom(8).hex()}".encode()
            answer = requests.put(f"{uri[tenant]}/api/2.0/mlflow-artifacts/artifacts/{logged.experiment_id}/"
                                  "marker.txt", data=marker, auth=stack.admin(tenant), timeout=30)
            assert answer.status_code == 200, answer.text
            admin = AuthAdmin(uri[tenant], stack.secrets().admin_password(tenant))
            projects[tenant] = {}
            for project in ("ProjectOne", "ProjectTwo"):
                password = os.urandom(18).hex()
                ensure_project_user(admin, project, password)
                projects[tenant][project] = password
            markers[tenant], run_ids[tenant], experiment_ids[tenant] = marker, logged.run_id, logged.experiment_id
        yield Target(stack, kind, uri, markers, run_ids, experiment_ids, projects)
    finally:
        stack.cli("down", "--purge")


def _leaks_marker(answer: requests.Response, target: Target, victim: str) -> bool:
    return answer.status_code < 300 and target.markers[victim] in answer.content


def test_every_route_refuses_outsiders_and_other_tenants(target):
    ledger = Ledger(f"[{target.kind}] routes without credentials and with another tenant's")
    for attacker, victim in PAIRS:
        logins = {"no credentials": None, f"{attacker}'s admin": target.admin(attacker),
                  f"{attacker}'s project user": ("fl-ProjectOne", target.projects[attacker]["ProjectOne"]),
                  "a wrong password": ("admin", "not-the-password")}
        for (who, login), (method, route) in itertools.product(logins.items(), ROUTES):
            answer = target.call(method, victim, route, login=login)
            # 401, or 429 once the wrong logins are throttled (tracking/logins.py): both refuse without data.
            ledger.attempt(f"{who} {method} {route} on {victim}", answer.status_code not in (401, 429),
                           f"{answer.status_code} {answer.text[:120]}")
    # /health stays open for health checks, and says nothing else.
    for tenant in TENANTS:
        health = target.call("GET", tenant, "/health")
        assert health.status_code == 200 and len(health.content) < 20
    # The wrong logins above blocked the name admin and this address for at most MAX_DELAY s: let that pass, so
    # that the tests after this one log in as before.
    time.sleep(MAX_DELAY + 1)
    ledger.verdict()


def test_a_project_user_sees_only_its_own_project(target):
    ledger = Ledger(f"[{target.kind}] project users outside their project")
    for tenant in TENANTS:
        login = ("fl-ProjectOne", target.projects[tenant]["ProjectOne"])
        own = target.call("GET", tenant, "/api/2.0/mlflow/experiments/get-by-name?experiment_name=ProjectOne",
                          login=login)
        assert own.status_code == 200, own.text  # its own project: allowed (the attempts below mean something)
        other = own.json()["experiment"]["experiment_id"]
        attempts = [
            ("GET", "/api/2.0/mlflow/experiments/get-by-name?experiment_name=ProjectTwo", {}),
            ("GET", "/api/2.0/mlflow/experiments/get-by-name?experiment_name=secret", {}),
            ("GET", f"/api/2.0/mlflow/experiments/get?experiment_id={target.experiment_ids[tenant]}", {}),
            ("GET", f"/api/2.0/mlflow/runs/get?run_id={target.run_ids[tenant]}", {}),
            ("POST", "/api/2.0/mlflow/runs/search", {"json": {"experiment_ids": [target.experiment_ids[tenant]]}}),
            ("GET", f"/api/2.0/mlflow-artifacts/artifacts/{target.experiment_ids[tenant]}/marker.txt", {}),
            ("GET", f"/get-artifact?run_uuid={target.run_ids[tenant]}&path=model", {}),
            ("GET", "/api/2.0/mlflow/registered-models/get?name=ProjectTwo", {}),
            ("POST", "/api/2.0/mlflow/runs/create", {"json": {"experiment_id": target.experiment_ids[tenant]}}),
            ("GET", "/api/2.0/mlflow/users/list", {}),
            # a name of its own: MLflow would make it MANAGE the new experiment or model (a store to fill)
            ("POST", "/api/2.0/mlflow/experiments/create", {"json": {"name": f"mine-{tenant}"}}),
            ("POST", "/ajax-api/2.0/mlflow/experiments/create", {"json": {"name": f"mine-ajax-{tenant}"}}),
            ("POST", "/api/2.0/mlflow/registered-models/create", {"json": {"name": f"mine-{tenant}"}}),
            ("POST", "/api/3.0/mlflow/users/permissions/grant",
             {"json": {"username": "fl-ProjectOne", "resource_type": "experiment",
                       "resource_id": target.experiment_ids[tenant], "permission": "MANAGE"}}),
            ("PATCH", "/api/2.0/mlflow/users/update-admin", {"json": {"username": "fl-ProjectOne", "is_admin": True}}),
        ]
        for method, route, kwargs in attempts:
            answer = target.call(method, tenant, route, login=login, **kwargs)
            # Searches answer 200 with what the user may see: a success is any of the hidden data in it.
            hidden = (target.run_ids[tenant], f'"experiment_id": "{target.experiment_ids[tenant]}"',
                      f'"experiment_id":"{target.experiment_ids[tenant]}"', "ProjectTwo", '"username"')
            filtered = "search" in route and answer.status_code == 200 and not any(h in answer.text for h in hidden)
            worked = (answer.status_code < 400 and not filtered) or _leaks_marker(answer, target, tenant)
            ledger.attempt(f"fl-ProjectOne on {tenant}: {method} {route}", worked,
                           f"{answer.status_code} {answer.text[:120]}")
        runs = target.call("POST", tenant, "/api/2.0/mlflow/runs/search", login=login,
                           json={"experiment_ids": [other]})
        assert runs.status_code == 200  # and EDIT on its own project
    ledger.verdict()


def test_artifact_paths_cannot_climb_out(target):
    ledger = Ledger(f"[{target.kind}] artifact path traversal")
    climbs = ["..", "%2e%2e", "%252e%252e", "%2E%2E", "..%2f..", "%2e%2e%2f%2e%2e", "/", "//", "...."]
    for attacker, victim in PAIRS:
        login = target.admin(attacker)
        folder = f"flops_{victim}/artifacts/{target.experiment_ids[victim]}/marker.txt"
        experiment = target.experiment_ids[attacker]
        for climb in climbs:
            for prefix in (f"{experiment}/{climb}/{climb}/{climb}/", f"{climb}/{climb}/", f"{climb}/{climb}/{climb}/"):
                for route in (f"/api/2.0/mlflow-artifacts/artifacts/{prefix}{folder}",
                              f"/ajax-api/2.0/mlflow-artifacts/artifacts/{prefix}{folder}",
                              f"/get-artifact?run_uuid={target.run_ids[attacker]}&path={prefix}{folder}",
                              f"/api/2.0/mlflow-artifacts/artifacts?path={prefix}flops_{victim}"):
                    answer = target.call("GET", attacker, route, login=login, raw=True)
                    assert answer.request.path_url == route  # what was sent is the attack, not a resolved path
                    listed = answer.status_code < 300 and f"flops_{victim}".encode() in answer.content
                    ledger.attempt(f"{attacker} {route}", _leaks_marker(answer, target, victim) or listed,
                                   f"{answer.status_code} {answer.text[:120]}")
            # Where it lands when the climb is refused or flattened: the attacker's own folder, which is fine.
            name = f"planted-by-{attacker}.txt"
            planted = target.call("PUT", attacker, f"/api/2.0/mlflow-artifacts/artifacts/{experiment}/{climb}/"
                                  f"{climb}/flops_{victim}/artifacts/{name}", login=login, data=b"x", raw=True)
            ledger.attempt(f"{attacker} PUT through {climb}", _victim_has(target, victim, name),
                           f"{planted.status_code}")
    ledger.verdict()


def _victim_has(target: Target, victim: str, name: str) -> bool:
    config = target.stack.load()
    return any(p.name == name for p in (config.state_dir / "ftp" / f"flops_{victim}").rglob("*"))


def test_no_artifact_location_outside_the_tenants_store(target):
    ledger = Ledger(f"[{target.kind}] foreign artifact locations")
    config = target.stack.load()
    for attacker, victim in PAIRS:
        store = config.artifact_store
        locations = [
            f"file://{config.state_dir}/ftp/flops_{victim}/artifacts", f"file:///tmp/flops-attack-{attacker}",
            f"ftp://flops_{victim}@{store.host}:{store.port}/artifacts",
            f"ftp://flops_{victim}:guess@{store.host}:{store.port}/artifacts",
            f"http://127.0.0.1:{config.tracking_port(config.tenant(victim))}/api/2.0/mlflow-artifacts/artifacts",
            "relative/folder", "./here", "../there", "/absolute/folder",
            f"mlflow-artifacts://127.0.0.1:{config.tracking_port(config.tenant(victim))}/1",
            "mlflow-artifacts:/../../flops_" + victim,
        ]
        for index, location in enumerate(locations):
            for api in ("/api/2.0", "/ajax-api/2.0"):
                answer = target.call("POST", attacker, f"{api}/mlflow/experiments/create", login=target.admin(attacker),
                                     json={"name": f"foreign-{victim}-{index}-{api.strip('/')[:4]}",
                                           "artifact_location": location})
                ledger.attempt(f"{attacker} experiment at {location}", answer.status_code != 400,
                               f"{answer.status_code} {answer.text[:120]}")
        for source in (f"file://{config.state_dir}/ftp/flops_{victim}", "http://127.0.0.1:1/model",
                       f"ftp://flops_{victim}@{store.host}:{store.port}/artifacts", "/etc"):
            answer = target.call("POST", attacker, "/api/2.0/mlflow/model-versions/create",
                                 login=target.admin(attacker), json={"name": "secret", "source": source})
            ledger.attempt(f"{attacker} model version from {source}", answer.status_code < 300,
                           f"{answer.status_code} {answer.text[:120]}")
    assert not list(Path("/tmp").glob("flops-attack-*"))
    ledger.verdict()


def test_no_upload_to_a_location_from_before_the_guard(target):
    """A run of an experiment whose location is foreign (as left by an older release) gets no uploads."""
    if target.kind != "local":
        pytest.skip("planted through the SQLite metadata of the embedded stack")
    from flops_mlops.tracking.server import sqlite_path

    ledger = Ledger("[local] uploads to a foreign location")
    config = target.stack.load()
    outside = Path(f"/tmp/flops-attack-upload-{os.getpid()}")
    with sqlite3.connect(sqlite_path(config, config.tenant("acme"))) as db:
        db.execute("UPDATE experiments SET artifact_location = ? WHERE experiment_id = ?",
                   (outside.as_uri(), int(target.experiment_ids["acme"])))
    login = target.admin("acme")
    run = target.call("POST", "acme", "/api/2.0/mlflow/runs/create", login=login,
                      json={"experiment_id": target.experiment_ids["acme"]}).json()["run"]["info"]["run_id"]
    for route in (f"/ajax-api/2.0/mlflow/upload-artifact?run_uuid={run}&path=planted.txt",):
        answer = target.call("POST", "acme", route, login=login, data=b"planted", json=None,
                             headers={"Content-Type": "application/octet-stream"})
        ledger.attempt(f"upload {route}", answer.status_code < 300 or outside.exists(),
                       f"{answer.status_code} {answer.text[:120]}")
    answer = target.call("GET", "acme", f"/get-artifact?run_uuid={run}&path=planted.txt", login=login)
    ledger.attempt("download from the foreign location", answer.status_code < 300, f"{answer.status_code}")
    ledger.verdict()


def test_ftp_users_stay_in_their_folder(target):
    from flops_mlops.configuration.secrets import Secrets

    ledger = Ledger(f"[{target.kind}] FTP chroot escapes and SITE CHMOD")
    config = target.stack.load()
    secrets = Secrets.load(config)
    store = config.artifact_store
    for attacker, victim in PAIRS:
        with ftplib.FTP() as ftp:
            ftp.connect(store.host, store.port, timeout=10)
            ftp.login(f"flops_{attacker}", secrets.ftp_password(attacker))
            target_file = f"flops_{victim}/artifacts/{target.experiment_ids[victim]}/marker.txt"
            for path in (f"../{target_file}", f"/../{target_file}", f"../../{target_file}", f"/{target_file}",
                         f"..\\{target_file}", f"%2e%2e/{target_file}"):
                buffer = io.BytesIO()
                try:
                    ftp.retrbinary(f"RETR {path}", buffer.write)
                except ftplib.all_errors:
                    pass
                ledger.attempt(f"{attacker} RETR {path}", target.markers[victim] in buffer.getvalue(), path)
            for folder in ("..", "/..", "../..", f"../flops_{victim}", f"/../flops_{victim}"):
                try:
                    ftp.cwd(folder)
                    escaped = ftp.pwd() != "/" or f"flops_{victim}" in " ".join(ftp.nlst())
                except ftplib.all_errors:
                    escaped = False
                ftp.cwd("/")
                ledger.attempt(f"{attacker} CWD {folder}", escaped, ftp.pwd())
            for command in ("SITE CHMOD 777 /", "SITE CHMOD 777 /artifacts", f"SITE CHMOD 777 ../flops_{victim}",
                            "SITE CHMOD 4777 artifacts"):
                try:
                    reply = ftp.sendcmd(command)
                    accepted = reply.startswith("2")
                except ftplib.all_errors as exc:
                    reply, accepted = str(exc), False
                ledger.attempt(f"{attacker} {command}", accepted, reply)
            with pytest.raises(ftplib.error_perm):  # and the victim's password is not the attacker's
                with ftplib.FTP() as other:
                    other.connect(store.host, store.port, timeout=10)
                    other.login(f"flops_{victim}", secrets.ftp_password(attacker))
    own = config.state_dir / "ftp"
    for path in own.rglob("*"):
        ledger.attempt(f"mode of {path}", bool(path.lstat().st_mode & 0o007), oct(path.lstat().st_mode))
    ledger.verdict()


def test_no_sql_across_tenant_databases(target):
    if target.kind != "native":
        pytest.skip("the embedded stack keeps one SQLite file per tenant in its own 0700 folder")
    import pymysql

    ledger = Ledger("[native] cross-database SQL")
    config = target.stack.load()
    secrets = target.stack.secrets()
    b = config.backend_store
    # Tenants' logins over TLS, the server verified against the deployment's CA (backend_store.tls, the default).
    from flops_mlops.configuration import certificates
    from flops_mlops.stores.mysql import verified_ssl

    tls = verified_ssl(certificates.ca_certificate_path(config)) if certificates.mysql_tls(config) else None
    for attacker, victim in PAIRS:
        with pymysql.connect(host=b.host, port=b.port, user=f"mlflow_{attacker}",
                             password=secrets.db_password(attacker), ssl=tls) as conn, conn.cursor() as cur:
            cur.execute("SHOW DATABASES")
            shown = {r[0] for r in cur.fetchall()}
            ledger.attempt(f"{attacker} SHOW DATABASES", bool({f"mlflow_{victim}", f"mlflow_{victim}_auth"} & shown))
            for statement in (f"SELECT COUNT(*) FROM `mlflow_{victim}`.runs", f"USE `mlflow_{victim}`",
                              f"SELECT * FROM `mlflow_{victim}`.experiments",
                              f"CREATE TABLE `mlflow_{victim}`.planted (x INT)",
                              "SELECT user, host FROM mysql.user", "SELECT * FROM information_schema.USER_PRIVILEGES",
                              f"GRANT ALL ON `mlflow_{victim}`.* TO 'mlflow_{attacker}'@'%'",
                              # the victim's users and grants (its auth database, tracking/auth_store.py)
                              f"SELECT username, password_hash FROM `mlflow_{victim}_auth`.users",
                              f"UPDATE `mlflow_{victim}_auth`.users SET is_admin = 1",
                              f"GRANT ALL ON `mlflow_{victim}_auth`.* TO 'mlflow_{attacker}'@'%'"):
                try:
                    cur.execute(statement)
                    rows = cur.fetchall()
                    worked = not statement.startswith("SELECT * FROM information_schema") or any(
                        f"mlflow_{victim}" in str(r) for r in rows)
                except pymysql.err.MySQLError:
                    worked = False
                ledger.attempt(f"{attacker}: {statement}", worked)
        for password in (secrets.db_password(attacker), "", "root"):
            try:
                pymysql.connect(host=b.host, port=b.port, user=f"mlflow_{victim}", password=password,
                                connect_timeout=5, ssl=tls).close()
                worked = True
            except pymysql.err.OperationalError:
                worked = False
            ledger.attempt(f"{attacker} logs in as mlflow_{victim}", worked)
        if tls is not None:  # an eavesdropper's way: the right password, without TLS
            try:
                pymysql.connect(host=b.host, port=b.port, user=f"mlflow_{attacker}",
                                password=secrets.db_password(attacker), connect_timeout=5, ssl_disabled=True).close()
                worked = True
            except pymysql.err.OperationalError:
                worked = False
            ledger.attempt(f"mlflow_{attacker} logs in without TLS", worked)
    ledger.verdict()


def _scan(text: str, secrets: list[str]) -> list[str]:
    return [s[:4] + "..." for s in secrets if s in text or quote(s, safe="") in text]


def test_no_secret_in_any_answer_log_argument_or_environment(target):
    """Provoke every error we can reach, then look for every secret, plain and URL-quoted, everywhere."""
    ledger = Ledger(f"[{target.kind}] secrets in answers, logs, ps, /proc/*/environ and file modes")
    config = target.stack.load()
    secrets = target.secrets()
    routes = lambda tenant: [  # noqa: E731 - a table of the artifact and model-version routes
        "/api/2.0/mlflow-artifacts/artifacts/nothing-here",
        f"/api/2.0/mlflow-artifacts/artifacts/{target.experiment_ids[tenant]}/nothing-here",
        "/ajax-api/2.0/mlflow-artifacts/artifacts/nothing-here",
        "/api/2.0/mlflow-artifacts/artifacts?path=nothing-here",
        f"/get-artifact?run_uuid={target.run_ids[tenant]}&path=nothing-here",
        "/model-versions/get-artifact?name=secret&version=1&path=nothing-here",
        f"/api/2.0/mlflow/runs/get?run_id={target.run_ids[tenant]}",
        "/api/2.0/mlflow/experiments/search?max_results=5",
    ]

    def provoke(situation: str, timeout: float = 30) -> None:
        for tenant in TENANTS:
            for route in routes(tenant):
                try:
                    answer = target.call("GET", tenant, route, login=target.admin(tenant), timeout=timeout)
                except requests.RequestException:
                    continue  # no answer, nothing in it
                for header, value in answer.headers.items():
                    ledger.attempt(f"{situation}: header {header} of {route}", bool(_scan(value, secrets)), value)
                found = _scan(answer.text, secrets)
                ledger.attempt(f"{situation}: body of {route} ({answer.status_code})", bool(found), str(found))

    # Every answer the attacks of the tests before this one got, too.
    for answer in list(target.answers):
        found = _scan(answer.text + " ".join(answer.headers.values()), secrets)
        ledger.attempt(f"earlier answer to {answer.request.method} {answer.request.path_url[:80]} "
                       f"({answer.status_code})", bool(found), str(found))
    provoke("normal")
    ftp = running_service(config, "artifact-store")
    os.kill(ftp.pid, signal.SIGSTOP)  # FTP hung: accepts TCP, never answers
    try:
        provoke("FTP hung", timeout=5)
    finally:
        os.kill(ftp.pid, signal.SIGCONT)
    os.kill(ftp.pid, signal.SIGKILL)  # FTP down
    ftp.wait(10)
    provoke("FTP down")
    if target.kind == "native":
        # While the database runs, so that it is the password that is refused (not the connection): globex's
        # database password, a real secret, for acme's user. The error must not show it.
        wrong_password = target.stack.secrets().db_password("globex")
        wrong = subprocess.run([sys.executable, "-m", "flops_mlops.tracking.server", "upgrade-schema"],
                               capture_output=True, text=True, timeout=300, env={
                                   **os.environ, "MLFLOW_BACKEND_STORE_URI":
                                   f"mysql+pymysql://mlflow_acme:{quote(wrong_password, safe='')}@127.0.0.1:"
                                   f"{config.backend_store.port}/mlflow_acme"})
        assert wrong.returncode != 0 and "Access denied for user 'mlflow_acme'" in wrong.stderr, wrong.stderr[-2000:]
        ledger.attempt("schema upgrade with a wrong DB password", bool(_scan(wrong.stdout + wrong.stderr, secrets)),
                       wrong.stderr[-200:])
        database = running_service(config, "backend-store")
        database.terminate()
        database.wait(60)
        provoke("DB down")
    time.sleep(1)
    for log in (config.state_dir / "logs").iterdir():
        found = _scan(log.read_text(errors="replace"), secrets)
        ledger.attempt(f"log {log.name}", bool(found), str(found))
        ledger.attempt(f"mode of log {log.name}", stat.S_IMODE(log.stat().st_mode) != 0o600,
                       oct(log.stat().st_mode))
    for proc in psutil.process_iter(["cmdline", "pid"]):
        found = _scan(" ".join(proc.info["cmdline"] or []), secrets)
        ledger.attempt(f"ps: pid {proc.info['pid']}", bool(found), str(found))
    ledger.attempt("/proc/*/environ as nobody", bool(_environ_as_nobody(secrets)), _environ_as_nobody(secrets))
    for path in config.state_dir.rglob("*"):
        mode = path.lstat().st_mode
        if path.is_symlink() or "/ftp/" in f"{path}/" or "/mysql/data/" in f"{path}/":
            continue  # the stores' own folders: checked by the FTP test; MariaDB's datadir is closed (below)
        opened = mode & 0o006 if path.is_dir() else mode & 0o077
        ledger.attempt(f"mode of {path.relative_to(config.state_dir)}", bool(opened), oct(stat.S_IMODE(mode)))
    if target.kind == "native":
        datadir = config.state_dir / "mysql" / "data"
        ledger.attempt("MariaDB datadir closed to others", bool(datadir.stat().st_mode & 0o007),
                       oct(datadir.stat().st_mode))
    ledger.verdict()


def running_service(config, name: str) -> psutil.Process:
    from flops_mlops.processes import ManagedProcess

    proc = ManagedProcess(name, config.state_dir).recorded()
    assert proc is not None, f"{name} is not running"
    return proc


def _environ_as_nobody(secrets: list[str]) -> str:
    """Which secrets an unprivileged local user finds in /proc/*/environ (as 'nobody')."""
    script = ("import glob,sys\nfound=set()\nwanted=sys.stdin.read().split()\n"
              "for p in glob.glob('/proc/[0-9]*/environ'):\n"
              "    try: data=open(p,'rb').read().decode('utf-8','replace')\n"
              "    except OSError: continue\n"
              "    found.update(w[:4] for w in wanted if w in data)\n"
              "print(' '.join(sorted(found)))\n")
    nobody = pwd.getpwnam("nobody")
    done = subprocess.run([sys.executable, "-c", script], input="\n".join(secrets), capture_output=True, text=True,
                          user=nobody.pw_uid, group=nobody.pw_gid, extra_groups=[], timeout=60, cwd="/")
    assert done.returncode == 0, done.stderr
    return done.stdout.strip()


def test_each_tenant_runs_as_its_own_account_and_reads_nothing_of_the_others(target):
    """As each tenant's account (and the embedded FTP store's), try to read the other tenants' environments, files
    and logs, as a server given over to an attacker could. Its own environment it reads: the attempt is real."""
    target.stack.up()  # the stores an earlier test stopped come back
    config = target.stack.load()
    secrets = target.stack.secrets()
    ledger = Ledger(f"[{target.kind}] one OS account per tenant")
    servers = {t: running_service(config, f"tracking-{t}") for t in TENANTS}
    for tenant, proc in servers.items():
        ledger.attempt(f"{tenant}'s server as another account than its own",
                       proc.username() != f"{conftest.TRACKING_ACCOUNT}-{tenant}", proc.username())
    accounts = {t: pwd.getpwnam(servers[t].username()) for t in TENANTS}
    if target.kind == "local":
        ftp = running_service(config, "artifact-store")
        ledger.attempt("embedded FTP store as root", ftp.username() != conftest.TRACKING_ACCOUNT, ftp.username())
        accounts["the FTP store"] = pwd.getpwnam(ftp.username())
    for reader, account in accounts.items():
        own = f"/proc/{servers[reader].pid}/environ" if reader in servers else None
        if own:
            read = _read_as(account, [own])[own]
            assert secrets.admin_password(reader) in read, f"{reader}'s account cannot read its own environment: {read}"
        for victim in TENANTS:
            if victim == reader:
                continue
            paths = [f"/proc/{servers[victim].pid}/environ",
                     str(config.state_dir / "tenants" / victim / "auth.db"),
                     str(config.state_dir / "tenants" / victim),
                     str(config.state_dir / "logs" / f"tracking-{victim}.log")]
            if reader in servers:
                paths.append(str(config.state_dir / "ftp" / f"flops_{victim}"))
            for path, result in _read_as(account, paths).items():
                ledger.attempt(f"{reader} reads {path}", not result.startswith("refused"), result[:80])
    ledger.verdict()


def test_another_tenants_account_reads_nothing_of_a_projects_fl_outputs(target):
    """A `round` of an acme project leaves its best model, the actors' logs and working files under
    state_dir/fl/acme/<project>; as globex's account (a server given over to an attacker), read each file and list
    each folder, from state_dir/fl down: every one is refused. Its own environment it reads: the attempt is real."""
    target.stack.up()  # the stores an earlier test stopped come back
    config = target.stack.load()
    done = conftest.run_cli("round", "--tenant", "acme", "--project", "Outputs", "--rounds", "1", "--learners", "2",
                            "--timeout", "240", config=target.stack.config_path, timeout=300,
                            env={"FLWR_TELEMETRY_ENABLED": "0", "MLFLOW_DISABLE_TELEMETRY": "true"})
    assert done.returncode == 0, done.stderr[-2000:]
    fl = config.state_dir / "fl"
    work = fl / "acme" / "Outputs"
    outputs = [fl, fl / "acme", work, *sorted(work.rglob("*"))]
    assert (work / "model" / "best.npz").is_file() and any(p.parent.name == "logs" for p in outputs), outputs
    ledger = Ledger(f"[{target.kind}] another tenant's account on a project's FL outputs")
    reader = running_service(config, "tracking-globex")
    account = pwd.getpwnam(reader.username())
    own = f"/proc/{reader.pid}/environ"
    read = _read_as(account, [own, *map(str, outputs)])
    assert target.stack.secrets().admin_password("globex") in read.pop(own), "globex cannot read its own environment"
    for path, result in read.items():
        ledger.attempt(f"globex reads {path}", not result.startswith("refused: PermissionError"), result[:80])
    ledger.verdict()


def _read_as(account: pwd.struct_passwd, paths: list[str]) -> dict[str, str]:
    """What ``account`` gets from each path: a file's text, a folder's names, or 'refused: <error>'."""
    script = ("import json,os,sys\nout={}\n"
              "for p in json.load(sys.stdin):\n"
              "    try: out[p]=' '.join(os.listdir(p)) if os.path.isdir(p) else "
              "open(p,'rb').read().decode('utf-8','replace')\n"
              "    except OSError as e: out[p]='refused: '+type(e).__name__\n"
              "print(json.dumps(out))\n")
    done = subprocess.run([sys.executable, "-c", script], input=json.dumps(paths), capture_output=True, text=True,
                          user=account.pw_uid, group=account.pw_gid, extra_groups=[], timeout=60, cwd="/")
    assert done.returncode == 0, done.stderr
    return json.loads(done.stdout)
