"""What one host gets: the stack configuration and secrets, its own paths, and where the other roles live.

Tenants, ports and store kinds come from the stack configuration (the same YAML `flops-mlops` reads, named by
host data ``flops_config``); passwords come from that configuration's secrets file on the machine running
pyinfra, never from the inventory. Everything a deploy writes on a host lives under ``flops_root`` (``/`` on
real hosts), so several roles can share one machine in tests.
"""

from __future__ import annotations

import functools
import hashlib
import re
from dataclasses import dataclass
from pathlib import Path

from flops_mlops.configuration import loading as config_module
from flops_mlops.configuration.schema import ConfigError
from flops_mlops.configuration.secrets import Secrets
from flops_mlops.configuration.stack import StackConfig
from flops_mlops.configuration.values import AccountName, Host, problem
from pyinfra import host, inventory

PYINFRA_DIR = Path(__file__).resolve().parent.parent
TEMPLATES = PYINFRA_DIR / "templates"
# vsftpd's config and PAM service are the ones `flops-mlops up` renders: one definition of those settings.
STACK_TEMPLATES = Path(config_module.__file__).resolve().parents[1] / "stores" / "templates"
TRIM = {"trim_blocks": True, "lstrip_blocks": True}  # Jinja2 options for our templates' {% %} lines
# What files.sync leaves out of a copy of the checkout's source folders: its exclude_dir patterns match a folder's
# path relative to the copied one, so a nested __pycache__ needs "*/" (Python makes those folders whenever another
# process first imports a module, so copying them would make a second apply change something).
SOURCE_EXCLUDE_DIRS = ["__pycache__", "*/__pycache__", "*.egg-info", "*/*.egg-info"]

ROLES = ("backend_store", "artifact_store", "tracking_server", "model_server", "docker_host")
MODES = ("native", "docker")
INITS = ("systemd",)  # hosts without systemd run the stack with `flops-mlops up` (docs/native.md)
SAFE_PATH = re.compile(r"^/[A-Za-z0-9._/+-]*$")


class HostDataError(ConfigError):
    """Host data in an inventory or group_data file that cannot be used; names host, key and value."""


@functools.lru_cache(maxsize=None)
def _load(path: str) -> tuple[StackConfig, Secrets]:
    config = config_module.load(path)
    return config, Secrets.load(config)


def _path(key: str, value: object) -> str:
    if not isinstance(value, str) or not SAFE_PATH.fullmatch(value) or "/../" in f"{value}/":
        raise HostDataError(f"host {host.name}: {key}: expected an absolute path of letters, digits and ._/+-, "
                            f"got {value!r}")
    return value.rstrip("/")


def _choice(key: str, allowed: tuple[str, ...], of_host=None) -> str:
    target = of_host or host
    value = target.data.get(key)
    if value not in allowed:
        raise HostDataError(f"host {target.name}: {key}: expected one of {', '.join(allowed)}, got {value!r}")
    return value


def _flag(key: str) -> bool:
    """A yes/no host data value; `pyinfra --data key=value` passes strings, so those are accepted too."""
    value = host.data.get(key)
    if isinstance(value, bool):
        return value
    if isinstance(value, str) and value.lower() in ("true", "yes", "1", "false", "no", "0"):
        return value.lower() in ("true", "yes", "1")
    raise HostDataError(f"host {host.name}: {key}: expected true or false, got {value!r}")


def _strings(key: str) -> tuple[str, ...]:
    value = host.data.get(key) or []
    if isinstance(value, str) or not all(isinstance(item, str) and "\n" not in item for item in value):
        raise HostDataError(f"host {host.name}: {key}: expected a list of strings, got {value!r}")
    return tuple(value)


@dataclass(frozen=True)
class HostSettings:
    config: StackConfig
    secrets: Secrets
    mode: str
    root: str
    install_packages: bool
    service_user: str
    venv: str
    manage_venv: bool
    tracking_packages: tuple[str, ...]
    pip_args: tuple[str, ...] = ()   # extra pip install arguments for the managed venv (index, wheelhouse)

    # Folders under flops_root; on a real host (root "/") these are the usual FHS places.
    @property
    def etc(self) -> str:
        return f"{self.root}/etc/flops-mlops/{self.config.name}"

    @property
    def data(self) -> str:
        return f"{self.root}/var/lib/flops-mlops/{self.config.name}"

    @property
    def logs(self) -> str:
        return f"{self.root}/var/log/flops-mlops/{self.config.name}"

    @property
    def service_prefix(self) -> str:
        """Name prefix of services, unit files and the PAM service; unique per stack and root dir."""
        if not self.root:
            return f"flops-mlops-{self.config.name}"
        digest = hashlib.sha256(self.root.encode()).hexdigest()[:8]
        return f"flops-mlops-{self.config.name}-{digest}"


