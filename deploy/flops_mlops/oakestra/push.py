"""Deploy rendered SLA documents to an Oakestra root orchestrator, and remove them again.

push, per application in deploy order (stores, tracking, projects): find or create the application (created
empty), append the services it does not have yet, deploy one instance of each service that has none, and
follow the statuses until every service is RUNNING (or COMPLETED), printing each change. Re-running push on
a deployment only finds what exists: nothing is created twice.

undeploy, in reverse order: every instance one by one (the server skips some when a service with several
instances is deleted at once), then the services, then the application.

The orchestrator lists a user's applications only by user id, which the API tells only in the answer to a
create; push records it (with the application ids) in <state_dir>/oakestra/<orchestrator>.json. Without
that file it tries the access token's subject, or takes --user-id.
"""

from __future__ import annotations

import json
import re
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, TextIO

from ..config import ConfigError, StackConfig
from .client import Client, OakestraError, check_id, check_user_id
from .sla import Rendered

PROGRESS = ("REQUESTED", "CLUSTER_SCHEDULED", "NODE_SCHEDULED")
DONE = ("RUNNING", "COMPLETED")
FAILURE_HINT = re.compile(r"fail|dead|undeployed|^no", re.IGNORECASE)
COMPARED = ("code", "cmd", "environment", "port", "memory", "vcpus", "storage", "volumes")
ENVIRONMENT_WARNING = (
    "warning: Oakestra stores each service's environment and returns it to anyone who can read the service "
    "through the API; the passwords pushed in it (stores, tracking-server admin and secret key, FL project "
    "users) are readable that way. Push with an operator-only Oakestra account.")


@dataclass
class DeployState:
    """What push learnt about one orchestrator: the user id and our applications' ids."""

    path: Path
    user_id: str | None = None
    apps: dict[str, str] = field(default_factory=dict)

    @classmethod
    def load(cls, config: StackConfig, url: str) -> "DeployState":
        path = config.state_dir / "oakestra" / (re.sub(r"[^A-Za-z0-9.-]+", "_", url.split("://", 1)[1]) + ".json")
        if not path.exists():
            return cls(path)
        try:
            data = json.loads(path.read_text(encoding="utf-8"))
            return cls(path, data.get("user_id"), dict(data.get("apps", {})))
        except (ValueError, AttributeError, TypeError):
            raise ConfigError(f"{path}: not a valid push state file; delete it and pass --user-id") from None

    def save(self) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self.path.write_text(json.dumps({"user_id": self.user_id, "apps": self.apps}, indent=2, sort_keys=True)
                             + "\n", encoding="utf-8")


