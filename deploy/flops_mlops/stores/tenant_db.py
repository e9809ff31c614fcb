"""Each tenant's database and user, defined once: the SQL template stores/templates/tenants.sql.j2.

Every target runs the statements it renders: `flops-mlops up` one by one through pymysql (stores/mysql.py),
pyinfra as a 0600 file fed to the mysql client (deploy/pyinfra/tasks/backend_store.py), and a MySQL
container on its first start: compose's deploy/compose/backend-store/initdb.d/ script and the Oakestra stores
cmd (sla_templates/stores.json.j2), which fill in the passwords from their environment (never from a command
line), so this module writes their shell commands too.

Names are validated before anything is rendered; passwords are quoted as SQL string literals.
"""

from __future__ import annotations

import re
import shlex
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import jinja2

from ..configuration import certificates
from ..configuration.schema import ConfigError
from ..configuration.secrets import Secrets, db_password_key
from ..configuration.stack import StackConfig
from ..configuration.tracking import Tenant

# Database and user names derived from tenant ids (mlflow_<id>): plain identifiers, nothing to quote.
NAME_PATTERN = re.compile(r"^[a-z][a-z0-9_]{0,63}$")
# What a container accepts as a password from its environment: URL-safe (`flops-mlops secrets init`).
URL_SAFE = "A-Za-z0-9_-"
ENV_KEY_PATTERN = re.compile(r"^[A-Z][A-Z0-9_]*$")
AUTH_SUFFIX = "_auth"  # the auth database's name: <database>_auth (tracking/auth_store.py)
_MARK = "\x00"  # around an environment variable's name while the SQL becomes a printf format


@dataclass(frozen=True)
class FromEnvironment:
    """A password a container fills in at its first start, from its environment variable ``key``."""

    key: str

    def __post_init__(self) -> None:
        if not ENV_KEY_PATTERN.fullmatch(self.key):
            raise ConfigError(f"tenants.sql: {self.key!r} is not an environment variable name")


@dataclass(frozen=True)
class TenantDB:
    """One tenant's database, its user and the user's password (the user also owns the auth database);
    ``require_ssl``: the user logs in over TLS only."""

    database: str
    user: str
    password: str | FromEnvironment
    require_ssl: bool = False

    def __post_init__(self) -> None:
        for what, value in (("database", self.database), ("user", self.user), ("auth database", self.auth_database)):
            _check_name(what, value)
        if not isinstance(self.password, (str, FromEnvironment)):
            raise ConfigError(f"tenants.sql: password of {self.user}: expected a string")

    @property
    def auth_database(self) -> str:
        """MLflow's basic-auth users and grants (tracking/auth_store.py)."""
        return f"{self.database}{AUTH_SUFFIX}"

    @classmethod
    def of(cls, tenant: Tenant, password: str | FromEnvironment, require_ssl: bool = False) -> "TenantDB":
        return cls(tenant.database, tenant.db_user, password, require_ssl)


def _check_name(what: str, value: object) -> str:
    if not isinstance(value, str) or not NAME_PATTERN.fullmatch(value):
        raise ConfigError(f"tenants.sql: {what} {value!r} is not a plain name (a lowercase letter, then lowercase "
                          "letters, digits or _; at most 64)")
    return value


def sql_literal(value: str) -> str:
    """``value`` as a MySQL/MariaDB string literal, quotes and backslashes (and control characters) escaped."""
    escaped = (value.replace("\\", "\\\\").replace("'", "''").replace("\0", "\\0").replace("\n", "\\n")
               .replace("\r", "\\r").replace("\x1a", "\\Z"))
    return f"'{escaped}'"


def sql_name(value: str) -> str:
    """A validated database name, quoted as an identifier."""
    return f"`{_check_name('name', value)}`"


def sql_string(value: str | FromEnvironment) -> str:
    if isinstance(value, FromEnvironment):
        return f"'{_MARK}{value.key}{_MARK}'"
    return sql_literal(value)


_TEMPLATES = jinja2.Environment(
    loader=jinja2.PackageLoader("flops_mlops.stores", "templates"), undefined=jinja2.StrictUndefined,
    keep_trailing_newline=True, autoescape=False, trim_blocks=True, lstrip_blocks=True)
_TEMPLATES.filters.update(sql_name=sql_name, sql_string=sql_string)


def render(tenants: Sequence[TenantDB]) -> str:
    """The SQL that creates (or brings in line) every tenant's database and user; safe to run again."""
    return _TEMPLATES.get_template("tenants.sql.j2").render(tenants=[_checked(t) for t in tenants])


