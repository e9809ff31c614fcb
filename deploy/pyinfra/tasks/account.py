"""The accounts the Python services run as: never root, and one per tenant.

Each tenant's tracking server and model servers run as ``<flops_service_user>-<tenant>`` (flops-mlops-acme), so
that no tenant's process can read another's environment (/proc/<pid>/environ holds its passwords), files or logs,
as `flops-mlops up` does (flops_mlops.configuration.accounts).
"""

from __future__ import annotations

from flops_mlops.configuration.accounts import tenant_account_name
from flops_mlops.configuration.tracking import Tenant
from pyinfra import host
from pyinfra.facts.server import Users
from pyinfra.operations import server

from .settings import HostDataError, HostSettings


def tenant_user(s: HostSettings, tenant: Tenant) -> str:
    return tenant_account_name(s.service_user, tenant.id)


def tenant_account(s: HostSettings, tenant: Tenant) -> str:
    """Create the tenant's account when it is missing (a system account, no login shell); an existing account is
    used as it is, unless it is root under another name. Returns its primary group."""
    name = tenant_user(s, tenant)
    existing = (host.get_fact(Users) or {}).get(name)
    if existing is None:
        server.user(name=f"Account {name} of tenant {tenant.id}'s servers", user=name, system=True,
                    home="/nonexistent", shell="/usr/sbin/nologin", ensure_home=False)
        return name  # useradd gives a system account a group of its own name
    if str(existing.get("uid")) == "0":
        raise HostDataError(f"host {host.name}: flops_service_user: {name!r} has uid 0 (root); tracking servers "
                            "never run as root")
    return existing.get("group") or name
