"""HTTPS of the tracking servers (tracking.tls) on pyinfra hosts: each server's certificate and key, and the CA
certificate our clients on a host verify the servers against.

Each tenant's certificate is signed by the deployment's CA on the machine running pyinfra, beside the secrets file
(certificates.make_tracking_certificates_for), for the names of certificates.tracking_hosts (public_host, ...) and
those the tracking host has in the inventory (its name and its address, flops_address or the SSH host name). On
the host: the certificate ``<etc>/tracking/<tenant>.https.crt`` (root's, 0644) and its key
``<etc>/tracking/<tenant>.https.key`` (the tenant's account's, 0600: its server reads it, another tenant's cannot);
the CA certificate ``<etc>/tracking-ca.crt`` (public, 0644), which the deploy's readiness probe, each tracking
server's own client (it creates the model servers' users through its HTTPS address) and the model servers
(MLFLOW_TRACKING_SERVER_CERT_PATH) verify against, never "insecure". A certificate of the user's own
(tracking.tls_certificate and tls_key) is put there instead; with it and no tracking.tls_ca the clients verify
against the host's system store.
"""

from __future__ import annotations

import shlex

from flops_mlops.configuration import certificates
from flops_mlops.configuration.stack import StackConfig
from flops_mlops.configuration.tracking import Tenant
from pyinfra import host
from pyinfra.operations import files

from . import settings
from .settings import HostSettings


def server_files(s: HostSettings, tenant: Tenant) -> tuple[str, str]:
    """(certificate, key) the tenant's server presents, on its host."""
    return f"{s.etc}/tracking/{tenant.id}.https.crt", f"{s.etc}/tracking/{tenant.id}.https.key"


def ca_file(s: HostSettings, config: StackConfig) -> str | None:
    """The CA certificate on the host that our clients verify the servers against; None: without tracking.tls, or
    with a certificate of the user's own and no tracking.tls_ca (the system's store)."""
    t = config.tracking
    if not t.tls or (t.tls_certificate is not None and t.tls_ca is None):
        return None
    return f"{s.etc}/tracking-ca.crt"


def client_env(s: HostSettings, config: StackConfig) -> dict[str, str]:
    """MLflow's client setting for that CA (and our clients', serving.server), for an environment file."""
    ca = ca_file(s, config)
    return {"MLFLOW_TRACKING_SERVER_CERT_PATH": ca} if ca else {}


def probe(python: str, url: str, ca: str | None) -> str:
    """A shell test that ``url`` answers, run by the host's ``python``; an https URL verified against ``ca``."""
    code = ("import ssl, urllib.request; urllib.request.urlopen("
            f"{url!r}, timeout=2, context=ssl.create_default_context(cafile={ca!r}))")
    return f"{shlex.join([python, '-c', code])} >/dev/null 2>&1"


def make_certificates(s: HostSettings) -> None:
    """Each tenant's certificate, for the names this host is reached at too (made or extended when lacking one)."""
    names = [] if host.name.startswith("@") else [host.name]  # not a connector (@local, @docker/...)
    certificates.make_tracking_certificates_for(s.config, [*names, *settings.reachable_at()])


def put_ca(s: HostSettings) -> list:
    """The CA certificate on the host (root's, 0644); the operation, or none."""
    dest = ca_file(s, s.config)
    if dest is None:
        return []
    if s.config.tracking.tls_certificate is None:
        certificates.make_ca(s.config)  # when no host has made it yet
    source = certificates.tracking_ca(s.config)
    return [files.put(name="The CA certificate of the tracking servers (HTTPS, 0644)", src=str(source), dest=dest,
                      user="root", group="root", mode="644")]


def put_server_files(s: HostSettings, tenant: Tenant, user: str, group: str) -> list:
    """The tenant server's certificate (root's, 0644) and key (``user``'s, 0600) on the host; the operations."""
    sources = certificates.tracking_files(s.config, tenant.id)
    crt, key = server_files(s, tenant)
    return [files.put(name=f"HTTPS certificate of {tenant.id}'s server (0644)", src=str(sources[0]), dest=crt,
                      user="root", group="root", mode="644"),
            files.put(name=f"HTTPS key of {tenant.id}'s server (0600, {user}'s)", src=str(sources[1]), dest=key,
                      user=user, group=group, mode="600")]
