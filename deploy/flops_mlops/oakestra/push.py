"""Deploy rendered SLA documents to an Oakestra root orchestrator, and remove them again.

push, per application in deploy order (stores, tracking, projects): find or create the application (created
empty), append the services it does not have yet, request one instance of each service that has none and
none pending, and follow the statuses until every service is RUNNING (or COMPLETED), printing each change.
Re-running push creates nothing twice and re-requests nothing that is still waiting for a cluster; what
differs from the SLA (a changed service, a service or application the configuration no longer renders, more
than one instance) is reported, never changed.

undeploy, in reverse order: every instance one by one (the server skips some when a service with several
instances is deleted at once), then the services, then the application. Whatever is already gone is skipped,
so it can be re-run after a partial failure; a second run finds nothing to do.

Both end with what exists on the orchestrator for this configuration (``report``).

The user's applications are listed by the user's database id, looked up by name on every run
(``Client.user_id``) and recorded with the application ids in <state_dir>/oakestra/<orchestrator>.json.
"""

from __future__ import annotations

import json
import re
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, TextIO

from ..configuration.schema import ConfigError
from ..configuration.stack import StackConfig
from .client import Client, OakestraError, check_id
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
            raise ConfigError(f"{path}: not a valid push state file; delete it (push and undeploy look "
                              "everything up again)") from None

    def save(self) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self.path.write_text(json.dumps({"user_id": self.user_id, "apps": self.apps}, indent=2, sort_keys=True)
                             + "\n", encoding="utf-8")


