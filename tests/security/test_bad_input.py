"""Bad input against a running tracking server, on the embedded and native (MariaDB + vsftpd) stacks: each malformed
request the tester found gets a 400 that names what is wrong, never a 500, and no answer to anything carries SQL, a
traceback, a path of the host or a URI with credentials; a fuzz test sends generated bodies and artifact paths over
the REST routes we expose, as every identity the tester used (anonymous, a wrong password, the other tenant's admin,
the other tenant's user, a read-only user, the admin). The stack has two tenants, acme (attacked) and globex (whose
logins are tried on acme's server): the other tenant's identities get 401, 403 or 429 (throttled), never more.
"""

from __future__ import annotations

import json
import os
import re
from dataclasses import dataclass

import conftest
import pytest
import requests

pytestmark = [pytest.mark.services, pytest.mark.timeout(900)]

TENANT, OTHER = "acme", "globex"
SQL = re.compile(r"INSERT INTO|UPDATE \S+ SET|DELETE FROM|SELECT .{0,200}FROM|\[SQL: |pymysql|sqlite3\.|sqlalchemy",
                 re.DOTALL | re.IGNORECASE)
INTERNALS = re.compile(r"Traceback \(most recent call last\)|File \"/|/tmp/|/var/|/srv/|/opt/|site-packages|"
                       r"[a-z+]+://[^/\s:@]+:[^/\s@]+@")


@dataclass
class Server:
    stack: conftest.TestStack
    kind: str
    uri: str
    admin: tuple[str, str]
    reader: tuple[str, str]
    other_admin: tuple[str, str]  # the other tenant's admin and one of its users: logins of another server
    other_user: tuple[str, str]
    experiment_id: str
    run_id: str

    def call(self, method: str, path: str, login=None, source: str | None = None, **kwargs) -> requests.Response:
        """One request, its path sent exactly as written (requests would resolve `.` and `..` segments first);
        ``source``: the client address to send from (another loopback address)."""
        request = requests.Request(method, self.uri + path, auth=login, **kwargs).prepare()
        request.url = self.uri + path
        with conftest.client_from(source) if source else requests.Session() as session:
            return session.send(request, allow_redirects=False, timeout=60)


@pytest.fixture(scope="module", params=["local", "native"])
def server(request, tmp_path_factory):
    from flops_mlops.tracking.users import AuthAdmin

    folder = tmp_path_factory.mktemp(f"bad-input-{request.param}")
    stack = conftest.TestStack.create(request.param, folder, [TENANT, OTHER])
    stack.up()
    try:
        config = stack.load()
        uri = config.tracking_uri(config.tenant(TENANT))
        auth = AuthAdmin(uri, stack.secrets().admin_password(TENANT))
        # The tenant's own admin is a second admin user: the other tenant's admin logs in as `admin` (with its
        # own password), and the login throttle then blocks that name on this server for everyone.
        admin = ("owner", os.urandom(12).hex())
        auth.add_user(*admin)
        auth.call("PATCH", "/api/2.0/mlflow/users/update-admin", json={"username": admin[0], "is_admin": True})
        experiment = requests.post(f"{uri}/api/2.0/mlflow/experiments/create", json={"name": "Fuzzed"}, auth=admin,
                                   timeout=60).json()["experiment_id"]
        run = requests.post(f"{uri}/api/2.0/mlflow/runs/create", json={"experiment_id": experiment}, auth=admin,
                            timeout=60).json()["run"]["info"]["run_id"]
        reader = ("reader", os.urandom(12).hex())
        auth.add_user(*reader)
        auth.grant(reader[0], "experiment", experiment, "READ")
        other_uri = config.tracking_uri(config.tenant(OTHER))
        other = AuthAdmin(other_uri, stack.secrets().admin_password(OTHER))
        other_user = (f"{OTHER}-user", os.urandom(12).hex())
        other.add_user(*other_user)
        other.grant_project(other_user[0], "Theirs", "EDIT", create=True)
        for login in (stack.admin(OTHER), other_user):  # real logins, on their own tenant's server
            assert requests.get(f"{other_uri}/api/2.0/mlflow/experiments/search?max_results=1", auth=login,
                                timeout=60).status_code == 200
        yield Server(stack, request.param, uri, admin, reader, stack.admin(OTHER), other_user, experiment, run)
    finally:
        stack.cli("down", "--purge")


def assert_clean(answer: requests.Response, what: str) -> None:
    assert answer.status_code < 500, f"{what}: {answer.status_code} {answer.text[:500]}"
    assert not SQL.search(answer.text), f"{what}: SQL in the answer: {answer.text[:500]}"
    assert not INTERNALS.search(answer.text), f"{what}: internals in the answer: {answer.text[:500]}"


