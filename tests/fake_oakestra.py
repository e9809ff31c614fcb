"""A fake Oakestra root orchestrator (system manager REST API) for the push client's tests.

A real HTTP server on a free loopback port that follows /work/shared/reference/oakestra.md, quirks included:
- bodies of application and service reads are JSON *strings* encoding the JSON;
- POST /api/application/ answers with all of the user's applications; 409 on a duplicate name+namespace,
  422 on a schema failure, 500 without a body or sla_version;
- every error of POST /api/service/ (unknown application, missing id, schema failure) is a 400;
- GET /api/application/<id> answers 200 `null` for an existing application, 404 for an unknown one;
- DELETE /api/application/<id> answers 501 for an unknown one;
- POST /api/service/<id>/instance always answers {"message":"ok"}, even for an unknown id;
- deleting a service with 2+ instances skips all but the first (recorded in ``leaked``);
- access tokens expire after ``token_lifetime`` seconds, refresh tokens after ``refresh_lifetime``;
- collection routes end in '/': without it the answer is a 308 redirect;
- microservice ``volumes`` as in releases after v0.4.410: an array of objects, each with string ``volume_id``
  and ``csi_driver`` (required), optional string ``mount_path`` and object ``config``; stored as sent. The
  stored system-manager source (root_orchestrator/system-manager-python/sla/schema.py, its newest stored
  version) predates volumes, so this rule follows /work/shared/reference/oakestra.md ("Volumes") and the Go
  structs that read the field after the system manager: scheduler/calculate/schedulers/cpumem/cpumem.go
  (VolumeSpec) and go_node_engine/model/Service.go (VolumeRequest) in oakestra/oakestra.
Each GET of a service advances its instances one status step (REQUESTED -> CLUSTER_SCHEDULED ->
NODE_SCHEDULED -> RUNNING), unless ``frozen``; ``force_status[name]`` pins a service's status;
``restart_at`` (a path regex) forgets every token when such a path is first called, as a restart did.
Only the tests use this; nothing here is a mock of a real component we ship against.
"""

from __future__ import annotations

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


class Reply(Exception):
    def __init__(self, status: int, body: Any, json_string: bool = False, headers: dict | None = None):
        self.status, self.body, self.json_string, self.headers = status, body, json_string, headers or {}


def error(code: int, status: str) -> Reply:
    return Reply(code, {"code": code, "status": status})


def new_id() -> str:
    return secrets.token_hex(12)


