"""Issue 9 ("lock every door"), compose part: attacks on a running compose stack, each expected to fail.

Every test counts its attempts and what got through ("successes"), and asserts that nothing did, listing each
success. The stack is this module's own: a fresh one with its own secrets, rendered by `flops-mlops render
--target compose` for two tenants, default (whose parts are those of the root compose.yaml: a unit test checks
that adding a tenant changes nothing of the others) and acme.

- One tenant reaches nothing of the other: not its tracking server, FTP folder or database.

- Without a login, every route of the server (MLflow's REST API under /api and /ajax-api, the artifact routes,
  GraphQL, the UI page /) answers 401; /health answers 200. The route list comes from the installed MLflow,
  the same version as in the image (checked), so a route added by an upgrade is attacked too.
- An FL project user (fl-<project>, the aggregator's login) cannot read or change what it was not granted.
- No experiment can put its artifacts outside the tenant's proxied store (400).
- Error answers of the artifact routes and the containers' logs hold no secret of .env (plain or URL-quoted).
- Processes run as non-root users, except the vsftpd listener (it must chroot; its sessions do not) and tini,
  the artifact store's PID 1; each tenant's tracking server as a uid of its own.
- The artifact store speaks only explicit FTPS (artifact_store.tls, on in configs/compose.yaml): a plain FTP login
  is refused, an FTPS login verifies the deployment's CA; the store's key is a 0600 file in the artifact store
  only, and the tracking servers check the certificate's chain and host name.
- `docker inspect` shows no secret in any container's command line (its environment is visible to anyone who
  may run `docker inspect`, as documented for Docker; .env is the same secret on disk).
"""

from __future__ import annotations

import ftplib
import io
import json
import re
import ssl
import subprocess
import time
import uuid
from urllib.parse import quote

import pymysql
import pytest
import requests
from compose_stack import DEFAULT_FL_PROJECT, SERVICES, TENANT, ComposeStack, ftp_password, start_stack
from flops_mlops.stores.mysql import verified_ssl
from tracking_checks import ftp_client

pytestmark = [pytest.mark.docker, pytest.mark.services, pytest.mark.timeout(1800)]

MISSING = "nothing-here"
OTHER = "acme"  # the second tenant


@pytest.fixture(scope="module")
def stack(tmp_path_factory):
    yield from start_stack(tmp_path_factory, (OTHER,))
# Public by MLflow's design (mlflow.server.auth: _UNPROTECTED_PATH_PREFIXES, _PUBLIC_ROUTE_SUFFIXES): the UI's
# static files, the health check, and server-info (capability discovery, "no tenant data"). These must still
# hold no secret (test_public_routes_hold_no_secret).
PUBLIC_PREFIXES = ("/static", "/favicon.ico", "/health")
PUBLIC_SUFFIXES = ("/mlflow/server-info",)


def is_public(path: str) -> bool:
    return path.startswith(PUBLIC_PREFIXES) or path.endswith(PUBLIC_SUFFIXES)


def fill(path: str) -> str:
    """A route pattern with every variable filled in: Flask <conv:name>, FastAPI {name}."""
    return re.sub(r"<[^>]+>|\{[^}]+\}", MISSING, path)


def every_route() -> list[tuple[str, str]]:
    """(method, path) of every route the tracking server has: MLflow's Flask app, its FastAPI routers, and the
    basic-auth app's own routes (users, permissions, signup), from the installed MLflow."""
    import mlflow.server.auth.routes as auth_routes
    from mlflow.server import app
    from mlflow.server.fastapi_app import create_fastapi_app

    found: set[tuple[str, str]] = set()
    for rule in app.url_map.iter_rules():
        for method in rule.methods - {"HEAD", "OPTIONS"}:
            found.add((method, fill(rule.rule)))
    for path, operations in create_fastapi_app(app).openapi()["paths"].items():
        for method in operations:
            found.add((method.upper(), fill(path)))
    for value in vars(auth_routes).values():
        if isinstance(value, str) and value.startswith("/") and not value.endswith((".py", ".pyc")):
            found.update({("GET", fill(value)), ("POST", fill(value))})
    return sorted(found, key=lambda item: (item[1], item[0]))