def _checked(tenant: TenantDB) -> TenantDB:
    if not isinstance(tenant, TenantDB):
        raise ConfigError(f"tenants.sql: expected a TenantDB, got {tenant!r}")
    return tenant


def statements(sql: str) -> list[str]:
    """The statements of rendered SQL, for a client that takes one at a time (pymysql).

    Literals never hold a line break (sql_literal escapes it), so a ";" at the end of a line ends a statement.
    """
    found, current = [], []
    for line in sql.splitlines():
        if not current and (not line.strip() or line.lstrip().startswith("--")):
            continue
        current.append(line)
        if line.rstrip().endswith(";"):
            found.append("\n".join(current).rstrip()[:-1])
            current = []
    if current:
        raise ConfigError(f"tenants.sql: statement not ended by ';': {' '.join(current)[:80]}")
    return found


def for_config(config: StackConfig, password: Callable[[Tenant], str | FromEnvironment],
               require_ssl: bool = False) -> list[TenantDB]:
    return [TenantDB.of(tenant, password(tenant), require_ssl) for tenant in config.tenants]


def with_secrets(config: StackConfig, secrets: Secrets) -> list[TenantDB]:
    """The configuration's tenants with their passwords from the secrets file (native stack, pyinfra); their
    users REQUIRE SSL when backend_store.tls is on."""
    return for_config(config, lambda tenant: secrets.db_password(tenant.id), certificates.mysql_tls(config))


def from_environment(config: StackConfig, require_ssl: bool = False) -> list[TenantDB]:
    """The configuration's tenants with the passwords a container reads from FLOPS_TENANT_<ID>_DB_PASSWORD;
    ``require_ssl``: their users log in over TLS only (compose with backend_store.tls)."""
    return for_config(config, lambda tenant: FromEnvironment(db_password_key(tenant.id)), require_ssl)


def shell_commands(tenants: Sequence[TenantDB]) -> tuple[list[str], str]:
    """POSIX sh for a container's first start: checks that each password variable holds a URL-safe password
    (so nothing in it can end the SQL literal), and a printf that writes the rendered SQL to stdout with the
    passwords filled in from the environment (printf is a shell builtin: no password reaches a command line).
    """
    sql = render(tenants)
    keys = re.findall(f"{_MARK}([A-Z0-9_]+){_MARK}", sql)
    fmt = re.sub(f"{_MARK}[A-Z0-9_]+{_MARK}", "%s", sql.replace("\\", "\\\\").replace("%", "%%"))
    checks = []
    for key in dict.fromkeys(keys):
        checks.append(f"case \"${key}\" in ''|*[!{URL_SAFE}]*) echo \"tenants.sql: {key} must be a URL-safe "
                      f"password (letters, digits, - and _)\" >&2; exit 2;; esac")
    printf = " ".join(["printf", "--", shlex.quote(fmt), *(f'"${key}"' for key in keys)])
    return checks, printf


def initdb_script(config: StackConfig, label: str) -> str:
    """A script for the MySQL image's /docker-entrypoint-initdb.d/ (compose's backend-store), sourced by its
    entrypoint on the first start: every tenant's statements, passwords from FLOPS_TENANT_<ID>_DB_PASSWORD."""
    checks, printf = shell_commands(from_environment(config, certificates.mysql_tls(config)))
    lines = [
        "# Generated from deploy/flops_mlops/stores/templates/tenants.sql.j2 for",
        f"# {label} (tenants: {', '.join(t.id for t in config.tenants)}) by",
        f"#     flops-mlops --config {label} render --target compose",
        "# Do not edit.",
        "# The MySQL image's entrypoint sources it on an empty data directory, ours again on every later start",
        "# (FLOPS_RERUN_ON_START): every tenant's database (utf8mb4, binary NO PAD collation) and user, the",
        "# passwords from this container's environment, never from argv.",
        "if ! command -v docker_process_sql >/dev/null 2>&1; then",
        "    # Executed rather than sourced: talk to the first-start server over its socket as root.",
        "    docker_process_sql() { MYSQL_PWD=\"$MYSQL_ROOT_PASSWORD\" mysql --protocol=socket -uroot \"$@\"; }",
        "fi",
        *checks,
        f"{printf} | docker_process_sql --database=mysql",
        "echo \"10-flops-tenants.sh: databases and users of tenants "
        f"{', '.join(t.id for t in config.tenants)} are in place\"",
    ]
    return "\n".join(lines) + "\n"
