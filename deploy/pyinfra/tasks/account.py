"""The account the Python services (tracking servers, model servers) run as: never root."""

from __future__ import annotations

from pyinfra import host
from pyinfra.facts.server import Users
from pyinfra.operations import server

from .settings import HostDataError, HostSettings


def service_account(s: HostSettings) -> str:
    """Create the servers' account when it is missing (a system account, no login shell); an existing account is
    used as it is, unless it is root under another name. Returns its primary group."""
    existing = (host.get_fact(Users) or {}).get(s.service_user)
    if existing is None:
        server.user(name=f"Account {s.service_user} of the tracking servers", user=s.service_user, system=True,
                    home=f"{s.data}/tracking", shell="/usr/sbin/nologin", ensure_home=False)
        return s.service_user  # useradd gives a system account a group of its own name
    if str(existing.get("uid")) == "0":
        raise HostDataError(f"host {host.name}: flops_service_user: {s.service_user!r} has uid 0 (root); "
                            "tracking servers never run as root")
    return existing.get("group") or s.service_user