def secrets_of(stack: ComposeStack) -> dict[str, str]:
    """Every secret of the stack's .env, plain and URL-quoted: shown form -> the key it belongs to."""
    forms = {}
    for key, value in stack.secrets.items():
        if value:
            forms[value] = key
            forms[quote(value, safe="")] = f"{key} (URL-quoted)"
    return forms


def leaks(text: str, secrets: dict[str, str]) -> list[str]:
    return [key for value, key in secrets.items() if value in text]


def report(what: str, attempts: int, successes: list[str]) -> str:
    return (f"{what}: {len(successes)} of {attempts} attempts succeeded, expected none:\n  "
            + "\n  ".join(successes))


# --- tenants apart ---------------------------------------------------------------------------------------


def test_one_tenant_reaches_nothing_of_the_other(stack, private):
    import tracking_checks

    # acme's own server works for acme's admin: a model lands in acme's store.
    logged = tracking_checks.log_example(stack.tenant_uri(OTHER), experiment="acme-own",
                                         login=stack.tenant_admin(OTHER))
    attempts, successes = 0, []
    # Each tenant's admin password opens only its own server (each has its own login database).
    for tenant, uri in ((TENANT, stack.tenant_uri(OTHER)), (OTHER, stack.tenant_uri(TENANT))):
        attempts += 1
        answer = requests.get(f"{uri}/api/2.0/mlflow/experiments/search", auth=stack.tenant_admin(tenant),
                              params={"max_results": 100}, timeout=30)
        if answer.status_code != 401:
            successes.append(f"{tenant}'s admin on the other server: HTTP {answer.status_code}")
    # acme's server has no trace of default's experiment, and default's none of acme's.
    for uri, login, foreign in ((stack.tenant_uri(OTHER), stack.tenant_admin(OTHER), private["name"]),
                                (stack.tenant_uri(TENANT), stack.tenant_admin(TENANT), "acme-own")):
        attempts += 1
        names = {e["name"] for e in requests.get(f"{uri}/api/2.0/mlflow/experiments/search", auth=login,
                                                 params={"max_results": 1000}, timeout=30).json()["experiments"]}
        if foreign in names:
            successes.append(f"{uri} lists the other tenant's experiment {foreign}")
    # FTP: acme's user is chrooted to its own folder, and default's password is not acme's.
    with stack.ftp() as ftp:
        ftp.login(f"flops_{OTHER}", stack.secrets[f"FLOPS_TENANT_{OTHER.upper()}_FTP_PASSWORD"])
        own = [name.split("/")[-1] for name in ftp.nlst("artifacts")]
        assert logged.experiment_id in own, own  # its own artifacts are there
        for path in (f"/flops_{TENANT}", f"../flops_{TENANT}", f"/../flops_{TENANT}/artifacts"):
            attempts += 1
            try:
                listing = ftp.nlst(path)
            except ftplib.error_perm:
                continue
            if listing:
                successes.append(f"FTP flops_{OTHER} lists {path}: {listing[:3]}")
    attempts += 1
    with stack.ftp() as ftp:
        try:
            ftp.login(f"flops_{OTHER}", ftp_password(stack))
            successes.append(f"FTP flops_{OTHER} logs in with default's password")
        except ftplib.error_perm:
            pass
    # MySQL: acme's user sees its own database only and cannot use default's.
    with pymysql.connect(host="127.0.0.1", port=stack.ports["FLOPS_MYSQL_PORT"], user=f"mlflow_{OTHER}",
                         password=stack.secrets[f"FLOPS_TENANT_{OTHER.upper()}_DB_PASSWORD"],
                         ssl=verified_ssl(stack.ca)) as conn, \
            conn.cursor() as cursor:
        cursor.execute("SHOW DATABASES")
        attempts += 1
        visible = {row[0] for row in cursor.fetchall()} - {"information_schema"}
        if visible != {f"mlflow_{OTHER}", f"mlflow_{OTHER}_auth"}:  # its records and its own logins
            successes.append(f"mlflow_{OTHER} sees databases {sorted(visible)}")
        for table in (f"mlflow_{TENANT}.runs", f"mlflow_{TENANT}_auth.users"):
            attempts += 1
            try:
                cursor.execute(f"SELECT COUNT(*) FROM {table}")
                successes.append(f"mlflow_{OTHER} reads {table}")
            except pymysql.err.OperationalError:
                pass
    assert successes == [], report("one tenant at another's data", attempts, successes)


