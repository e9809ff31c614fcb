"""The values a setting may take, each defined once: tenant id, project name, host, port, account name, ...

These are pydantic types (``Annotated``: a strict base type, its constraints, and the message a user reads when
a value breaks them). The configuration model (configuration/) declares its fields with them, and every other place
that checks the same fact (the tracking-server image's environment, the FL settings, pyinfra's host data, the
CLI) asks ``problem(Type, value)`` instead of keeping its own regular expression.
"""

from __future__ import annotations

import ipaddress
from functools import cache
from pathlib import Path
from typing import Annotated, Any

from pydantic import (
    AfterValidator,
    BeforeValidator,
    Field,
    StrictInt,
    StrictStr,
    TypeAdapter,
    ValidationError,
    WrapValidator,
)
from pydantic_core import PydanticCustomError

# Error types that mean "wrong type" (reported by loading.py as "expected an integer, got str '5'"); any other
# failure of a constrained type is reported with the type's own message.
TYPE_ERRORS = frozenset({"int_type", "bool_type", "string_type", "float_type", "list_type", "dict_type",
                         "model_type", "literal_error", "none_required", "is_instance_of"})
RULE_ERROR = "flops_rule"


def explained(message: str) -> WrapValidator:
    """A failed constraint of the wrapped type reported as ``message`` ({value!r} is the value)."""
    def validate(value: Any, handler: Any) -> Any:
        try:
            return handler(value)
        except ValidationError as exc:
            if exc.errors()[0]["type"] in TYPE_ERRORS:
                raise
            raise PydanticCustomError(RULE_ERROR, message.format(value=value)) from None
    return WrapValidator(validate)


def _no_dot_parts(value: str) -> str:
    if any(part in (".", "..") for part in value.split("/")):
        raise ValueError("'.' or '..' part")
    return value


def _allowed_host(value: str) -> str:
    """HOST, HOST:PORT or HOST:*; HOST may start with '*.' to match the subdomains of a domain of two or more
    labels. MLflow matches the Host header with fnmatch, so '*' anywhere else (alone, '10.0.*') opens it to any
    host, and the DNS-rebinding protection the check exists for is gone."""
    host, _, port = value.partition(":")
    if port and port != "*" and not (port.isdigit() and 1 <= int(port) <= 65535):
        raise ValueError("port")
    name = host[2:] if host.startswith("*.") else host
    if "*" in name or problem(Host, name) is not None or (host.startswith("*.") and "." not in name):
        raise ValueError("not a host")
    return value


def _not_root(value: str) -> str:
    if value == "root":
        raise ValueError("root")
    return value


def _ipv4(value: str) -> str:
    ipaddress.IPv4Address(value)  # ValueError unless four decimal octets
    return value


def _path(value: Any) -> Any:
    """YAML has no path type: a non-empty string becomes a Path (anything else fails the strict Path check)."""
    return Path(value) if isinstance(value, str) and value else value


# Tenant ids reach SQL identifiers, FTP user names, folder names, URLs and Oakestra service names
# (which allow only [a-zA-Z0-9]), so they are short, lowercase and alphanumeric.
TENANT_ID_RULE = "1-16 characters: a lowercase letter, then lowercase letters or digits"
TenantId = Annotated[StrictStr, Field(pattern=r"^[a-z][a-z0-9]{0,15}$"),
                     explained(f"{{value!r}} is not a valid tenant id ({TENANT_ID_RULE})")]

# Project names reach MLflow experiment and model names, folders and Oakestra service names.
PROJECT_RULE = "1-32 characters: a letter, then letters or digits"
ProjectName = Annotated[StrictStr, Field(pattern=r"^[A-Za-z][A-Za-z0-9]{0,31}$"),
                        explained(f"{{value!r}} is not a valid project name ({PROJECT_RULE})")]

StackName = Annotated[StrictStr, Field(pattern=r"^[a-z][a-z0-9-]{0,30}$"),
                      explained("{value!r} is not valid (lowercase letters, digits and '-', starting with a letter, "
                                "at most 31 characters)")]
Host = Annotated[StrictStr, Field(pattern=r"^[A-Za-z0-9]([A-Za-z0-9.-]{0,251}[A-Za-z0-9])?$"),
                 explained("expected a host name or IP address, got {value!r}")]
Port = Annotated[StrictInt, Field(ge=1, le=65535), explained("expected a TCP port 1-65535, got {value!r}")]
# A Host header value MLflow accepts (--allowed-hosts): a host name, optionally with :port, '*' as a wildcard.
AllowedHost = Annotated[StrictStr, AfterValidator(_allowed_host),
                        explained("expected a host name or IP address, optionally with :port or :*, where a "
                                  "leading '*.' matches the subdomains of a domain such as '*.example.org' "
                                  "('*' elsewhere would let any Host header in), got {value!r}")]
