"""The artifact store role: vsftpd with one virtual FTP user per tenant, chrooted to its own folder.

The FTP users have no system account and no login shell: a dedicated PAM service (pam_pwdfile) checks them
against a password file of crypt(3) hashes. vsftpd's settings and the PAM service are rendered from the same
templates `flops-mlops up` uses (deploy/flops_mlops/templates), and the password file and folders (owners,
modes) come from the routine every target runs (flops_mlops.stores.ftp_users), so they are defined once.

With artifact_store.tls vsftpd speaks only explicit FTPS (plain FTP logins refused) with the store's certificate,
signed by the deployment's CA for the configuration's host, loopback and the address other hosts reach this host
at (made or extended here first, certificates.make_certificate), put on the host with its key, root's, mode 0600.
"""

from __future__ import annotations

from io import StringIO

from flops_mlops.configuration import certificates
from flops_mlops.stores import ftp_users
from pyinfra import host
from pyinfra.api import deploy
from pyinfra.facts.server import Command
from pyinfra.operations import apt, files, systemd

from . import services, settings
from .settings import STACK_TEMPLATES, HostSettings


def pam_service(s: HostSettings) -> str:
    return f"{s.service_prefix}-ftp"


def service(s: HostSettings) -> services.Service:
    port = s.config.artifact_store.port
    return services.Service(
        name=f"{s.service_prefix}-vsftpd",
        description=f"vsftpd artifact store of FLOps MLOps stack {s.config.name}",
        argv=["/usr/sbin/vsftpd", f"{s.etc}/vsftpd/vsftpd.conf"],
        ready=f"ss -Hltn sport = :{port} | grep -q LISTEN",
        timeout=30,
    )


def tls_files(s: HostSettings) -> list:
    """With artifact_store.tls: the store's certificate and key on the host (root's, 0600), as vsftpd reads them."""
    if not s.config.artifact_store.tls:
        return []
    certificates.make_certificate(s.config, extra_hosts=settings.reachable_at())
    _, certificate, key = certificates.ftp_files(s.config)
    return [files.put(name=f"FTPS {what} (mode 0600)", src=str(source), dest=f"{s.etc}/vsftpd/{name}",
                      user="root", group="root", mode="600")
            for what, source, name in (("certificate", certificate, "ftp.crt"), ("key", key, "ftp.key"))]


def tls_settings(s: HostSettings) -> dict:
    """What vsftpd.conf.j2 gets for TLS."""
    if not s.config.artifact_store.tls:
        return {"tls": False}
    return {"tls": True, "tls_certificate": f"{s.etc}/vsftpd/ftp.crt", "tls_key": f"{s.etc}/vsftpd/ftp.key"}


@deploy("FLOps artifact store (vsftpd)")
def artifact_store() -> None:
    s = settings.current()
    config = s.config
    store = config.artifact_store
    settings.require_kind(config, "artifact_store.kind", store.kind, "vsftpd")
    if s.install_packages:
        apt.packages(name="Install vsftpd and pam_pwdfile", packages=["vsftpd", "libpam-pwdfile"],
                     update=True, cache_time=3600, no_recommends=True)
        # The packaged instance serves local accounts on port 21; ours runs as a unit of its own.
        systemd.service(name="Stop the packaged vsftpd", service="vsftpd.service", running=False, enabled=False)

    home = f"{s.etc}/vsftpd"
    ftp_root = f"{s.data}/ftp"
    empty = f"{s.data}/vsftpd-empty"
    # Folders shared with the other roles on one host; then the store's own, as ftp_users lays them out.
    # Tenants cannot change modes (chmod_enable=NO in the shared template) and create private files
    # (local_umask=077).
    for path in (s.etc, s.data, s.logs):
        files.directory(name=f"Folder {path}", path=path, user="root", group="root", mode="755")
    for folder in ftp_users.folders(home, empty, ftp_root, [t.ftp_user for t in config.tenants], store.os_user):
        owner = folder.owner or "root"
        files.directory(name=f"Folder {folder.path} ({folder.mode:04o})", path=folder.path, user=owner,
                        group=owner, mode=f"{folder.mode:o}")

    # Hashed here (the machine running pyinfra), keeping the salts of the file on the host.
    passwd_file = ftp_users.passwd_path(home)
    existing = host.get_fact(Command, f"cat {passwd_file} 2>/dev/null || true") or ""
    text = ftp_users.passwd_text([(t.ftp_user, s.secrets.ftp_password(t.id)) for t in config.tenants], existing)
    files.put(name=f"FTP users' password hashes (mode {ftp_users.PASSWD_MODE:04o})", src=StringIO(text),
              dest=passwd_file, user="root", group="root", mode=f"{ftp_users.PASSWD_MODE:o}")
    files.template(name="PAM service for FTP-only users", src=str(STACK_TEMPLATES / "vsftpd.pam.j2"),
                   dest=f"/etc/pam.d/{pam_service(s)}", user="root", group="root", mode="644",
                   passwd_file=passwd_file)
    conf = files.template(
        name="vsftpd settings", src=str(STACK_TEMPLATES / "vsftpd.conf.j2"), dest=f"{home}/vsftpd.conf",
        user="root", group="root", mode="600",
        listen_address=store.host, listen_port=store.port, os_user=store.os_user, ftp_root=ftp_root,
        pam_service=pam_service(s), pasv_min_port=store.passive_ports[0], pasv_max_port=store.passive_ports[1],
        pasv_address=store.pasv_address, empty_dir=empty, log_file=f"{s.logs}/vsftpd-transfers.log",
        **tls_settings(s),
    )
    services.ensure_running(service(s), triggers=[conf, *tls_files(s)])


@deploy("Stop FLOps artifact store")
def stop_artifact_store(remove_pam_service: bool = True) -> None:
    s = settings.current()
    services.ensure_stopped(service(s))
    if remove_pam_service:
        files.file(name="Remove the PAM service", path=f"/etc/pam.d/{pam_service(s)}", present=False)