def assert_refused_to_others(server: Server, method: str, path: str, what: str, **kwargs) -> None:
    """The same request as the other tenant's admin and user: refused (401, 403, or 429 once throttled), cleanly."""
    for who in FOREIGN:
        answer = server.call(method, path, identities(server)[who], source=source_of(who), **kwargs)
        assert_clean(answer, f"{who}: {what}")
        assert_refused_if_foreign(who, answer, what)


def assert_refused_if_foreign(who: str, answer: requests.Response, what: str) -> None:
    if who in FOREIGN:
        assert answer.status_code in REFUSED, f"{who}: {what}: {answer.status_code} {answer.text[:300]}"


def assert_refused(answer: requests.Response, what: str, *named: str) -> None:
    """A 400 in MLflow's error shape whose message names ``named``."""
    assert_clean(answer, what)
    assert answer.status_code == 400, f"{what}: {answer.status_code} {answer.text[:500]}"
    message = answer.json()["message"]
    assert all(word in message for word in named), f"{what}: {message!r} does not name {named}"


def test_json_that_is_not_an_object_is_a_400_and_double_encoded_objects_still_work(server):
    for route in ("experiments/create", "model-versions/create", "registered-models/create", "runs/create"):
        for body in ("[1, 2]", '"[1]"', "17", "{not json"):
            answer = server.call("POST", f"/api/2.0/mlflow/{route}", server.admin, data=body,
                                 headers={"Content-Type": "application/json"})
            assert_refused(answer, f"{route} with {body}", "request body")
            assert_refused_to_others(server, "POST", f"/api/2.0/mlflow/{route}", f"{route} with {body}", data=body,
                                     headers={"Content-Type": "application/json"})
    # A JSON string holding an object (older clients' double encoding) is read as MLflow reads it.
    answer = server.call("POST", "/api/2.0/mlflow/experiments/create", server.admin,
                         data=json.dumps(json.dumps({"name": "DoubleEncoded"})),
                         headers={"Content-Type": "application/json"})
    assert answer.status_code == 200, answer.text


@pytest.mark.parametrize("name, named", [
    ("x" * 300, "characters, got 300"),
    ("line\nbreak", "control characters"),
    ("carriage\rreturn", "control characters"),
    ("nul\x00byte", "control characters"),
])
def test_names_too_long_or_with_control_characters_are_a_400_without_sql(server, name, named):
    for route, field, extra in (("experiments/create", "name", {}), ("registered-models/create", "name", {}),
                                ("runs/create", "run_name", {"experiment_id": server.experiment_id})):
        answer = server.call("POST", f"/api/2.0/mlflow/{route}", server.admin, json={field: name, **extra})
        assert_refused(answer, f"{route} {field}={name[:20]!r}", field, named)
        assert_refused_to_others(server, "POST", f"/api/2.0/mlflow/{route}", f"{route} {field}={name[:20]!r}",
                                 json={field: name, **extra})
    names = [e["name"] for e in server.call("GET", "/api/2.0/mlflow/experiments/search?max_results=1000",
                                            server.admin).json()["experiments"]]
    assert name not in names


@pytest.mark.parametrize("path, named", [
    ("a" * 300 + ".txt", "at most 255 bytes"),
    ("folder/.", "must end with a file name"),
    ("folder/./x.txt", "'.' and '..' segments"),
    ("folder//x.txt", "empty"),
])
def test_artifact_paths_a_file_system_cannot_hold_are_a_400(server, path, named):
    upload = server.call("PUT", f"/api/2.0/mlflow-artifacts/artifacts/{server.experiment_id}/{path}", server.admin,
                         data=b"payload")
    assert_refused(upload, f"PUT {path[:40]}", named)
    assert_refused_to_others(server, "PUT", f"/api/2.0/mlflow-artifacts/artifacts/{server.experiment_id}/{path}",
                             f"PUT {path[:40]}", data=b"payload")
    ui_route = f"/ajax-api/2.0/mlflow/upload-artifact?run_uuid={server.run_id}&path={path}"
    ui_upload = server.call("POST", ui_route, server.admin, data=b"payload",
                            headers={"Content-Type": "application/octet-stream"})
    assert_refused(ui_upload, f"UI upload {path[:40]}", named)
    assert_refused_to_others(server, "POST", ui_route, f"UI upload {path[:40]}", data=b"payload",
                             headers={"Content-Type": "application/octet-stream"})


def test_a_webhook_with_an_unknown_event_is_a_400_that_lists_the_known_ones(server):
    hook = {"name": "hook", "url": "https://example.org/hook",
            "events": [{"entity": "model_version", "action": "exploded"}]}
    answer = server.call("POST", "/api/2.0/mlflow/webhooks", server.admin, json=hook)
    assert_refused(answer, "webhook with action 'exploded'", "events[0]", "created")
    assert_refused_to_others(server, "POST", "/api/2.0/mlflow/webhooks", "webhook with action 'exploded'", json=hook)