# --- the front door: a login for everything ---------------------------------------------------------------


def test_every_route_needs_a_login(stack):
    import mlflow

    version = stack.api("GET", "/version", login=stack.admin)
    assert version.status_code == 200 and version.text.strip() == mlflow.__version__, (
        f"the server runs MLflow {version.text!r}, the test venv {mlflow.__version__}: the route list would not "
        "be the server's")
    routes = every_route()
    assert len(routes) > 400, len(routes)  # the whole API, not a handful
    attempts, successes, public = 0, [], []
    for method, path in routes:
        if is_public(path):
            public.append((method, path))
            continue
        attempts += 1
        body = {} if method in ("POST", "PUT", "PATCH", "DELETE") else None
        answer = stack.api(method, path, json=body, allow_redirects=False)
        if answer.status_code != 401:
            successes.append(f"{method} {path}: HTTP {answer.status_code} {answer.text[:120]!r}")
    for path in ("/", "/graphql", "/get-artifact", "/model-versions/get-artifact",
                 "/api/2.0/mlflow-artifacts/artifacts", f"/ajax-api/2.0/mlflow-artifacts/artifacts/{MISSING}"):
        assert ("GET", path) in routes or any(p == path for _, p in routes), f"{path} is not in the route list"
    assert successes == [], report("anonymous requests", attempts, successes)

    # A wrong password is no login either, for the admin and for the FL user.
    for user in ("admin", f"fl-{DEFAULT_FL_PROJECT}", "nobody"):
        answer = stack.api("GET", "/api/2.0/mlflow/experiments/search", login=(user, "not-the-password"),
                           params={"max_results": 10})
        assert answer.status_code == 401, (user, answer.status_code)
    assert stack.api("GET", "/health").status_code == 200
    assert public and all(is_public(path) for _, path in public)


def test_public_routes_hold_no_secret(stack):
    secrets = secrets_of(stack)
    found = []
    for path in ("/health", "/api/3.0/mlflow/server-info", "/ajax-api/3.0/mlflow/server-info"):
        answer = stack.api("GET", path)
        found += [f"{path}: {key}" for key in leaks(answer.text + json.dumps(dict(answer.headers)), secrets)]
    assert found == [], found


# --- a project user stays in its project ----------------------------------------------------------------


@pytest.fixture(scope="module")
def private(stack):
    """An experiment, run and registered model the admin made and granted to nobody."""
    admin = stack.admin
    name = f"private{uuid.uuid4().hex[:8]}"
    created = stack.api("POST", "/api/2.0/mlflow/experiments/create", login=admin, json={"name": name})
    assert created.status_code == 200, created.text
    experiment_id = created.json()["experiment_id"]
    run = stack.api("POST", "/api/2.0/mlflow/runs/create", login=admin, json={"experiment_id": experiment_id})
    assert run.status_code == 200, run.text
    model = stack.api("POST", "/api/2.0/mlflow/registered-models/create", login=admin, json={"name": name})
    assert model.status_code == 200, model.text
    info = run.json()["run"]["info"]
    return {"name": name, "experiment_id": experiment_id, "run_id": info["run_id"],
            "artifact_uri": info["artifact_uri"]}


