"""A fake Oakestra root orchestrator (system manager REST API) for the push client's tests.

A real HTTP server on a free loopback port. Its behaviour is taken from the system manager's code in
oakestra/oakestra, root_orchestrator/system-manager-python/src/system_manager (the development line after
release v0.4.410), files as of these commits: blueprints/applications_blueprints.py, services/
application_management.py, services/service_management.py, roles/security_utils.py (277ec8c);
blueprints/users_blueprints.py, blueprints/services_blueprints.py, services/instance_management.py (9cbe82c);
blueprints/deployment_blueprints.py (c9fb794); users/auth.py (2a50176). What it does, as they do:

- users and tokens: ``POST /api/auth/login`` gives an access and a refresh token, JWTs whose subject is the
  user NAME (``sub``, claims ``user``, ``roles``, ``organization``); a wrong password is 401
  ``{"code":401,"status":"Unauthorized"}``. Routes behind flask_jwt_extended's ``jwt_required`` (applications,
  refresh) answer 401 ``{"msg": ...}`` for a missing or expired token and 422 ``{"msg": ...}`` for a bad
  signature or the wrong kind of token; routes behind the system manager's ``jwt_auth_required`` (services,
  instances, users) answer every token problem with 401 ``{"message":"Missing authentication token"}``.
- the user id check: ``GET /api/user/<username>`` answers only for the token's own name (else 403) with the user
  record, ``_id.$oid`` its database id; ``GET /api/applications/<userid>`` answers 401
  ``{"code":401,"status":"Unauthorized"}`` unless <userid> is that database id, so the name is refused.
- ``userId`` of an application record holds the user NAME (register_app stores the token identity).
- JSON-string bodies: application lists, service records and service lists are JSON strings encoding the JSON
  (``json_util.dumps`` returned through a flask-smorest response); the user record is JSON text.
- instances: ``POST /api/service/<id>/instance`` always answers ``{"message":"ok"}``; for a service of the user
  it sets the service REQUESTED ("Waiting for scheduling decision") and asks the scheduler. The instance enters
  ``instance_list`` only when a cluster took it (CLUSTER_SCHEDULED); until then, or when no cluster has
  capacity (the scheduler's answer sets the status, e.g. NoActiveClusterWithCapacity), the list stays empty.
  Here the scheduler answers on a GET of the service: ``scheduling`` "run" (a cluster takes the request),
  "hold" (no answer yet) or "no_capacity". Each later GET moves an instance one step (CLUSTER_SCHEDULED ->
  NODE_SCHEDULED -> RUNNING), unless ``frozen``; ``force_status[name]`` pins a service's status.
- deleting: ``DELETE /api/service/<id>/instance/<n>`` removes that instance (always "ok");
  ``DELETE /api/service/<id>`` scales down "all" instances with a loop that removes from the list it walks, so
  every second one is skipped and keeps running (recorded in ``leaked``), then deletes the service (500 when it
  is not the user's); ``DELETE /api/application/<id>`` does the same for each of its services, 501 when unknown.
- ``POST /api/application/`` answers with all of the user's applications; 409 on a duplicate name+namespace,
  422 on a schema failure, 500 without a body or sla_version. Every error of ``POST /api/service/`` is a 400.
  ``GET /api/application/<id>`` answers 200 ``null`` (404 when unknown); a service or application of another
  user, or an unknown one, is 404 on GET.
- collection routes end in '/': without it the answer is a 308 redirect.
- microservice ``volumes``: an array of objects, each with string ``volume_id`` and ``csi_driver`` (required),
  optional string ``mount_path`` and object ``config``; stored as sent (the schema after v0.4.410; the Go
  structs that read it: scheduler/calculate/schedulers/cpumem/cpumem.go and go_node_engine/model/Service.go).
Test hooks: ``restart_at`` (a path regex) changes the signing key when such a path is first called, as a
restart did up to v0.4.402; ``fail_once`` maps (method, path regex) to a status answered once.
Only the tests use this; nothing here is a mock of a real component we ship against.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import ipaddress
import json
import re
import secrets
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

STEPS = ["REQUESTED", "CLUSTER_SCHEDULED", "NODE_SCHEDULED", "RUNNING"]
NAME = re.compile(r"^[a-zA-Z0-9]{1,30}$")
INTEGERS = ("memory", "vcpus", "vgpus", "vtpus", "bandwidth_in", "bandwidth_out", "storage")
STRINGS = ("port", "state", "sla_violation_strategy", "target_node")
BOOLEANS = ("one_shot", "privileged")
STRING_ARRAYS = ("cmd", "environment", "args", "added_files")
SERVICE_NET = ipaddress.IPv4Network("10.30.0.0/16")
ROLES = ["Admin", "Organization_Admin", "Application_Provider", "Infrastructure_Provider"]
AUTH_FAILED = {"message": "Missing authentication token"}  # jwt_auth_required, for every token problem


class Reply(Exception):
    def __init__(self, status: int, body: Any, json_string: bool = False, headers: dict | None = None):
        self.status, self.body, self.json_string, self.headers = status, body, json_string, headers or {}


def error(code: int, status: str) -> Reply:
    """flask-smorest's abort(code, <dict>): the dict is not shown, only code and status."""
    return Reply(code, {"code": code, "status": status})