class Deployer:
    def __init__(self, client: Client, state: DeployState, out: TextIO | None = None,
                 clock: Callable[[], float] = time.monotonic, sleep: Callable[[float], None] = time.sleep):
        """Progress goes to ``out`` (default: sys.stderr at the time of each line)."""
        self.client, self.state, self.out = client, state, out
        self.clock, self.sleep = clock, sleep
        self._user_id: str | None = None

    def say(self, text: str) -> None:
        print(text, file=self.out or sys.stderr, flush=True)

    # --- finding applications ---

    def user_id(self) -> str:
        """The user's database id, looked up once per run (never a token subject or an application's userId)."""
        if self._user_id is None:
            self._user_id = self.client.user_id()
            if self.state.user_id not in (None, self._user_id):
                self.say(f"note: user {self.client.username} now has id {self._user_id} (recorded: "
                         f"{self.state.user_id}); the orchestrator's user was recreated")
            if self.state.user_id != self._user_id:
                self.state.user_id = self._user_id
                self.state.save()
        return self._user_id

    def knows_user(self) -> bool:
        return self._user_id is not None

    def applications(self) -> list[dict]:
        return self.client.applications(self.user_id())

    @staticmethod
    def _match(records: list[dict], item: Rendered) -> str | None:
        for record in records:
            if (record.get("application_name") == item.application_name
                    and record.get("application_namespace") == item.namespace):
                return check_id(record.get("applicationID"), f"applicationID of {item.application_name}")
        return None

    def find(self, item: Rendered) -> str | None:
        """The id of the application with this name and namespace, or None when there is none."""
        return self._match(self.applications(), item)

    def _record(self, key: str, app_id: str | None) -> None:
        if app_id is None:
            self.state.apps.pop(key, None)
        else:
            self.state.apps[key] = app_id
        self.state.save()

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
                app_id = self.find(item)  # created meanwhile by another push
            if app_id is None:
                raise OakestraError("POST /api/application/", 200, f"{key} is not among the user's applications "
                                    "after creating it")
            self.say(f"{key}: application created ({app_id})")
        self._record(key, app_id)
        return app_id

    # --- push ---

    def push(self, item: Rendered, document: dict, timeout: float, poll_interval: float) -> None:
        """Deploy one application; ``document`` is ``item.document`` with its secrets filled in."""
        key = f"{item.namespace}/{item.application_name}"
        wanted = document["applications"][0]["microservices"]
        names = [service["microservice_name"] for service in wanted]
        app_id = self.ensure_application(item)
        existing = {record.get("microservice_name"): record for record in self.client.services(app_id)}
        for service in wanted:
            record = existing.get(service["microservice_name"])
            if record is not None:
                changed = [name for name in COMPARED if (name in service and record.get(name) != service[name])
                           # a volume the SLA no longer has (the tracking servers' login folder of earlier releases)
                           or (name == "volumes" and name not in service and record.get(name))]
                note = (f"; differs from the SLA in {', '.join(changed)} (push does not update services: "
                        f"undeploy --app {item.application_name}, then push)") if changed else ""
                self.say(f"{key}/{service['microservice_name']}: service exists{note}")
        for name in existing:
            if name not in names:
                self.say(f"{key}/{name}: service is not in the SLA (left as it is; undeploy --app "
                         f"{item.application_name} removes it)")
        missing = [service for service in wanted if service["microservice_name"] not in existing]
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
            if name in names:
                ids[name] = check_id(record.get("microserviceID"), f"microserviceID of {key}/{name}")
        absent = [name for name in names if name not in ids]
        if absent:
            raise OakestraError(f"GET /api/services/{app_id}", 200, f"services not listed after adding them: "
                                f"{', '.join(absent)}")
        for name, service_id in ids.items():
            self.ensure_instance(f"{key}/{name}", service_id)
        self.wait(key, ids, timeout, poll_interval)

    def ensure_instance(self, label: str, service_id: str) -> None:
        """Request an instance unless the service has one, or a request of it still waits for a cluster.

        The instance list fills only once a cluster took the request; until then (or while no cluster has
        capacity) the service is REQUESTED with an empty list, and another request would make a second instance.
        """
        record = self.client.service(service_id)
        instances = _instances(record)
        status = record.get("status")
        if instances:
            if len(instances) > 1:
                self.say(f"{label}: {len(instances)} instances (the SLA asks for one; push leaves them)")
            return
        if status == "REQUESTED":
            self.say(f"{label}: instance requested earlier, still waiting for a cluster (not requested again)")
            return
        self.client.deploy_instance(service_id)
        if isinstance(status, str) and FAILURE_HINT.search(status):
            detail = record.get("status_detail") or ""
            self.say(f"{label}: the last request ended {status}" + (f" ({detail})" if detail else "")
                     + "; instance requested again")
        else:
            self.say(f"{label}: instance requested")

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
                                    + ", ".join(f"{name} {seen[name]}" for name in pending)
                                    + " (push again later: it waits for these requests, it does not repeat them)")
            self.sleep(poll_interval)

    # --- undeploy ---

    def undeploy(self, item: Rendered) -> bool:
        """Remove one application and whatever is left of it; False when nothing of it is deployed."""
        key = f"{item.namespace}/{item.application_name}"
        app_id = self.find(item)
        if app_id is None:
            self.say(f"{key}: not deployed, nothing to do")
            self._record(key, None)
            return False
        for record in self.client.services(app_id):
            name = record.get("microservice_name")
            service_id = check_id(record.get("microserviceID"), f"microserviceID of {key}/{name}")
            for number in _instance_numbers(record):
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
        self._record(key, None)
        return True

    # --- what exists ---

    def report(self, rendered: list[Rendered]) -> list[str]:
        """What exists on the orchestrator for this configuration: its applications (and any other of its
        namespace), their services and instance counts."""
        records = self.applications()
        namespaces = {item.namespace for item in rendered}
        names = [item.application_name for item in rendered]
        lines = [f"on {self.client.url} (user {self.client.username}, namespace {', '.join(sorted(namespaces))}):"]
        ours = [r for r in records if r.get("application_namespace") in namespaces]
        strays = [r for r in ours if r.get("application_name") not in names]
        for item in rendered:
            app_id = self._match(records, item)
            if app_id is None:
                lines.append(f"  {item.application_name}: not deployed")
                continue
            lines.extend(self._describe(item.application_name, app_id, ""))
        for record in strays:
            app_id = check_id(record.get("applicationID"), f"applicationID of {record.get('application_name')}")
            lines.extend(self._describe(str(record.get("application_name")), app_id,
                                        " [not rendered by this configuration]"))
        return lines

    def _describe(self, name: str, app_id: str, note: str) -> list[str]:
        services = self.client.services(app_id)
        lines = [f"  {name} ({app_id}): {len(services)} service(s){note}"]
        for record in services:
            instances = _instances(record)
            statuses = sorted({i.get("status") for i in instances if isinstance(i, dict)} - {None})
            state = ", ".join(statuses) or str(record.get("status") or "no instance requested")
            lines.append(f"    {record.get('microservice_name')}: {len(instances)} instance(s), {state}")
        return lines


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
    """The service's status: its instances' (the least advanced one); with no instance listed yet, the request
    is waiting (REQUESTED) unless the record says scheduling failed."""
    instances = _instances(record)
    statuses = [i.get("status") for i in instances if isinstance(i, dict) and isinstance(i.get("status"), str)]
    if not statuses:  # releases before the src/ layout keep the status on the record only
        status = record.get("status")
        if not isinstance(status, str):
            return "REQUESTED"
        if instances or (status not in PROGRESS + DONE and FAILURE_HINT.search(status)):
            return status
        return "REQUESTED"
    for status in statuses:
        if status not in PROGRESS + DONE:
            return status
    order = PROGRESS + DONE
    return min(statuses, key=order.index)
