"""The artifact store role: vsftpd with one virtual FTP user per tenant, chrooted to its own folder.

The FTP users have no system account and no login shell: a dedicated PAM service (pam_pwdfile) checks them
against a password file of crypt(3) hashes. vsftpd's settings and the PAM service are rendered from the same
templates `flops-mlops up` uses (deploy/flops_mlops/templates), so they are defined once.
"""

from __future__ import annotations

import secrets as random_source
import string
import subprocess
from io import StringIO

from pyinfra import host
from pyinfra.api import deploy
from pyinfra.facts.server import Command
from pyinfra.operations import apt, files, systemd

from . import services, settings
from .settings import STACK_TEMPLATES, HostSettings

SALT_ALPHABET = string.ascii_letters + string.digits + "./"


def crypt_hash(password: str, salt: str) -> str:
    """SHA-512 crypt(3) hash, computed locally by openssl with the password on stdin (never in argv)."""
    result = subprocess.run(["openssl", "passwd", "-6", "-salt", salt, "-stdin"], input=password + "\n",
                            capture_output=True, text=True, check=True)
    return result.stdout.strip()


def _existing_salts(text: str) -> dict[str, str]:
    """user -> salt of the hashes already on the host, so an unchanged password gives an unchanged file."""
    salts = {}
    for line in text.splitlines():
        user, _, hashed = line.partition(":")
        parts = hashed.split("$")
        if len(parts) == 4 and parts[1] == "6" and parts[2] and all(c in SALT_ALPHABET for c in parts[2]):
            salts[user] = parts[2]
    return salts


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


@deploy("FLOps artifact store (vsftpd)")
def artifact_store() -> None:
    s = settings.current()
    config = s.config
    store = config.artifact_store
    settings.require_kind(config, "artifact_store.kind", store.kind, "vsftpd")
    if s.install_packages:
        apt.packages(name="Install vsftpd and pam_pwdfile", packages=["vsftpd", "libpam-pwdfile"],
                     update=True, cache_time=3600, no_recommends=True)
        if s.systemd:  # the packaged instance serves local accounts on port 21; ours runs as its own unit
            systemd.service(name="Stop the packaged vsftpd", service="vsftpd.service", running=False, enabled=False)

    home = f"{s.etc}/vsftpd"
    ftp_root = f"{s.data}/ftp"
    empty = f"{s.data}/vsftpd-empty"
    # As `flops-mlops up` lays them out: vsftpd reads its settings and password hashes as root (0700); the FTP
    # account passes through ftp/ (0711) into the tenants' folders, which it alone may read (0700). Tenants
    # cannot change modes (chmod_enable=NO in the shared template) and create private files (local_umask=077).
    for path, mode in ((s.etc, "755"), (home, "700"), (s.data, "755"), (ftp_root, "711"), (empty, "755"),
                       (s.run, "755"), (s.logs, "755")):
        files.directory(name=f"Folder {path}", path=path, user="root", group="root", mode=mode)
    for tenant in config.tenants:
        folder = f"{ftp_root}/{tenant.ftp_user}"
        for path in (folder, f"{folder}{tenant.artifact_path}"):
            files.directory(name=f"FTP folder {path} (0700)", path=path, user=store.os_user, group=store.os_user,
                            mode="700")

    passwd_file = f"{home}/passwd"
    salts = _existing_salts(host.get_fact(Command, f"cat {passwd_file} 2>/dev/null || true") or "")
    lines = []
    for tenant in config.tenants:
        salt = salts.get(tenant.ftp_user) or "".join(random_source.choice(SALT_ALPHABET) for _ in range(16))
        lines.append(f"{tenant.ftp_user}:{crypt_hash(s.secrets.ftp_password(tenant.id), salt)}\n")
    files.put(name="FTP users' password hashes (mode 0600)", src=StringIO("".join(lines)), dest=passwd_file,
              user="root", group="root", mode="600")
    files.template(name="PAM service for FTP-only users", src=str(STACK_TEMPLATES / "vsftpd.pam.j2"),
                   dest=f"/etc/pam.d/{pam_service(s)}", user="root", group="root", mode="644",
                   passwd_file=passwd_file)
    conf = files.template(
        name="vsftpd settings", src=str(STACK_TEMPLATES / "vsftpd.conf.j2"), dest=f"{home}/vsftpd.conf",
        user="root", group="root", mode="600",
        listen_address=store.host, listen_port=store.port, os_user=store.os_user, ftp_root=ftp_root,
        pam_service=pam_service(s), pasv_min_port=store.passive_ports[0], pasv_max_port=store.passive_ports[1],
        pasv_address=store.pasv_address, empty_dir=empty, log_file=f"{s.logs}/vsftpd-transfers.log",
    )
    services.ensure_running(s, service(s), triggers=[conf])


@deploy("Stop FLOps artifact store")
def stop_artifact_store(remove_pam_service: bool = True) -> None:
    s = settings.current()
    services.ensure_stopped(s, service(s))
    if remove_pam_service:
        files.file(name="Remove the PAM service", path=f"/etc/pam.d/{pam_service(s)}", present=False)
