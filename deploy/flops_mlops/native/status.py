"""`flops-mlops status`: every service of the stack on this machine (and the model servers `serve` started), its
state and since when, and each tenant's URIs with passwords masked."""

from __future__ import annotations

import time
from typing import Any

from ..configuration.schema import ConfigError
from ..configuration.secrets import Secrets, required_keys
from ..tracking.server import artifacts_destination, backend_store_uri, is_healthy, mask
from .stack import Stack


def report(stack: Stack) -> dict[str, Any]:
    c = stack.config
    try:
        secrets = Secrets.load(c)
    except ConfigError:
        secrets = Secrets(c.secrets_file, {key: "unknown" for key in required_keys(c)})
    services = []
    for s in [*stack.services(), *stack.served()]:
        state, since = s.process.condition()
        services.append({
            "name": s.name, "kind": s.kind, "address": s.address, "running": state == "running",
            "state": state, "since": since, "pid": (proc.pid if (proc := s.process.recorded()) else None),
            "log": str(s.process.log_file)})
    tenants = []
    for tracker in stack.trackers:
        t = tracker.tenant
        tenants.append({
            "id": t.id,
            "tracking_uri": c.tracking_uri(t),
            "running": tracker.process.is_running(),
            "healthy": tracker.process.is_running() and is_healthy(tracker.local_uri),
            "backend_store": mask(backend_store_uri(c, t, secrets)),
            "artifact_destination": mask(artifacts_destination(c, t, secrets)),
            "database": t.database if c.backend_store.kind == "mysql" else None,
            "ftp_user": t.ftp_user,
        })
    return {"stack": c.name, "config": str(c.source), "state_dir": str(c.state_dir),
            "secrets_file": str(c.secrets_file), "services": services, "tenants": tenants}


def print_report(report: dict[str, Any]) -> None:
    print(f"stack {report['stack']} (state in {report['state_dir']})")
    for service in report["services"]:
        print(f"  {service['name']:<22} {service['kind']:<9} {service['address']:<22} {describe_state(service)}")
    for tenant in report["tenants"]:
        health = "healthy" if tenant["healthy"] else "not answering"
        print(f"  tenant {tenant['id']}: {tenant['tracking_uri']} ({health})")
        print(f"    backend store:  {tenant['backend_store']}")
        print(f"    artifacts:      {tenant['artifact_destination']}")


def describe_state(service: dict) -> str:
    since = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(service["since"])) if service["since"] else None
    if service["state"] == "running":
        return f"up since {since} (pid {service['pid']})"
    if service["state"] == "down":
        return (f"DOWN: exited on its own; last sign of life {since} (see {service['log']}); "
                "`up` starts it again")
    if service["state"] == "stopped":
        return f"stopped since {since}"
    return "never started"