def test_a_project_user_sees_only_its_project(stack, private):
    user = stack.fl_login()
    # Its own project: readable (the login works, so the 403s below are refusals, not a broken login).
    own = stack.api("GET", "/api/2.0/mlflow/experiments/get-by-name", login=user,
                    params={"experiment_name": DEFAULT_FL_PROJECT})
    assert own.status_code == 200, own.text
    experiment, run, name = private["experiment_id"], private["run_id"], private["name"]
    attempts = [
        ("GET", "/api/2.0/mlflow/experiments/get", {"params": {"experiment_id": experiment}}),
        ("GET", "/api/2.0/mlflow/experiments/get", {"params": {"experiment_id": "0"}}),
        ("GET", "/api/2.0/mlflow/experiments/get-by-name", {"params": {"experiment_name": name}}),
        ("GET", "/ajax-api/2.0/mlflow/experiments/get", {"params": {"experiment_id": experiment}}),
        ("GET", "/api/2.0/mlflow/runs/get", {"params": {"run_id": run}}),
        ("POST", "/api/2.0/mlflow/runs/create", {"json": {"experiment_id": experiment}}),
        ("POST", "/api/2.0/mlflow/runs/log-metric", {"json": {"run_id": run, "key": "x", "value": 1,
                                                                "timestamp": 0}}),
        ("POST", "/api/2.0/mlflow/experiments/update", {"json": {"experiment_id": experiment, "new_name": "taken"}}),
        ("POST", "/api/2.0/mlflow/experiments/delete", {"json": {"experiment_id": experiment}}),
        ("GET", "/api/2.0/mlflow/artifacts/list", {"params": {"run_id": run}}),
        ("GET", "/api/2.0/mlflow-artifacts/artifacts", {"params": {"path": f"{experiment}/{run}"}}),
        ("GET", f"/api/2.0/mlflow-artifacts/artifacts/{experiment}/{run}/artifacts/x", {}),
        ("PUT", f"/api/2.0/mlflow-artifacts/artifacts/{experiment}/{run}/artifacts/x", {"data": b"x"}),
        ("GET", "/get-artifact", {"params": {"run_uuid": run, "path": "x"}}),
        ("GET", "/api/2.0/mlflow/registered-models/get", {"params": {"name": name}}),
        ("POST", "/api/2.0/mlflow/model-versions/create", {"json": {"name": name, "source": f"runs:/{run}/m"}}),
        ("GET", "/api/2.0/mlflow/users/get", {"params": {"username": "admin"}}),
        ("POST", "/api/2.0/mlflow/users/create", {"json": {"username": "mallory", "password": "x" * 20}}),
        ("PATCH", "/api/2.0/mlflow/users/update-admin", {"json": {"username": user[0], "is_admin": True}}),
        ("PATCH", "/api/2.0/mlflow/users/update-password", {"json": {"username": "admin", "password": "y" * 20}}),
        ("POST", "/api/3.0/mlflow/users/permissions/grant",
         {"json": {"username": user[0], "resource_type": "experiment", "resource_id": experiment,
                   "permission": "MANAGE"}}),
    ]
    successes = []
    for method, path, kwargs in attempts:
        answer = stack.api(method, path, login=user, **kwargs)
        if answer.status_code != 403:
            successes.append(f"{method} {path} {kwargs}: HTTP {answer.status_code} {answer.text[:120]!r}")
    # Searching shows only what it may read.
    search = stack.api("POST", "/api/2.0/mlflow/experiments/search", login=user, json={"max_results": 1000})
    assert search.status_code == 200, search.text
    seen = {e["name"] for e in search.json().get("experiments", [])}
    if seen - {DEFAULT_FL_PROJECT}:
        successes.append(f"experiments/search shows {sorted(seen - {DEFAULT_FL_PROJECT})}")
    models = stack.api("GET", "/api/2.0/mlflow/registered-models/search", login=user)
    if models.status_code == 200 and {m["name"] for m in models.json().get("registered_models", [])} - {
            DEFAULT_FL_PROJECT}:
        successes.append(f"registered-models/search shows {models.json()['registered_models']}")
    assert successes == [], report(f"{user[0]} on what it was not granted", len(attempts) + 2, successes)
    # MLflow lets every logged-in user list the users and their roles; our app leaves that to the admin.
    roster = stack.api("GET", "/api/2.0/mlflow/users/list", login=user)
    assert roster.status_code == 403, roster.text
    # Nothing changed behind the refusals.
    assert stack.api("GET", "/api/2.0/mlflow/users/get", login=stack.admin,
                     params={"username": "mallory"}).status_code == 404