def current() -> HostSettings:
    """The settings of the host pyinfra is working on."""
    if host.state.config.DIFF:
        raise HostDataError("pyinfra --diff would print the contents of files that hold passwords (environment "
                            "files, tenants.sql, FTP password hashes); run without --diff")
    config_path = host.data.get("flops_config")
    if not config_path:
        raise HostDataError(f"host {host.name}: flops_config: no stack configuration named (set it in "
                            "group_data or pass --data flops_config=FILE; `flops-mlops provision` does)")
    path = Path(config_path)
    if not path.is_absolute():
        path = PYINFRA_DIR / path
    config, secrets = _load(str(path.resolve()))
    root = _path("flops_root", host.data.get("flops_root", "/"))
    service_user = host.data.get("flops_service_user")
    if problem(AccountName, service_user) is not None:
        raise HostDataError(f"host {host.name}: flops_service_user: expected an account name, got {service_user!r}")
    if service_user == "root":
        raise HostDataError(f"host {host.name}: flops_service_user: tracking servers never run as root; name an "
                            "unprivileged account (for example flops-mlops: the deploy creates it when missing)")
    for tenant in config.tenants:
        if len(f"{service_user}-{tenant.id}") > 32:
            raise HostDataError(f"host {host.name}: flops_service_user: {service_user!r} is too long: tenant "
                                f"{tenant.id}'s servers run as {service_user}-{tenant.id}, over the 32 characters "
                                "of an account name")
    return HostSettings(
        config=config,
        secrets=secrets,
        mode=_choice("flops_mode", MODES),
        root=root,
        install_packages=_flag("flops_install_packages"),
        service_user=service_user,
        venv=_path("flops_venv", host.data.get("flops_venv")),
        manage_venv=_flag("flops_manage_venv"),
        tracking_packages=tuple(host.data.get("flops_tracking_packages") or ()),
        pip_args=_strings("flops_pip_args"),
    )


def require_kind(config: StackConfig, key: str, actual: str, expected: str) -> None:
    """Native roles provision MariaDB and vsftpd; SQLite and the embedded FTP server need no provisioning."""
    if actual != expected:
        raise ConfigError(f"{config.source}: {key}: the pyinfra native deploys provision {expected}, got {actual} "
                          "(sqlite and the embedded FTP server need no hosts; use `flops-mlops up` for those)")


def roles(of_host=None) -> list[str]:
    """The roles a host has (host data ``flops_roles``): docker_host alone in docker mode, the others in native."""
    target = of_host or host
    value = target.data.get("flops_roles") or []
    if isinstance(value, str) or not all(role in ROLES for role in value):
        raise HostDataError(f"host {target.name}: flops_roles: expected a list of {', '.join(ROLES)}, got {value!r}")
    docker = target.data.get("flops_mode") == "docker"
    if value and docker != (list(value) == ["docker_host"]):
        raise HostDataError(f"host {target.name}: flops_roles: {value!r} does not fit flops_mode "
                            f"{target.data.get('flops_mode')!r} (docker mode: [\"docker_host\"] only; native mode: "
                            "backend_store, artifact_store, tracking_server)")
    return list(value)


def address(of_host) -> str:
    """How other hosts reach ``of_host``: host data ``flops_address``, else its SSH host name or inventory name
    (a connector such as @local or @docker/NAME is no address)."""
    value = of_host.data.get("flops_address") or of_host.data.get("ssh_hostname") or of_host.name
    if not isinstance(value, str) or value.startswith("@"):
        raise HostDataError(f"host {of_host.name}: flops_address: missing; other hosts connect to its stores, and "
                            "its name is a pyinfra connector, not an address (set flops_address to the address "
                            "they reach it at)")
    if problem(Host, value) is not None:
        raise HostDataError(f"host {of_host.name}: flops_address: {value!r} is not a host name or IP address "
                            "(it goes into the store URIs of the tracking servers)")
    return value


def check_inventory(hosts) -> None:
    """What the deploys need from every host's data, checked before any host is contacted (`flops-mlops
    provision` runs this): known roles that fit the mode, a known mode and init system, each store role on one
    host, and an address for a store host that a tracking server on another host connects to."""
    hosts = list(hosts)
    for target in hosts:
        _choice("flops_mode", MODES, target)
        _choice("flops_init", INITS, target)
        roles(target)
    trackers = [target for target in hosts if "tracking_server" in roles(target)]
    for role in ("backend_store", "artifact_store"):
        holders = [target for target in hosts if role in roles(target)]
        if len(holders) > 1:
            names = ", ".join(target.name for target in holders)
            raise HostDataError(f"inventory: role {role} is given to several hosts ({names}); give it to one")
        if holders and any(tracker.name != holders[0].name for tracker in trackers):
            address(holders[0])


def reachable_at() -> list[str]:
    """The address other hosts reach this host at, when the inventory names one (for its stores' certificates)."""
    try:
        return [address(host)]
    except HostDataError:
        return []


def peer_address(role: str, fallback: str) -> str:
    """Address of the inventory host that has ``role``. ``fallback`` (the configuration's address) when no host
    has it (a store run elsewhere) or this host has it itself (the store listens on that address here)."""
    holders = [other for other in inventory if role in roles(other)]  # one at most (check_inventory)
    if not holders:
        return fallback
    if holders[0].name == host.name:
        return "127.0.0.1" if fallback in ("0.0.0.0", "::") else fallback
    return address(holders[0])


def as_seen_from_tracking(config: StackConfig) -> StackConfig:
    """The configuration with the store hosts replaced by the inventory's backend and artifact hosts."""
    return config.model_copy(update={
        "backend_store": config.backend_store.model_copy(
            update={"host": peer_address("backend_store", config.backend_store.host)}),
        "artifact_store": config.artifact_store.model_copy(
            update={"host": peer_address("artifact_store", config.artifact_store.host)}),
    })