class Deployer:
    def __init__(self, client: Client, state: DeployState, out: TextIO = sys.stderr,
                 clock: Callable[[], float] = time.monotonic, sleep: Callable[[float], None] = time.sleep):
        self.client, self.state, self.out = client, state, out
        self.clock, self.sleep = clock, sleep

    def say(self, text: str) -> None:
        print(text, file=self.out, flush=True)

    # --- finding applications ---

    def _user_id(self) -> str | None:
        if self.state.user_id is None:
            subject = self.client.token_subject()
            if subject:
                self.state.user_id = subject
        return self.state.user_id

    def _match(self, records: list[dict], item: Rendered) -> str | None:
        for record in records:
            if (record.get("application_name") == item.application_name
                    and record.get("application_namespace") == item.namespace):
                if isinstance(record.get("userId"), str):
                    self.state.user_id = check_user_id(record["userId"], "userId")
                return check_id(record.get("applicationID"), f"applicationID of {item.application_name}")
        return None

    def find(self, item: Rendered) -> str | None:
        """The id of the application with this name and namespace, or None when there is none."""
        user_id = self._user_id()
        if user_id is None:
            return None
        return self._match(self.client.applications(user_id), item)

    def ensure_application(self, item: Rendered) -> str:
        key = f"{item.namespace}/{item.application_name}"
        app_id = self.find(item)
        if app_id:
            self.say(f"{key}: application exists ({app_id})")
        else:
            app = dict(item.document["applications"][0], microservices=[])
            sla = {"sla_version": item.document["sla_version"], "customerID": item.document["customerID"],
                   "applications": [app]}
            try:
                app_id = self._match(self.client.create_application(sla), item)
            except OakestraError as exc:
                if exc.status != 409:
                    raise
                app_id = self.find(item)
                if app_id is None:
                    known = (f"the applications of user {self.state.user_id} do not include it" if self.state.user_id
                             else f"no user id is recorded in {self.state.path}")
                    raise OakestraError(exc.call, exc.status, f"{exc.body} -- application {key} exists, but its id "
                                        f"is unknown here ({known}); pass --user-id") from None
                self.say(f"{key}: application exists ({app_id})")
            else:
                if app_id is None:
                    raise OakestraError("POST /api/application/", 200, f"the answer does not list {key}")
                self.say(f"{key}: application created ({app_id})")
        self.state.apps[key] = app_id
        self.state.save()
        return app_id

    # --- push ---

    def push(self, item: Rendered, document: dict, timeout: float, poll_interval: float) -> None:
        """Deploy one application; ``document`` is ``item.document`` with its secrets filled in."""
        key = f"{item.namespace}/{item.application_name}"
        wanted = document["applications"][0]["microservices"]
        app_id = self.ensure_application(item)
        existing = {record.get("microservice_name"): record for record in self.client.services(app_id)}
        missing = [service for service in wanted if service["microservice_name"] not in existing]
        for service in wanted:
            record = existing.get(service["microservice_name"])
            if record is not None:
                changed = [name for name in COMPARED if name in service and record.get(name) != service[name]]
                note = (f"; differs from the SLA in {', '.join(changed)} (push does not update services: "
                        f"undeploy --app {item.application_name}, then push)") if changed else ""
                self.say(f"{key}/{service['microservice_name']}: service exists{note}")
        if missing:
            app = dict(document["applications"][0], applicationID=app_id, microservices=missing)
            result = self.client.append_services({"sla_version": document["sla_version"],
                                                  "customerID": document["customerID"], "applications": [app]})
            failed = result.get("failed_services") or []
            if failed:
                raise OakestraError("POST /api/service/", 200, f"failed services: {json.dumps(failed)}")
            self.say(f"{key}: added service(s) {', '.join(s['microservice_name'] for s in missing)}")
        ids = {}
        for record in self.client.services(app_id):
            name = record.get("microservice_name")
            if any(s["microservice_name"] == name for s in wanted):
                ids[name] = check_id(record.get("microserviceID"), f"microserviceID of {key}/{name}")
        absent = [s["microservice_name"] for s in wanted if s["microservice_name"] not in ids]
        if absent:
            raise OakestraError(f"GET /api/services/{app_id}", 200, f"services not listed after adding them: "
                                f"{', '.join(absent)}")
        for name, service_id in ids.items():
            if not _instances(self.client.service(service_id)):
                self.client.deploy_instance(service_id)
                self.say(f"{key}/{name}: instance requested")
        self.wait(key, ids, timeout, poll_interval)

    def wait(self, key: str, ids: dict[str, str], timeout: float, poll_interval: float) -> None:
        start = self.clock()
        seen: dict[str, str] = {}
        while True:
            pending = []
            for name, service_id in ids.items():
                record = self.client.service(service_id)
                status = _status(record)
                if seen.get(name) != status:
                    seen[name] = status
                    self.say(f"[{self.clock() - start:5.0f}s] {key}/{name}: {status}")
                if status in DONE:
                    continue
                if status not in PROGRESS:
                    detail = record.get("status_detail") or ""
                    raise OakestraError(f"GET /api/service/{service_id}", 200,
                                        f"{key}/{name} is {status}" + (f": {detail}" if detail else ""))
                pending.append(name)
            if not pending:
                self.say(f"{key}: all {len(ids)} service(s) running")
                return
            if self.clock() - start > timeout:
                raise OakestraError("status", None, f"{key}: not running after {timeout:.0f}s: "
                                    + ", ".join(f"{name} {seen[name]}" for name in pending))
            self.sleep(poll_interval)

    # --- undeploy ---

    def undeploy(self, item: Rendered) -> bool:
        """Remove one application; False when it is not deployed."""
        key = f"{item.namespace}/{item.application_name}"
        app_id = self.find(item)
        if app_id is None and self.state.user_id is None:
            app_id = self.state.apps.get(key)
            if app_id is None:
                raise ConfigError(f"{key}: cannot list the user's applications without the user id (none recorded "
                                  f"in {self.state.path}); pass --user-id")
        if app_id is None:
            self.say(f"{key}: not deployed")
            self.state.apps.pop(key, None)
            self.state.save()
            return False
        for record in self.client.services(app_id):
            name = record.get("microservice_name")
            service_id = check_id(record.get("microserviceID"), f"microserviceID of {key}/{name}")
            for number in _instance_numbers(self.client.service(service_id)):
                self.client.undeploy_instance(service_id, number)
                self.say(f"{key}/{name}: instance {number} undeployed")
            self.client.delete_service(service_id)
            self.say(f"{key}/{name}: service deleted")
        try:
            self.client.delete_application(app_id)
        except OakestraError as exc:
            if exc.status != 501:  # 501: it is already gone
                raise
        self.say(f"{key}: application deleted")
        self.state.apps.pop(key, None)
        self.state.save()
        return True


def _instances(record: dict) -> list:
    instances = record.get("instance_list")
    return instances if isinstance(instances, list) else []


def _instance_numbers(record: dict) -> list[int]:
    numbers = []
    for i, instance in enumerate(_instances(record)):
        number = instance.get("instance_number", i) if isinstance(instance, dict) else i
        numbers.append(number)
    return numbers


def _status(record: dict) -> str:
    """The service's status: its instances' (the least advanced one), else the record's."""
    statuses = [i.get("status") for i in _instances(record) if isinstance(i, dict) and isinstance(i.get("status"), str)]
    if not statuses:  # no instance listed yet: scheduling has not started, unless the record says it failed
        status = record.get("status")
        if isinstance(status, str) and (status in PROGRESS + DONE or FAILURE_HINT.search(status)):
            return status
        return "REQUESTED"
    for status in statuses:
        if status not in PROGRESS + DONE:
            return status
    order = PROGRESS + DONE
    return min(statuses, key=order.index)