class FakeOakestra:
    def __init__(self, users: dict[str, str] | None = None, token_lifetime: float = 600.0,
                 refresh_lifetime: float = 7 * 86400.0):
        self.users = {name: {"password": pw, "id": new_id()} for name, pw in (users or {"admin": "secret"}).items()}
        self.token_lifetime = token_lifetime
        self.refresh_lifetime = refresh_lifetime
        self.tokens: dict[str, tuple[str, float, str]] = {}  # token -> (user id, expiry, kind)
        self.apps: dict[str, dict] = {}
        self.services: dict[str, dict] = {}
        self.leaked: list[tuple[str, int]] = []
        self.calls: list[tuple[str, str, int]] = []
        self.frozen = False
        self.force_status: dict[str, str] = {}
        self.bad_app_ids = False
        self.restart_at: str | None = None  # regex of a path: "restart" (forget every token) when first called
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
                    reply = Reply(404, {"code": 404, "status": "Not Found"})
                except Reply as r:
                    reply = r
                text = json.dumps(reply.body)
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

    def user_id(self, name: str = "admin") -> str:
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
                self.tokens.clear()  # up to v0.4.402 the signing secret is random per start
            for route in ("/api/application", "/api/service"):
                if path == route and method == "POST":
                    raise Reply(308, {"message": "redirect"}, headers={"Location": route + "/"})
            if method == "POST" and path == "/api/auth/login":
                self.login(raw)
            if method == "POST" and path == "/api/auth/refresh":
                self.refresh(authorization)
            user = self.authenticate(authorization)
            if method == "POST" and path == "/api/application/":
                self.create_application(user, raw)
            if m := re.fullmatch(r"/api/applications/([^/]+)", path):
                if method == "GET":
                    raise Reply(200, self.apps_of(m.group(1)), json_string=True)
            if m := re.fullmatch(r"/api/application/([^/]+)", path):
                app = self.apps.get(m.group(1))
                if method == "GET":
                    raise Reply(200, None) if app else error(404, "Not Found")
                if method == "DELETE":
                    if not app:
                        raise error(501, "Not Implemented")
                    for sid in [s for s, rec in self.services.items() if rec["applicationID"] == app["applicationID"]]:
                        del self.services[sid]
                    del self.apps[app["applicationID"]]
                    raise Reply(200, {"message": "Application Deleted"})
            if method == "POST" and path == "/api/service/":
                self.append_services(user, raw)
            if m := re.fullmatch(r"/api/services/([^/]+)", path):
                if method == "GET":
                    records = [s for s in self.services.values() if s["applicationID"] == m.group(1)]
                    raise Reply(200, records, json_string=True)
            if m := re.fullmatch(r"/api/service/([^/]+)/instance", path):
                if method == "POST":
                    service = self.services.get(m.group(1))
                    if service is not None:
                        service["instance_list"].append({"instance_number": self.next_instance(service),
                                                         "status": "REQUESTED"})
                    raise Reply(200, {"message": "ok"})
            if m := re.fullmatch(r"/api/service/([^/]+)/instance/([0-9]+)", path):
                if method == "DELETE":
                    service = self.services.get(m.group(1))
                    if service is not None:
                        number = int(m.group(2))
                        service["instance_list"] = [i for i in service["instance_list"]
                                                    if i["instance_number"] != number]
                    raise Reply(200, {"message": "ok"})
            if m := re.fullmatch(r"/api/service/([^/]+)", path):
                service = self.services.get(m.group(1))
                if service is None:
                    raise error(400, "Bad Request")
                if method == "GET":
                    self.advance(service)
                    raise Reply(200, service, json_string=True)
                if method == "DELETE":
                    for instance in service["instance_list"][1:]:
                        self.leaked.append((service["microservice_name"], instance["instance_number"]))
                    del self.services[m.group(1)]
                    raise Reply(200, {"message": "Job deleted"})

    # --- auth ---

    def issue(self, user_id: str, kind: str) -> str:
        token = secrets.token_hex(16)
        lifetime = self.token_lifetime if kind == "access" else self.refresh_lifetime
        self.tokens[token] = (user_id, time.monotonic() + lifetime, kind)
        return token

    def login(self, raw: bytes) -> None:
        try:
            body = json.loads(raw)
        except ValueError:
            raise error(400, "Bad Request") from None
        user = self.users.get(body.get("username")) if isinstance(body, dict) else None
        if not user or body.get("password") != user["password"]:
            raise Reply(401, {"message": "Invalid username or password"})
        raise Reply(200, {"token": self.issue(user["id"], "access"),
                          "refresh_token": self.issue(user["id"], "refresh")})

    def check_token(self, authorization: str | None, kind: str) -> str:
        if not authorization:
            raise Reply(401, {"msg": "Missing Authorization Header"})
        token = authorization.removeprefix("Bearer ")
        entry = self.tokens.get(token)
        if entry is None:
            raise Reply(422, {"msg": "Signature verification failed"})
        user_id, expiry, actual = entry
        if actual != kind:
            raise Reply(422, {"msg": f"Only {'refresh' if kind == 'refresh' else 'non-refresh'} tokens are allowed"})
        if time.monotonic() > expiry:
            raise Reply(401, {"msg": "Token has expired"})
        return user_id

    def refresh(self, authorization: str | None) -> None:
        user_id = self.check_token(authorization, "refresh")
        raise Reply(200, {"token": self.issue(user_id, "access")})

    def authenticate(self, authorization: str | None) -> str:
        return self.check_token(authorization, "access")

    # --- applications and services ---

    def apps_of(self, user_id: str) -> list[dict]:
        return [dict(app) for app in self.apps.values() if app["userId"] == user_id]

    def create_application(self, user: str, raw: bytes) -> None:
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
            if any(a["userId"] == user and a["application_name"] == app["application_name"]
                   and a["application_namespace"] == app["application_namespace"] for a in self.apps.values()):
                raise error(409, "Conflict")
        for app in sla["applications"]:
            app_id = new_id() if not self.bad_app_ids else "../" + new_id()
            record = {"applicationID": app_id, "application_name": app["application_name"],
                      "application_namespace": app["application_namespace"],
                      "application_desc": app.get("application_desc", ""), "microservices": [],
                      "userId": user, "_id": {"$oid": app_id}}
            self.apps[app_id] = record
            self.add_services(record, app["microservices"])
        raise Reply(200, self.apps_of(user), json_string=True)

    def append_services(self, user: str, raw: bytes) -> None:
        try:
            sla = json.loads(raw) if raw else None
        except ValueError:
            sla = None
        if not isinstance(sla, dict) or self.schema_problem(sla, for_append=True):
            raise error(400, "Bad Request")
        app = self.apps.get(sla["applications"][0]["applicationID"])
        if app is None or app["userId"] != user:
            raise error(400, "Bad Request")  # really a 404, reported as 400
        services = sla["applications"][0]["microservices"]
        used = {s.get("RR_ip") for s in self.services.values()}
        for service in services:
            ip = service.get("addresses", {}).get("rr_ip")
            if ip is not None and (ipaddress.IPv4Address(ip) not in SERVICE_NET or ip in used):
                raise error(400, "Bad Request")  # network plugin refusal
            used.add(ip)
        ids = self.add_services(app, services)
        raise Reply(200, {"job_id": ids[0] if ids else "",
                          "deployed_services": [{"service_name": s["microservice_name"], "status": "CREATED"}
                                                for s in services],
                          "failed_services": []})

    def add_services(self, app: dict, services: list[dict]) -> list[str]:
        ids = []
        for service in services:
            sid = new_id()
            record = dict(service, microserviceID=sid, applicationID=app["applicationID"],
                          app_name=app["application_name"], app_ns=app["application_namespace"],
                          RR_ip=service.get("addresses", {}).get("rr_ip", f"10.30.0.{len(self.services) + 2}"),
                          instance_list=[], status="CREATED", status_detail="")
            record["virtualization"] = "docker" if service["virtualization"] == "container" else "unikernel"
            self.services[sid] = record
            app["microservices"].append(sid)
            ids.append(sid)
        return ids

    @staticmethod
    def next_instance(service: dict) -> int:
        return max((i["instance_number"] for i in service["instance_list"]), default=-1) + 1

    def advance(self, service: dict) -> None:
        forced = self.force_status.get(service["microservice_name"])
        for instance in service["instance_list"]:
            if forced:
                instance["status"] = forced
            elif not self.frozen and instance["status"] in STEPS[:-1]:
                instance["status"] = STEPS[STEPS.index(instance["status"]) + 1]
        if service["instance_list"]:
            service["status"] = service["instance_list"][0]["status"]
        if forced:
            service["status_detail"] = f"scheduler: {forced}"

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