# --- artifacts only in the proxied store ------------------------------------------------------------------


@pytest.mark.parametrize("who", ["admin", "fl"])
def test_no_experiment_stores_artifacts_outside_the_proxied_store(stack, who):
    login = stack.admin if who == "admin" else stack.fl_login()
    locations = ["file:///tmp/x", "file:/tmp/x", "/tmp/x", "relative/path", "ftp://artifact-store/other",
                 f"ftp://flops_{TENANT}:guess@artifact-store:21/artifacts", "http://127.0.0.1:9/x",
                 "https://example.invalid/x", "s3://bucket/x", "mlflow-artifacts://other-host/x",
                 "mlflow-artifacts:/../x", "mlflow-artifacts:/a/../../x"]
    successes = []
    for number, location in enumerate(locations):
        answer = stack.api("POST", "/api/2.0/mlflow/experiments/create", login=login,
                           json={"name": f"elsewhere-{who}-{number}-{uuid.uuid4().hex[:6]}",
                                 "artifact_location": location})
        if answer.status_code not in (400, 403):  # 403: a project user creates no experiment at all
            successes.append(f"{location}: HTTP {answer.status_code} {answer.text[:120]!r}")
    assert successes == [], report(f"experiments with a foreign artifact_location ({who})", len(locations),
                                   successes)


# --- no secret in answers, logs, command lines ------------------------------------------------------------


def test_missing_artifacts_answer_without_secrets(stack, private):
    admin = stack.admin
    run, name = private["run_id"], private["name"]
    version = stack.api("POST", "/api/2.0/mlflow/model-versions/create", login=admin,
                        json={"name": name, "source": f"runs:/{run}/model", "run_id": run})
    if version.status_code != 200:
        version = stack.api("POST", "/api/2.0/mlflow/model-versions/create", login=admin,
                            json={"name": name, "source": f"{private['artifact_uri']}/model"})
    assert version.status_code == 200, version.text
    number = version.json()["model_version"]["version"]
    prefix = private["artifact_uri"].removeprefix("mlflow-artifacts:/")
    requests_made = [
        ("/api/2.0/mlflow-artifacts/artifacts/nothing-here", {}),
        ("/ajax-api/2.0/mlflow-artifacts/artifacts/nothing-here", {}),
        (f"/api/2.0/mlflow-artifacts/artifacts/{prefix}/nothing-here", {}),
        ("/api/2.0/mlflow-artifacts/artifacts", {"path": "nothing-here/deeper"}),
        ("/get-artifact", {"run_uuid": run, "path": "nothing-here"}),
        ("/get-artifact", {"run_id": run, "path": "model/MLmodel"}),
        ("/model-versions/get-artifact", {"name": name, "version": number, "path": "nothing-here"}),
        ("/model-versions/get-artifact", {"name": name, "version": number, "path": "MLmodel"}),
        ("/api/2.0/mlflow/artifacts/list", {"run_id": run, "path": "nothing-here"}),
    ]
    secrets = secrets_of(stack)
    successes, statuses = [], {}
    for path, params in requests_made:
        answer = stack.api("GET", path, login=admin, params=params)
        statuses[f"{path} {params}"] = answer.status_code
        text = answer.text + "\n" + "\n".join(f"{k}: {v}" for k, v in answer.headers.items())
        successes += [f"GET {path} {params} (HTTP {answer.status_code}): {key}" for key in leaks(text, secrets)]
        if re.search(r"ftp://[^/\s:@]+:(?!\*\*\*@)[^@\s/]+@", text):
            successes.append(f"GET {path} {params}: an ftp:// URI with a password in the answer")
    # These were errors (the server tried the FTP store and failed), i.e. the paths that used to leak.
    assert any(status >= 400 for status in statuses.values()), statuses
    assert successes == [], report("secrets in answers to missing artifacts", len(requests_made), successes)

    logs = stack.compose("logs", "--no-color", "--timestamps").stdout
    assert "tracking-server" in logs
    found = [f"docker compose logs: {key}" for key in leaks(logs, secrets)]
    assert found == [], report("secrets in the containers' logs", len(secrets), found)