def test_a_good_request_still_works(server):
    """The checks refuse only what is wrong: names, uploads and downloads in range go through."""
    answer = server.call("POST", "/api/2.0/mlflow/experiments/create", server.admin, json={"name": "y" * 256})
    assert answer.status_code == 200, answer.text
    path = f"/api/2.0/mlflow-artifacts/artifacts/{server.experiment_id}/folder/{'b' * 255}"
    assert server.call("PUT", path, server.admin, data=b"kept").status_code == 200
    assert server.call("GET", path, server.admin).content == b"kept"


# --- fuzz ------------------------------------------------------------------------------------------------------

POST_ROUTES = ["experiments/create", "experiments/update", "runs/create", "runs/update", "runs/log-batch",
               "runs/log-metric", "runs/log-parameter", "runs/set-tag", "runs/search", "registered-models/create",
               "registered-models/rename", "model-versions/create", "webhooks", "experiments/search",
               "users/create", "logged-models/search"]


def identities(server: Server) -> dict[str, tuple[str, str] | None]:
    return {"anonymous": None, "wrong password": (WRONG_LOGIN_USER, "not-the-password"),
            "other tenant's admin": server.other_admin, "other tenant's user": server.other_user,
            "reader": server.reader, "admin": server.admin}


# Wrong logins are throttled (429 after a few: tracking/logins.py) by user name and client address; they come from
# other user names and addresses, so that the admin's and the reader's requests are still fuzzed, not throttled.
WRONG_LOGIN_USER, WRONG_LOGIN_ADDRESS, FOREIGN_ADDRESS = "intruder", "127.0.0.3", "127.0.0.4"
FOREIGN = ("other tenant's admin", "other tenant's user")  # logins of the other tenant's server
REFUSED = (401, 403, 429)  # what a login of no user of this server gets, whatever the request


def source_of(who: str) -> str | None:
    return {"wrong password": WRONG_LOGIN_ADDRESS, **dict.fromkeys(FOREIGN, FOREIGN_ADDRESS)}.get(who)


def test_fuzzed_bodies_and_paths_never_get_a_500_or_internals(server):
    from hypothesis import HealthCheck, given, settings
    from hypothesis import strategies as st

    scalars = st.one_of(st.none(), st.booleans(), st.integers(min_value=-2**70, max_value=2**70),
                        st.floats(allow_nan=True), st.text(max_size=300))
    values = st.recursive(scalars, lambda inner: st.lists(inner, max_size=4) | st.dictionaries(
        st.text(max_size=20), inner, max_size=4), max_leaves=12)
    fields = st.sampled_from(["name", "new_name", "experiment_id", "run_id", "run_name", "key", "value", "source",
                              "events", "url", "metrics", "params", "tags", "username", "password", "filter",
                              "artifact_location", "max_results", "order_by", "timestamp", "step"])
    bodies = st.one_of(st.dictionaries(fields, values, max_size=6), values,
                       st.binary(max_size=200))
    segments = st.text(st.characters(blacklist_categories=("Cs",)), min_size=0, max_size=300)
    paths = st.lists(segments, min_size=1, max_size=4).map("/".join)
    seen: list[str] = []

    @settings(max_examples=int(os.environ.get("FLOPS_FUZZ_EXAMPLES", "200")), deadline=None, derandomize=True,
              suppress_health_check=list(HealthCheck), database=None)
    @given(who=st.sampled_from(list(identities(server))), route=st.sampled_from(POST_ROUTES), body=bodies,
           path=paths, method=st.sampled_from(["GET", "PUT"]))
    def one_request(who, route, body, path, method):
        login = identities(server)[who]
        data = body if isinstance(body, bytes) else json.dumps(body, allow_nan=True).encode()
        answer = server.call("POST", f"/api/2.0/mlflow/{route}", login, source=source_of(who), data=data,
                             headers={"Content-Type": "application/json"})
        assert_clean(answer, f"{who}: POST {route} {data[:120]!r}")
        assert_refused_if_foreign(who, answer, f"POST {route} {data[:120]!r}")
        quoted = requests.utils.quote(path, safe="/")
        answer = server.call(method, f"/api/2.0/mlflow-artifacts/artifacts/{server.experiment_id}/{quoted}", login,
                             source=source_of(who), data=b"x" if method == "PUT" else None)
        assert_clean(answer, f"{who}: {method} artifact {quoted[:120]!r}")
        assert_refused_if_foreign(who, answer, f"{method} artifact {quoted[:120]!r}")
        seen.append(who)

    one_request()
    print(f"\nfuzz on the {server.kind} stack: {len(seen)} examples, 2 requests each, as {sorted(set(seen))}")
    assert set(seen) == set(identities(server))
