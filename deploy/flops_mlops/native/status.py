"""`flops-mlops status`: every service of the stack on this machine (and the model servers `serve` started), its
state and since when, and each tenant's URIs with passwords masked and its artifact store usage against its quota
(artifact_store.quota; counted from the tenant's folder when this machine runs the store)."""

from __future__ import annotations

import os
import time
from pathlib import Path
from typing import Any

from ..configuration import certificates
from ..configuration.schema import ConfigError
from ..configuration.secrets import Secrets, required_keys
from ..configuration.stack import StackConfig
from ..configuration.tracking import Tenant
from ..configuration.values import size_text
from ..stores.embedded_ftp import tenant_folder
from ..tracking import schema
from ..tracking.server import artifacts_destination, backend_store_uri, mask, sqlite_path
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
            "healthy": tracker.process.is_running() and tracker.healthy(),
            "backend_store": mask(backend_store_uri(c, t, secrets)),
            "artifact_destination": mask(artifacts_destination(c, t, secrets)),
            "database": t.database if c.backend_store.kind == "mysql" else None,
            "ftp_user": t.ftp_user,
            "mlflow_version": schema.mlflow_version(),
            "schema_revision": schema_revision(stack, t, secrets),
            "artifact_bytes": folder_bytes(tenant_folder(c, t)) if c.artifact_store.managed else None,
            "artifact_quota": c.artifact_store.quota,
            "certificate": certificate(c, t),
        })
    return {"stack": c.name, "config": str(c.source), "state_dir": str(c.state_dir),
            "secrets_file": str(c.secrets_file), "services": services, "tenants": tenants,
            "warnings": warnings(c)}


def certificate(c: StackConfig, tenant: Tenant) -> dict[str, str | None] | None:
    """With tracking.tls: the file the tenant's server presents and its expiry (None: not found or unreadable)."""
    if not c.tracking.tls:
        return None
    try:
        crt = certificates.tracking_files(c, tenant.id)[0]
    except ConfigError:
        crt = c.tracking.tls_certificate or certificates.leaf_paths(c, certificates.tracking_leaf(tenant.id))[0]
        return {"file": str(crt), "expires": None}
    return {"file": str(crt), "expires": certificates.expiry(crt)}


def warnings(c: StackConfig) -> list[str]:
    """What `status` warns about: encryption that is turned off."""
    found = []
    if not c.tracking.tls:
        found.append("tracking.tls is false: the tracking servers speak plain HTTP (logins, passwords and models "
                     "cross the network in clear text)")
    if c.artifact_store.kind == "vsftpd" and not c.artifact_store.tls:
        found.append("artifact_store.tls is false: the tracking servers log in to the FTP store in plain FTP "
                     "(passwords and models cross the network in clear text)")
    if c.backend_store.kind == "mysql" and not c.backend_store.tls:
        found.append("backend_store.tls is false: the tracking servers talk to MySQL without TLS (passwords and "
                     "metadata cross the network in clear text)")
    return found


def schema_revision(stack: Stack, tenant: Tenant, secrets: Secrets) -> str:
    """The tenant's tracking schema revision, "none" before its first start, or why it cannot be read."""
    c = stack.config
    if c.backend_store.kind == "sqlite" and not sqlite_path(c, tenant).exists():
        return "none (no database yet)"
    try:
        return schema.revision(backend_store_uri(c, tenant, secrets)) or "none (no schema yet)"
    except RuntimeError as exc:
        return f"unknown ({exc})"


def print_report(report: dict[str, Any]) -> None:
    print(f"stack {report['stack']} (state in {report['state_dir']})")
    for warning in report["warnings"]:
        print(f"  WARNING: {warning}")
    for service in report["services"]:
        print(f"  {service['name']:<22} {service['kind']:<9} {service['address']:<22} {describe_state(service)}")
    for tenant in report["tenants"]:
        health = "healthy" if tenant["healthy"] else "not answering"
        print(f"  tenant {tenant['id']}: {tenant['tracking_uri']} ({health})")
        print(f"    backend store:  {tenant['backend_store']}")
        print(f"    artifacts:      {tenant['artifact_destination']}")
        print(f"    MLflow:         {tenant['mlflow_version']}, schema revision {tenant['schema_revision']}")
        print(f"    storage:        {describe_usage(tenant['artifact_bytes'], tenant['artifact_quota'])}")
        if (cert := tenant["certificate"]) is not None:
            expires = f"expires {cert['expires']}" if cert["expires"] else "NOT FOUND or unreadable"
            print(f"    certificate:    {cert['file']}, {expires}")


def folder_bytes(folder: Path) -> int | None:
    """The total size of the files under a tenant's store folder (None: it cannot be read from here)."""
    if not folder.is_dir():
        return 0 if not folder.exists() else None
    total = 0
    try:
        for root, _, files in os.walk(folder, onerror=_raise):
            total += sum(os.lstat(os.path.join(root, name)).st_size for name in files)
    except OSError:
        return None
    return total


def _raise(error: OSError) -> None:
    raise error


def describe_usage(used: int | None, quota: int) -> str:
    limit = f"quota {size_text(quota)}" if quota else "no quota"
    if used is None:
        return f"usage unknown here (the store is not on this machine, or its folder is closed to this user); {limit}"
    share = f" ({100 * used / quota:.0f}%)" if quota else ""
    return f"{size_text(used)} used of {limit}{share}"


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
