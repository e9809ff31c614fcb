"""The vsftpd artifact store: config and PAM service rendered from templates, virtual users per tenant.

FTP users are virtual (pam_pwdfile), so tenants need no system account and no login shell; files are
owned by ``artifact_store.os_user``. Each user is chrooted to ``<state_dir>/ftp/<ftp user>``. The password file
and the folders come from the routine every target runs (stores/ftp_users.py).
"""

from __future__ import annotations

import hashlib
import os
import pwd
import shutil
from collections.abc import Callable
from pathlib import Path

import jinja2

from ..configuration import certificates
from ..configuration.schema import ConfigError
from ..configuration.secrets import Secrets
from ..configuration.stack import StackConfig
from ..processes import SERVICE_PATH, ManagedProcess, can_traverse, port_answers, wait_until, write_private
from . import ftp_users

PAM_DIR = Path("/etc/pam.d")
PAM_MODULE_DIRS = [Path("/lib/x86_64-linux-gnu/security"), Path("/lib/aarch64-linux-gnu/security"),
                   Path("/usr/lib/x86_64-linux-gnu/security"), Path("/usr/lib/aarch64-linux-gnu/security"),
                   Path("/lib/security"), Path("/usr/lib/security")]
TEMPLATES = jinja2.Environment(
    loader=jinja2.PackageLoader("flops_mlops.stores", "templates"), undefined=jinja2.StrictUndefined,
    keep_trailing_newline=True, autoescape=False)


class ManagedVsftpd:
    def __init__(self, config: StackConfig, secrets: Secrets):
        self.config = config
        self.secrets = secrets
        self.home = config.state_dir / "vsftpd"
        self.ftp_root = config.state_dir / "ftp"
        self.process = ManagedProcess("artifact-store", config.state_dir)
        self.pam_service = pam_service_name(config)

    def check_binaries(self) -> str:
        binary = shutil.which("vsftpd", path=SERVICE_PATH)
        where = f"{self.config.source}: artifact_store"
        if binary is None:
            raise ConfigError(f"{where}: kind vsftpd needs the vsftpd binary, and it is not installed; "
                              "on Debian: apt-get install vsftpd")
        if shutil.which("openssl", path=SERVICE_PATH) is None:
            raise ConfigError(f"{where}: kind vsftpd needs openssl to hash the FTP passwords; "
                              "on Debian: apt-get install openssl")
        if not any((d / "pam_pwdfile.so").exists() for d in PAM_MODULE_DIRS):
            raise ConfigError(f"{where}: kind vsftpd needs the PAM module pam_pwdfile for FTP-only users; "
                              "on Debian: apt-get install libpam-pwdfile")
        if os.geteuid() != 0:
            raise ConfigError(f"{where}: kind vsftpd must be started as root (it chroots each tenant)")
        try:
            account = pwd.getpwnam(self.config.artifact_store.os_user)
        except KeyError:
            raise ConfigError(f"{where}.os_user: no local account {self.config.artifact_store.os_user!r} "
                              "on this machine") from None
        if not can_traverse(self.ftp_root, account):
            raise ConfigError(f"{self.config.source}: state_dir: {self.config.state_dir} is inside a folder that "
                              f"artifact_store.os_user {account.pw_name!r} cannot enter; vsftpd serves the tenants' "
                              "folders as that account: choose a state_dir it can reach, or allow it in (chmod o+x)")
        return binary

    def start(self, progress: Callable[[str], None] | None = None) -> None:
        """Start and wait until it answers (``progress``: see processes.wait_until)."""
        binary = self.check_binaries()
        self._write_files()
        self.process.start([binary, str(self.home / "vsftpd.conf")], env={"PATH": SERVICE_PATH})
        store = self.config.artifact_store
        wait_until(lambda: port_answers(store.host, store.port), self.process,
                   "artifact store (vsftpd) did not come up", 30, progress=progress,
                   waiting_for=f"artifact store (vsftpd, {store.host}:{store.port})")

    def _write_files(self) -> None:
        store = self.config.artifact_store
        empty = self.home / "empty"
        # Tenants cannot change modes (chmod_enable=NO in the template).
        ftp_users.install(str(self.home), str(empty), str(self.ftp_root), store.os_user,
                          [(t.ftp_user, self.secrets.ftp_password(t.id)) for t in self.config.tenants])
        passwd_file = Path(ftp_users.passwd_path(str(self.home)))
        write_private(self.home / "vsftpd.conf", TEMPLATES.get_template("vsftpd.conf.j2").render(
            listen_address=store.host, listen_port=store.port, os_user=store.os_user, ftp_root=self.ftp_root,
            pam_service=self.pam_service, pasv_min_port=store.passive_ports[0],
            pasv_max_port=store.passive_ports[1], pasv_address=store.pasv_address, empty_dir=empty,
            log_file=self.config.state_dir / "logs" / "vsftpd-transfers.log", **self._tls_settings()), 0o600)
        write_private(PAM_DIR / self.pam_service,
               TEMPLATES.get_template("vsftpd.pam.j2").render(passwd_file=passwd_file), 0o644)

    def _tls_settings(self) -> dict:
        """With artifact_store.tls: the store's certificate, signed by the deployment's CA, and its key (made by
        `secrets init`); a missing file is named with the command that makes it."""
        if not self.config.artifact_store.tls:
            return {"tls": False}
        certificates.make_certificate(self.config)  # an older deployment's: made, or re-made signed by the CA
        _, certificate, key = certificates.ftp_files(self.config)
        return {"tls": True, "tls_certificate": certificate, "tls_key": key}

    def stop(self) -> bool:
        return self.process.stop()


def pam_service_name(config: StackConfig) -> str:
    """One PAM service per stack (the same name on every `up`, distinct for stacks in other state dirs)."""
    digest = hashlib.sha256(str(config.state_dir).encode()).hexdigest()[:8]
    return f"flops-mlops-{config.name}-{digest}"


def remove_pam_service(config: StackConfig) -> None:
    (PAM_DIR / pam_service_name(config)).unlink(missing_ok=True)
