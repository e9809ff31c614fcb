"""The embedded artifact store: a pyftpdlib FTP server with one chrooted user per tenant.

Run by the stack as ``python -m flops_mlops.stores.embedded_ftp CONFIG``; the passwords come from the
secrets file named in the configuration, never from the command line. Started as root, it reads them and binds its
port, then runs as the stack's account (tracking.os_user, configuration/accounts.py), which owns the tenants'
folders, as vsftpd drops to its own.
"""

from __future__ import annotations

import logging
import os
import pwd
import sys
from pathlib import Path

from pyftpdlib.authorizers import DummyAuthorizer
from pyftpdlib.handlers import FTPHandler
from pyftpdlib.servers import FTPServer

from ..configuration.accounts import own_tree, stack_account
from ..configuration.loading import load
from ..configuration.secrets import Secrets
from ..configuration.stack import StackConfig
from ..configuration.tracking import Tenant
from ..processes import private_dir

# list, read, create dirs, store, rename, delete, append, mkdir, mtime: the tenant owns its folder. No "M"
# (SITE CHMOD): a tenant must not change modes of files on the host.
TENANT_PERMISSIONS = "elradfmwT"


def ftp_root(config: StackConfig) -> Path:
    return config.state_dir / "ftp"


def tenant_folder(config: StackConfig, tenant: Tenant) -> Path:
    return ftp_root(config) / tenant.ftp_user


def build_server(config: StackConfig, secrets: Secrets) -> FTPServer:
    store = config.artifact_store
    authorizer = DummyAuthorizer()
    for tenant in config.tenants:
        folder = tenant_folder(config, tenant)
        private_dir(ftp_root(config))
        private_dir(folder / tenant.artifact_path.lstrip("/"))
        private_dir(folder)
        authorizer.add_user(tenant.ftp_user, secrets.ftp_password(tenant.id), str(folder), perm=TENANT_PERMISSIONS)
    handler = type("TenantFTPHandler", (FTPHandler,), {})
    handler.authorizer = authorizer
    handler.passive_ports = range(store.passive_ports[0], store.passive_ports[1] + 1)
    handler.masquerade_address = store.pasv_address
    handler.banner = "FLOps MLOps artifact store ready."
    return FTPServer((store.host, store.port), handler)


def drop_to(account: pwd.struct_passwd, folder: Path) -> None:
    """Give ``folder`` (the tenants' folders) to ``account`` and run as it from now on, without root's groups."""
    own_tree(folder, account)
    os.setgroups([])
    os.setgid(account.pw_gid)
    os.setuid(account.pw_uid)
    logging.info("running as %s (uid %d)", account.pw_name, account.pw_uid)


def main(argv: list[str] | None = None) -> int:
    args = sys.argv[1:] if argv is None else argv
    if len(args) != 1:
        print("usage: python -m flops_mlops.stores.embedded_ftp CONFIG", file=sys.stderr)
        return 2
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(message)s")
    config = load(args[0])
    server = build_server(config, Secrets.load(config))
    account = stack_account(config)
    if account:
        drop_to(account, ftp_root(config))
    server.serve_forever(handle_exit=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
