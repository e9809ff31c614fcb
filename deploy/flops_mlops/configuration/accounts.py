"""The local accounts services run as when flops-mlops is started as root (tracking.os_user and its tenants').

Started as root, no service of the stack stays root, and no two tenants share an account:

- each tenant's tracking server and model servers run as the tenant's own account, ``<tracking.os_user>-<tenant>``
  (flops-mlops-acme). A tenant's process can then read neither another tenant's environment
  (/proc/<pid>/environ, which holds its passwords) nor its files. `up`, `restart` and `serve` create the account
  when it is missing: a system account with no home, no login shell and a group of its own;
- the embedded FTP store binds its port as root, then runs as tracking.os_user itself, the stack's own account:
  it owns the tenants' FTP folders and runs no tenant's server (vsftpd does the same with artifact_store.os_user).

Started as an ordinary user, everything runs as that user, and nothing here is called.
"""

from __future__ import annotations

import os
import pwd
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

from ..processes import can_traverse
from .schema import ConfigError
from .stack import StackConfig
from .tracking import Tenant

NAME_LIMIT = 32  # useradd's longest account name


def tenant_account_name(os_user: str, tenant_id: str) -> str:
    return f"{os_user}-{tenant_id}"


def stack_account(config: StackConfig) -> pwd.struct_passwd | None:
    """tracking.os_user when started as root, else None (this user); checked: it exists and reaches what it runs."""
    if os.geteuid() != 0:
        return None
    name = config.tracking.os_user
    if name is None:
        raise ConfigError(f"{config.source}: tracking.os_user: flops-mlops runs as root, and tracking servers never "
                          "do: set tracking.os_user to an unprivileged account (for example flops-mlops)")
    try:
        account = pwd.getpwnam(name)
    except KeyError:
        raise ConfigError(f"{config.source}: tracking.os_user: no local account {name!r}; create it with: useradd "
                          f"--system --no-create-home --shell /usr/sbin/nologin {name}") from None
    return _reaching(config, account)


def tenant_account(config: StackConfig, tenant: Tenant,
                   progress: Callable[[str], None] | None = None) -> pwd.struct_passwd | None:
    """The account ``tenant``'s servers run as: its own when started as root (created if missing), else None."""
    base = stack_account(config)
    if base is None:
        return None
    name = tenant_account_name(base.pw_name, tenant.id)
    try:
        return _reaching(config, pwd.getpwnam(name))
    except KeyError:
        pass
    if progress:
        progress(f"creating the system account {name} for tenant {tenant.id}'s servers (no home, no login shell)")
    result = subprocess.run(["useradd", "--system", "--no-create-home", "--home-dir", "/nonexistent",
                             "--shell", "/usr/sbin/nologin", "--user-group", name],
                            capture_output=True, text=True, check=False)
    if result.returncode != 0:
        raise ConfigError(f"{config.source}: tracking.os_user: could not create the account {name!r} for tenant "
                          f"{tenant.id}: {result.stderr.strip() or f'useradd exited {result.returncode}'}")
    return _reaching(config, pwd.getpwnam(name))


def _reaching(config: StackConfig, account: pwd.struct_passwd) -> pwd.struct_passwd:
    """``account`` if it may enter the folders of this Python, our package and the state dir."""
    needed = [Path(os.path.realpath(sys.executable)), Path(__file__).resolve().parents[1], config.state_dir]
    for path in needed:
        if not can_traverse(path, account):
            raise ConfigError(f"{config.source}: tracking.os_user: account {account.pw_name!r} cannot reach {path} "
                              "(a folder above it is closed to others); install flops-mlops with a Python and in a "
                              "folder that account can read (make venv uses /usr/bin/python3 where it exists)")
    return account


def own_tree(path: Path, account: pwd.struct_passwd) -> None:
    """Make ``path`` and everything in it ``account``'s (files an earlier release's shared account left)."""
    for folder, folders, files in os.walk(path):
        for name in [folder, *(os.path.join(folder, f) for f in folders + files)]:
            st = os.lstat(name)
            if (st.st_uid, st.st_gid) != (account.pw_uid, account.pw_gid):
                os.lchown(name, account.pw_uid, account.pw_gid)