def test_no_secret_in_any_container_command_line(stack):
    secrets = secrets_of(stack)
    ids = stack.container_ids()
    assert set(ids) >= set(SERVICES)
    successes = []
    for service, container in ids.items():
        inspected = json.loads(subprocess.run(["docker", "inspect", container], capture_output=True, text=True,
                                              check=True).stdout)[0]
        shown = {"Path": inspected["Path"], "Args": inspected["Args"], "Cmd": inspected["Config"]["Cmd"],
                 "Entrypoint": inspected["Config"]["Entrypoint"],
                 "Healthcheck": inspected["Config"].get("Healthcheck"), "Labels": inspected["Config"]["Labels"]}
        for field, value in shown.items():
            successes += [f"{service} {field}: {key}" for key in leaks(json.dumps(value), secrets)]
    assert successes == [], report("secrets in docker inspect (command lines)", len(ids) * 6, successes)


# --- least privilege in the containers --------------------------------------------------------------------


def processes(container: str) -> list[dict]:
    """The container's processes as the host sees them (uid as a number: container users are unknown here)."""
    out = subprocess.run(["docker", "top", container, "-eo", "uid,pid,ppid,comm,args"], capture_output=True,
                         text=True, check=True).stdout.splitlines()
    rows = []
    for line in out[1:]:
        uid, pid, ppid, comm, *args = line.split(None, 4)
        rows.append({"uid": int(uid), "pid": int(pid), "ppid": int(ppid), "comm": comm, "args": " ".join(args)})
    return rows