def new_id() -> str:
    return secrets.token_hex(12)  # a Mongo ObjectId's 24 hex digits


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


class FakeOakestra:
    def __init__(self, users: dict[str, str] | None = None, token_lifetime: float = 600.0,
                 refresh_lifetime: float = 7 * 86400.0):
        self.users = {name: {"password": pw, "id": new_id()} for name, pw in (users or {"Admin": "secret"}).items()}
        self.organization = new_id()
        self.token_lifetime = token_lifetime
        self.refresh_lifetime = refresh_lifetime
        self.signing_key = secrets.token_bytes(32)
        self.apps: dict[str, dict] = {}
        self.services: dict[str, dict] = {}
        self.pending: dict[str, int] = {}  # service id -> instance requests the scheduler has not answered
        self.leaked: list[tuple[str, int]] = []
        self.calls: list[tuple[str, str, int]] = []
        self.scheduling = "run"  # "run", "hold" or "no_capacity"
        self.frozen = False
        self.force_status: dict[str, str] = {}
        self.bad_app_ids = False
        self.restart_at: str | None = None
        self.fail_once: dict[tuple[str, str], int] = {}
        self.lock = threading.RLock()
        self.server: ThreadingHTTPServer | None = None

    # --- lifecycle ---

    def start(self) -> str:
        fake = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args):  # quiet
                pass

            def _handle(self, method: str) -> None:
                length = int(self.headers.get("Content-Length") or 0)
                raw = self.rfile.read(length) if length else b""
                try:
                    fake.dispatch(method, self.path, raw, self.headers.get("Authorization"))
                    reply = error(404, "Not Found")
                except Reply as r:
                    reply = r
                text = reply.body if isinstance(reply.body, str) and not reply.json_string else json.dumps(reply.body)
                if reply.json_string:
                    text = json.dumps(text)
                data = text.encode()
                with fake.lock:
                    fake.calls.append((method, self.path, reply.status))
                self.send_response(reply.status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                for key, value in reply.headers.items():
                    self.send_header(key, value)
                self.end_headers()
                self.wfile.write(data)

            def do_GET(self):
                self._handle("GET")

            def do_POST(self):
                self._handle("POST")

            def do_DELETE(self):
                self._handle("DELETE")

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        threading.Thread(target=self.server.serve_forever, daemon=True).start()
        return f"http://127.0.0.1:{self.server.server_address[1]}"

    def stop(self) -> None:
        if self.server:
            self.server.shutdown()
            self.server.server_close()

    # --- helpers for tests ---

    def user_id(self, name: str = "Admin") -> str:
        return self.users[name]["id"]

    def count(self, method: str, path_pattern: str) -> int:
        return sum(1 for m, p, _ in self.calls if m == method and re.fullmatch(path_pattern, p))

    def services_of(self, app_name: str) -> dict[str, dict]:
        with self.lock:
            app_ids = [a["applicationID"] for a in self.apps.values() if a["application_name"] == app_name]
            return {s["microservice_name"]: s for s in self.services.values() if s["applicationID"] in app_ids}

    # --- routing ---

    def dispatch(self, method: str, path: str, raw: bytes, authorization: str | None) -> None:
        with self.lock:
            if self.restart_at and re.fullmatch(self.restart_at, path):
                self.restart_at = None
                self.signing_key = secrets.token_bytes(32)  # up to v0.4.402 the signing secret is random per start
            for (fail_method, pattern), status in list(self.fail_once.items()):
                if fail_method == method and re.fullmatch(pattern, path):
                    del self.fail_once[(fail_method, pattern)]
                    raise error(status, "Internal Server Error" if status == 500 else "Error")
            for route in ("/api/application", "/api/service"):
                if path == route and method == "POST":
                    raise Reply(308, {"message": "redirect"}, headers={"Location": route + "/"})
            if method == "POST" and path == "/api/auth/login":
                self.login(raw)
            if method == "POST" and path == "/api/auth/refresh":
                name = self.jwt_required(authorization, "refresh")
                raise Reply(200, {"token": self.issue(name, "access")})
            if path.startswith(("/api/application/", "/api/applications/")):
                self.applications_routes(method, path, raw, self.jwt_required(authorization, "access"))
            if path.startswith(("/api/service/", "/api/services/", "/api/user/")):
                self.service_routes(method, path, raw, self.jwt_auth_required(authorization))

    def applications_routes(self, method: str, path: str, raw: bytes, name: str) -> None:
        if method == "POST" and path == "/api/application/":
            self.create_application(name, raw)
        if m := re.fullmatch(r"/api/applications/([^/]+)", path):
            if method == "GET":
                if m.group(1) != self.users[name]["id"]:  # the database id, never the name
                    raise error(401, "Unauthorized")
                raise Reply(200, self.apps_of(name), json_string=True)
        if m := re.fullmatch(r"/api/application/([^/]+)", path):
            app = self.apps.get(m.group(1))
            if app is not None and app["userId"] != name:
                app = None
            if method == "GET":
                raise Reply(200, None) if app else error(404, "Not Found")
            if method == "DELETE":
                if not app:
                    raise error(501, "Not Implemented")
                for sid in list(app["microservices"]):
                    self.delete_service(name, sid)
                del self.apps[app["applicationID"]]
                raise Reply(200, {"message": "Application Deleted"})

    def service_routes(self, method: str, path: str, raw: bytes, name: str) -> None:
        if m := re.fullmatch(r"/api/user/([^/]+)", path):
            if method == "GET":
                if m.group(1) != name:
                    raise Reply(403, {"message": "You have not enough permissions!"})
                user = self.users[name]
                raise Reply(200, json.dumps({
                    "_id": {"$oid": user["id"]}, "name": name, "email": "",
                    "password": "scrypt:32768:8:1$" + hashlib.sha256(user["password"].encode()).hexdigest(),
                    "created_at": "01/01/2026 00:00", "roles": ROLES}))
        if method == "POST" and path == "/api/service/":
            self.append_services(name, raw)
        if m := re.fullmatch(r"/api/services/([^/]+)", path):
            if method == "GET":
                app = self.apps.get(m.group(1))
                if app is None or app["userId"] != name:
                    raise error(404, "Not Found")
                records = [self.visible(s) for s in self.services.values() if s["applicationID"] == m.group(1)]
                raise Reply(200, records, json_string=True)
        if m := re.fullmatch(r"/api/service/([^/]+)/instance", path):
            if method == "POST":
                service = self.owned_service(name, m.group(1))
                if service is not None:
                    service["status"], service["status_detail"] = "REQUESTED", "Waiting for scheduling decision"
                    self.pending[service["microserviceID"]] = self.pending.get(service["microserviceID"], 0) + 1
                raise Reply(200, {"message": "ok"})
        if m := re.fullmatch(r"/api/service/([^/]+)/instance/([0-9]+)", path):
            if method == "DELETE":
                service = self.owned_service(name, m.group(1))
                if service is not None:
                    number = int(m.group(2))
                    service["instance_list"] = [i for i in service["instance_list"]
                                                if i["instance_number"] != number]
                raise Reply(200, {"message": "ok"})
        if m := re.fullmatch(r"/api/service/([^/]+)", path):
            service = self.owned_service(name, m.group(1))
            if method == "GET":
                if service is None:
                    raise error(404, "Not Found")
                self.schedule(service)
                raise Reply(200, self.visible(service), json_string=True)
            if method == "DELETE":
                if service is None:
                    raise error(500, "Internal Server Error")  # "Job not deleted"
                self.delete_service(name, m.group(1))
                raise Reply(200, {"message": "Job deleted"})

    # --- auth ---

    def issue(self, name: str, kind: str) -> str:
        lifetime = self.token_lifetime if kind == "access" else self.refresh_lifetime
        claims = {"sub": name, "type": kind, "exp": time.time() + lifetime, "jti": secrets.token_hex(8),
                  "user": name, "roles": ROLES, "organization": self.organization}
        signing_input = _b64(json.dumps({"alg": "HS256", "typ": "JWT"}).encode()) + "." + _b64(
            json.dumps(claims).encode())
        signature = hmac.new(self.signing_key, signing_input.encode(), hashlib.sha256).digest()
        return signing_input + "." + _b64(signature)

    def login(self, raw: bytes) -> None:
        try:
            body = json.loads(raw) if raw else None
        except ValueError:
            body = None
        if not isinstance(body, dict):
            raise error(403, "Forbidden")  # "No credentials provided"
        user = self.users.get(body.get("username"))
        if not user or body.get("password") != user["password"]:
            raise error(401, "Unauthorized")  # "invalid username or password", not shown
        raise Reply(200, {"token": self.issue(body["username"], "access"),
                          "refresh_token": self.issue(body["username"], "refresh")})

    def verify(self, authorization: str | None, kind: str) -> str:
        """The token's user name, or Reply as flask_jwt_extended answers."""
        if not authorization or not authorization.startswith("Bearer "):
            raise Reply(401, {"msg": "Missing Authorization Header"})
        parts = authorization.removeprefix("Bearer ").split(".")
        if len(parts) != 3:
            raise Reply(422, {"msg": "Not enough segments"})
        expected = hmac.new(self.signing_key, f"{parts[0]}.{parts[1]}".encode(), hashlib.sha256).digest()
        if not hmac.compare_digest(_b64(expected), parts[2]):
            raise Reply(422, {"msg": "Signature verification failed"})
        claims = json.loads(base64.urlsafe_b64decode(parts[1] + "=" * (-len(parts[1]) % 4)))
        if time.time() > claims["exp"]:
            raise Reply(401, {"msg": "Token has expired"})
        if claims["type"] != kind:
            raise Reply(422, {"msg": f"Only {'refresh' if kind == 'refresh' else 'non-refresh'} tokens are allowed"})
        if claims["sub"] not in self.users:
            raise Reply(401, {"msg": "user not found"})
        return claims["sub"]

    def jwt_required(self, authorization: str | None, kind: str) -> str:
        return self.verify(authorization, kind)

    def jwt_auth_required(self, authorization: str | None) -> str:
        try:
            return self.verify(authorization, "access")
        except Reply:
            raise Reply(401, AUTH_FAILED) from None

    # --- applications and services ---

    def apps_of(self, name: str) -> list[dict]:
        return [dict(app) for app in self.apps.values() if app["userId"] == name]

    def owned_service(self, name: str, service_id: str) -> dict | None:
        """get_service: the service, when one of the user's applications lists it."""
        for app in self.apps_of(name):
            if service_id in app["microservices"]:
                return self.services.get(service_id)
        return None

    @staticmethod
    def visible(service: dict) -> dict:
        return json.loads(json.dumps(service))

    def create_application(self, name: str, raw: bytes) -> None:
        try:
            sla = json.loads(raw) if raw else None
        except ValueError:
            sla = None
        if not isinstance(sla, dict) or "sla_version" not in sla:
            raise error(500, "Internal Server Error")
        problem = self.schema_problem(sla, for_append=False)
        if problem:
            raise Reply(422, {"code": 422, "status": "Unprocessable Entity", "errors": {"json": problem}})
        for app in sla["applications"]:
            if any(a["userId"] == name and a["application_name"] == app["application_name"]
                   and a["application_namespace"] == app["application_namespace"] for a in self.apps.values()):
                raise error(409, "Conflict")
        for app in sla["applications"]:
            app_id = new_id()
            listed_id = app_id if not self.bad_app_ids else "../" + app_id
            record = {"applicationID": listed_id, "application_name": app["application_name"],
                      "application_namespace": app["application_namespace"],
                      "application_desc": app.get("application_desc", ""), "microservices": [],
                      "userId": name, "_id": {"$oid": app_id}}
            self.apps[listed_id] = record
            self.add_services(record, app["microservices"])
        raise Reply(200, self.apps_of(name), json_string=True)

    def append_services(self, name: str, raw: bytes) -> None:
        try:
            sla = json.loads(raw) if raw else None
        except ValueError:
            sla = None
        if not isinstance(sla, dict) or self.schema_problem(sla, for_append=True):
            raise error(400, "Bad Request")
        app = self.apps.get(sla["applications"][0]["applicationID"])
        if app is None or app["userId"] != name:
            raise error(400, "Bad Request")  # really a 404, reported as 400
        services = sla["applications"][0]["microservices"]
        used = {s.get("RR_ip") for s in self.services.values()}
        for service in services:
            ip = service.get("addresses", {}).get("rr_ip")
            if ip is not None and (ipaddress.IPv4Address(ip) not in SERVICE_NET or ip in used):
                raise error(400, "Bad Request")  # network plugin refusal
            used.add(ip)
        ids = self.add_services(app, services)
        raise Reply(200, {"job_id": ids[-1] if ids else "",
                          "deployed_services": [{"service_name": s["microservice_name"], "status": 200}
                                                for s in services],
                          "failed_services": []})

    def add_services(self, app: dict, services: list[dict]) -> list[str]:
        ids = []
        for service in services:
            sid = new_id()
            addresses = service.get("addresses", {})
            record = dict(service, microserviceID=sid, applicationID=app["applicationID"],
                          app_name=app["application_name"], app_ns=app["application_namespace"],
                          service_name=service["microservice_name"], service_ns=service["microservice_namespace"],
                          image=service["code"], next_instance_progressive_number=0, instance_list=[],
                          RR_ip=addresses.get("rr_ip", f"10.30.0.{len(self.services) + 2}"),
                          RR_ip_v6=addresses.get("rr_ip_v6"), _id={"$oid": sid},
                          job_name=f"{app['application_name']}.{app['application_namespace']}."
                                   f"{service['microservice_name']}.{service['microservice_namespace']}")
            if service["virtualization"] == "container":
                record["virtualization"] = "docker"
            self.services[sid] = record
            app["microservices"].append(sid)
            ids.append(sid)
        return ids

    def delete_service(self, name: str, service_id: str) -> None:
        """delete_service: scale down "all" instances (skipping every second one), then delete the job."""
        service = self.services[service_id]
        instances = service["instance_list"]
        for instance in instances:  # removes from the list it walks, as request_scale_down_instance does
            instances.remove(instance)
        for instance in instances:
            self.leaked.append((service["microservice_name"], instance["instance_number"]))
        for app in self.apps.values():
            if service_id in app["microservices"] and app["userId"] == name:
                app["microservices"].remove(service_id)
        del self.services[service_id]
        self.pending.pop(service_id, None)

    def schedule(self, service: dict) -> None:
        """The scheduler's and the cluster's answers, one step per GET."""
        sid = service["microserviceID"]
        forced = self.force_status.get(service["microservice_name"])
        if forced:
            for instance in service["instance_list"]:
                instance["status"] = forced
            service["status"], service["status_detail"] = forced, f"scheduler: {forced}"
            self.pending.pop(sid, None)
            return
        if not self.frozen:
            for instance in service["instance_list"]:
                if instance["status"] in STEPS[1:-1]:
                    instance["status"] = STEPS[STEPS.index(instance["status"]) + 1]
                    service["status"] = instance["status"]
        if self.pending.get(sid) and self.scheduling != "hold":
            self.pending[sid] -= 1
            if self.scheduling == "no_capacity":
                service["status"], service["status_detail"] = "NoActiveClusterWithCapacity", ""
                return
            number = service["next_instance_progressive_number"]
            service["instance_list"].append({"instance_number": number, "cluster_id": "c" * 24,
                                             "cluster_location": "location-unknown",
                                             "status": "CLUSTER_SCHEDULED"})
            service["next_instance_progressive_number"] = number + 1
            service["status"] = "CLUSTER_SCHEDULED"

    @staticmethod
    def schema_problem(sla: dict, for_append: bool) -> str | None:
        """The first SLA v2.0 rule the document breaks (as the server's validator reports one error)."""
        if sla.get("sla_version") != "v2.0":
            return "sla_version: must be v2.0 (v1.0 is deprecated)"
        if not isinstance(sla.get("customerID"), str):
            return "customerID: required string"
        apps = sla.get("applications")
        if not isinstance(apps, list) or not apps:
            return "applications: required array"
        for app in apps:
            if not isinstance(app, dict):
                return "applications[]: object expected"
            if for_append and not isinstance(app.get("applicationID"), str):
                return "applicationID: required"
            for key in ("application_name", "application_namespace"):
                if not isinstance(app.get(key), str) or not NAME.match(app[key]):
                    return f"{key}: must match ^[a-zA-Z0-9]{{1,30}}$"
            if not isinstance(app.get("microservices"), list):
                return "microservices: required array"
            for service in app["microservices"]:
                for key in ("microservice_name", "microservice_namespace"):
                    if not isinstance(service.get(key), str) or not NAME.match(service[key]):
                        return f"{key}: must match ^[a-zA-Z0-9]{{1,30}}$"
                if service.get("virtualization") not in ("container", "unikernel"):
                    return "virtualization: container or unikernel"
                if not isinstance(service.get("code"), str):
                    return "code: required string"
                if service.get("microserviceID", "") != "":
                    return "microserviceID: must be empty"
                for key in INTEGERS:
                    if key in service and (type(service[key]) is not int):
                        return f"{key}: integer expected"
                for key in STRINGS:
                    if key in service and not isinstance(service[key], str):
                        return f"{key}: string expected"
                for key in BOOLEANS:
                    if key in service and not isinstance(service[key], bool):
                        return f"{key}: boolean expected"
                for key in STRING_ARRAYS:
                    if key in service and (not isinstance(service[key], list)
                                           or not all(isinstance(x, str) for x in service[key])):
                        return f"{key}: array of strings expected"
                for constraint in service.get("constraints", []):
                    if "type" not in constraint:
                        return "constraints[].type: required"
                    # clusters/allowed and addons/needs: arrays of strings (schema.py of v0.4.402 and v0.4.410)
                    for key in ("allowed", "needs"):
                        if key in constraint and (not isinstance(constraint[key], list)
                                                  or not all(isinstance(x, str) for x in constraint[key])):
                            return f"constraints[].{key}: array of strings expected"
                volumes = service.get("volumes", [])
                if not isinstance(volumes, list):
                    return "volumes: array expected"
                for volume in volumes:
                    if not isinstance(volume, dict):
                        return "volumes[]: object expected"
                    for key in ("volume_id", "csi_driver"):
                        if not isinstance(volume.get(key), str):
                            return f"volumes[].{key}: required string"
                    if "mount_path" in volume and not isinstance(volume["mount_path"], str):
                        return "volumes[].mount_path: string expected"
                    if "config" in volume and not isinstance(volume["config"], dict):
                        return "volumes[].config: object expected"
        return None