AccountName = Annotated[StrictStr, Field(pattern=r"^[a-z_][a-z0-9_-]{0,31}$"),
                        explained("{value!r} is not a valid account name")]
# An account a service runs as: never root.
ServiceAccount = Annotated[StrictStr, Field(pattern=r"^[a-z_][a-z0-9_-]{0,31}$"), AfterValidator(_not_root),
                           explained("{value!r} is not an unprivileged account name (tracking servers never run "
                                     "as root)")]
IPv4 = Annotated[StrictStr, AfterValidator(_ipv4), explained("expected an IPv4 address, got {value!r}")]
Text = Annotated[StrictStr, Field(min_length=1)]  # any non-empty string


def _pinned(value: str) -> str:
    if value.rsplit("/", 1)[-1].endswith(":latest"):
        raise ValueError("latest")
    return value


# A container image pinned by tag (any tag but latest) or by digest.
Image = Annotated[StrictStr, Field(pattern=r"^[A-Za-z0-9][A-Za-z0-9._/:-]*(:[A-Za-z0-9_][A-Za-z0-9._-]{0,127}"
                                           r"|@sha256:[0-9a-f]{64})$"),
                  AfterValidator(_pinned),
                  explained("{value!r} is not a pinned image reference (name:tag with a tag other than latest, "
                            "or name@sha256:digest)")]
FilePath = Annotated[Path, BeforeValidator(_path)]
# An absolute folder on a host, plain enough to go into an SLA, a mount and a shell line unquoted.
HostPath = Annotated[StrictStr, Field(pattern=r"^(/[A-Za-z0-9._-]+)+$"), AfterValidator(_no_dot_parts),
                     explained("{value!r} must be an absolute path of letters, digits, '.', '_', '-' and '/' without "
                               "'.' or '..' parts")]


def at_least(low: int, unit: str = "") -> Any:
    """An integer of at least ``low``: ``expected at least 1 second, got 0``."""
    return Annotated[StrictInt, Field(ge=low), explained(f"expected at least {low}{unit}, got {{value!r}}")]


def between(low: int, high: int) -> Any:
    """An integer from ``low`` to ``high``: ``expected 1-254, got 255``."""
    return Annotated[StrictInt, Field(ge=low, le=high), explained(f"expected {low}-{high}, got {{value!r}}")]


Positive = at_least(1)
Seconds = at_least(1, " second")


@cache
def _adapter(kind: Any) -> TypeAdapter:
    return TypeAdapter(kind)


def problem(kind: Any, value: Any) -> str | None:
    """What is wrong with ``value`` as a ``kind`` (one of the types above), or None when it is one."""
    try:
        _adapter(kind).validate_python(value)
    except ValidationError as exc:
        error = exc.errors()[0]
        if error["type"] == RULE_ERROR:
            return error["msg"]
        return f"{value!r} is a {type(value).__name__}, not a value of this kind"
    return None


def read(kind: Any, value: Any) -> Any:
    """``value`` as a ``kind`` (``10GB`` as a Size: 10000000000); check it with problem() first."""
    return _adapter(kind).validate_python(value)


# Sizes: a number of bytes, or a number with a unit (KB, MB, GB, TB: powers of 1000; KiB, MiB, GiB, TiB: of 1024).
SIZE_UNITS = {"": 1, "B": 1, "KB": 10**3, "MB": 10**6, "GB": 10**9, "TB": 10**12,
              "KIB": 2**10, "MIB": 2**20, "GIB": 2**30, "TIB": 2**40}


def _bytes(value: Any) -> Any:
    """``10GB``, ``500 MiB``, ``0`` or a plain number of bytes as an integer; 'none' is 0 (no limit)."""
    if isinstance(value, bool) or not isinstance(value, (int, str)):
        return value  # the strict integer check reports the type
    if isinstance(value, int):
        return value
    text = value.strip().upper().replace(" ", "")
    if text == "NONE":
        return 0
    number = text.rstrip("BKMGTI")
    unit = text[len(number):]
    if not number.isdigit() or unit not in SIZE_UNITS:
        raise PydanticCustomError(RULE_ERROR, f"expected a size such as 10GB, 500MB or 0 (no limit), got {value!r}")
    return int(number) * SIZE_UNITS[unit]


def size_text(size: int) -> str:
    """A size as people read it: 9.5 GB, 120 MB, 512 B (powers of 1000, as the configuration's GB)."""
    for unit, factor in (("TB", 10**12), ("GB", 10**9), ("MB", 10**6), ("KB", 10**3)):
        if size >= factor:
            return f"{size / factor:.1f} {unit}".replace(".0 ", " ")
    return f"{size} B"


Size = Annotated[StrictInt, BeforeValidator(_bytes), Field(ge=0),
                 explained("expected a size such as 10GB, 500MB or 0 (no limit), got {value!r}")]