def test_processes_run_as_non_root_except_vsftpd(stack):
    ids = stack.container_ids()
    main_pid = {service: json.loads(subprocess.run(["docker", "inspect", container], capture_output=True,
                                                    text=True, check=True).stdout)[0]["State"]["Pid"]
                for service, container in ids.items()}
    # While an FTP session is open, so that its processes are in the picture too.
    with stack.ftp() as ftp:
        ftp.login(f"flops_{TENANT}", ftp_password(stack))
        seen: dict[str, list[dict]] = {}
        for _ in range(3):  # a few samples: healthchecks come and go
            for service, container in ids.items():
                seen.setdefault(service, []).extend(processes(container))
            time.sleep(1)
    attempts, successes = 0, []
    vsftpd_root = 0
    for service, rows in seen.items():
        for row in rows:
            attempts += 1
            if row["uid"] != 0:
                continue
            if service == "artifact-store" and row["comm"] == "tini" and row["pid"] == main_pid[service]:
                continue  # PID 1: reaps vsftpd's session processes (see its Dockerfile)
            if service == "artifact-store" and row["comm"] == "vsftpd" and row["ppid"] == main_pid[service]:
                vsftpd_root += 1
                continue  # the listener (tini's child): chroot needs root; its sessions run as nobody, then ftp
            successes.append(f"{service}: pid {row['pid']} {row['comm']} runs as root: {row['args'][:100]}")
    assert successes == [], report("processes running as root", attempts, successes)
    # Each tenant's tracking server runs as a uid of its own, which no other container's process has.
    servers = ("tracking-server", f"tracking-server-{OTHER}")
    uids = {service: {row["uid"] for row in seen[service]} for service in servers}
    assert uids == {"tracking-server": {20001}, f"tracking-server-{OTHER}": {20002}}, uids
    others = {row["uid"] for service, rows in seen.items() if service not in uids for row in rows}
    assert not others & {20001, 20002}, others
    assert vsftpd_root >= 1  # the listener was seen (the check above looked at the right container)
    # The logged-in FTP session itself runs as the account the virtual users map to.
    ftp_uid = int(stack.exec("artifact-store", "id", "-u", "ftp").stdout)
    sessions = [row for row in seen["artifact-store"] if row["comm"] == "vsftpd" and row["uid"] == ftp_uid]
    assert sessions, seen["artifact-store"]
    # The images say so themselves, not only compose.yaml.
    for service, user in (("tracking-server", "mlflow"),):
        image = json.loads(subprocess.run(["docker", "inspect", ids[service]], capture_output=True, text=True,
                                          check=True).stdout)[0]["Config"]["Image"]
        configured = subprocess.run(["docker", "image", "inspect", "--format", "{{.Config.User}}", image],
                                    capture_output=True, text=True, check=True).stdout.strip()
        assert configured == user, (service, configured)
    fl_image = "flops-mlops/fl-actor:0.1.0"
    configured = subprocess.run(["docker", "image", "inspect", "--format", "{{.Config.User}}", fl_image],
                                capture_output=True, text=True)
    if configured.returncode == 0:
        assert configured.stdout.strip() == "fl"


def test_login_database_is_in_the_backend_store_and_nothing_stays_beside_the_server(stack):
    listing = stack.exec("tracking-server", "stat", "-c", "%n %u %a", "/srv/mlflow/auth").stdout.split("\n")
    modes = {line.split()[0]: tuple(line.split()[1:]) for line in listing if line.strip()}
    # The tenant's own uid (20001: the first tenant's), no other tenant's server's.
    assert modes == {"/srv/mlflow/auth": ("20001", "700")}
    # Users and grants are in backend-store's mlflow_default_auth: no SQLite file, and no basic_auth.ini (with
    # MySQL it holds the database password for a moment, in a private temporary folder, then it is removed).
    # Only tls/: the server's HTTPS certificate and key (tracking.tls), which tracking-volumes copies in.
    assert stack.exec("tracking-server", "ls", "-A", "/srv/mlflow/auth").stdout.split() == ["tls"]
    assert sorted(stack.exec("tracking-server", "ls", "-A", "/srv/mlflow/auth/tls").stdout.split()) == [
        "tracking.crt", "tracking.key"]
    # The healthcheck is the server's own: as admin, database readable, FL user present.
    check = stack.exec("tracking-server", "flops-tracking-healthcheck")
    assert f"fl-{DEFAULT_FL_PROJECT}" in check.stdout
    assert stack.admin[1] not in check.stdout


def test_ftp_tenant_cannot_chmod_and_uploads_are_private(stack):
    config = stack.exec("artifact-store", "cat", "/run/flops-artifact-store/vsftpd.conf").stdout
    assert re.search(r"(?m)^chmod_enable=NO$", config) and re.search(r"(?m)^local_umask=077$", config), config
    name = f"private-{uuid.uuid4().hex[:8]}.txt"
    with stack.ftp() as ftp:
        ftp.login(f"flops_{TENANT}", ftp_password(stack))
        ftp.storbinary(f"STOR {name}", io.BytesIO(b"tenant data"))
        with pytest.raises(ftplib.error_perm):
            ftp.sendcmd(f"SITE CHMOD 0777 {name}")
        mode = stack.exec("artifact-store", "stat", "-c", "%a", f"/srv/ftp/flops_{TENANT}/{name}").stdout.strip()
        ftp.delete(name)
    assert mode == "600", mode


# Run in the tracking server's container: an FTPS handshake (AUTH TLS, no login) with the store, verified against
# the CA compose mounts there, by the service name (must pass) and by the store's IP address, which the
# certificate does not name (must fail: the host name is checked, not only the chain).
HANDSHAKES = """
import ftplib, socket, ssl
context = ssl.create_default_context(cafile="/etc/flops-tls/ca.crt")
for host in ("artifact-store", socket.gethostbyname("artifact-store")):
    ftp = ftplib.FTP_TLS(context=context)
    ftp.connect(host, 21, timeout=10)
    try:
        ftp.auth()
        print(host, "verified")
    except ssl.SSLCertVerificationError as exc:
        print(host, "refused", exc.verify_message)
    finally:
        ftp.close()
"""


def test_the_artifact_store_speaks_only_ftps_verified_against_the_deployments_ca(stack, tmp_path):
    attempts, successes = 0, []
    for tenant in (TENANT, OTHER):
        user, password = f"flops_{tenant}", stack.secrets[f"FLOPS_TENANT_{tenant.upper()}_FTP_PASSWORD"]
        attempts += 1
        with ftp_client("127.0.0.1", stack.ports["FLOPS_FTP_PORT"]) as ftp:  # plain FTP, the right password
            try:
                ftp.login(user, password)
                successes.append(f"plain FTP login as {user}")
            except ftplib.error_perm as refused:
                assert str(refused).startswith("530"), refused
        with stack.ftp() as ftp:  # FTPS, the certificate verified for 127.0.0.1 against the CA
            ftp.login(user, password)
            assert "artifacts" in [name.rsplit("/", 1)[-1] for name in ftp.nlst("/")]  # a TLS data connection
    # A client that trusts another CA stops at the handshake, before it sends a password.
    other = tmp_path / "other-ca.crt"
    subprocess.run(["openssl", "req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes",
                    "-keyout", str(tmp_path / "other-ca.key"), "-out", str(other), "-days", "2", "-subj", "/CN=other",
                    "-addext", "basicConstraints=critical,CA:TRUE"], check=True, capture_output=True)
    with ftp_client("127.0.0.1", stack.ports["FLOPS_FTP_PORT"], other) as ftp:
        with pytest.raises(ssl.SSLCertVerificationError):
            ftp.auth()
    # vsftpd is configured for TLS only, with the key a 0600 file of the artifact store's root alone.
    config = stack.exec("artifact-store", "cat", "/run/flops-artifact-store/vsftpd.conf").stdout
    for line in ("ssl_enable=YES", "force_local_logins_ssl=YES", "force_local_data_ssl=YES",
                 "rsa_private_key_file=/etc/flops-tls/ftp.key"):
        assert re.search(rf"(?m)^{re.escape(line)}$", config), line
    assert stack.exec("artifact-store", "stat", "-c", "%a", "/etc/flops-tls/ftp.key").stdout.strip() == "600"
    for service in ("tracking-server", f"tracking-server-{OTHER}"):
        assert stack.exec(service, "ls", "/etc/flops-tls").stdout.split() == ["ca.crt"]  # no key there
    # tracking.tls: each server's own HTTPS key, copied by tracking-volumes into its volume, is its uid's alone.
    for service, uid in (("tracking-server", 20001), (f"tracking-server-{OTHER}", 20002)):
        mode = stack.exec(service, "stat", "-c", "%a %u", "/srv/mlflow/auth/tls/tracking.key").stdout.strip()
        assert mode == f"600 {uid}", (service, mode)
    answers = stack.exec("tracking-server", "python", "-c", HANDSHAKES).stdout.splitlines()
    assert answers[0] == "artifact-store verified", answers
    assert answers[1].endswith("refused IP address mismatch, certificate is not valid for "
                               f"'{answers[1].split()[0]}'."), answers
    print(f"FTPS: {attempts} plain logins tried, {len(successes)} got in")
    assert successes == []
