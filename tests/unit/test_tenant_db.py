"""One tenant-provisioning definition: the SQL template (stores/tenant_db.py) and the FTP users' routine
(stores/ftp_users.py), and the same statements reaching all four targets.

Adding a tenant to the configuration adds that tenant's parts to all four targets and changes nothing else.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
import yaml
from conftest import ROOT
from flops_mlops.compose import render as compose
from flops_mlops.configuration import loading as config_module
from flops_mlops.configuration.schema import ConfigError
from flops_mlops.configuration.secrets import Secrets, db_password_key, required_keys
from flops_mlops.native.stack import Stack
from flops_mlops.oakestra import sla
from flops_mlops.stores import ftp_users, mysql, tenant_db
from flops_mlops.tracking.server import server_argv

PYINFRA_DIR = ROOT / "deploy" / "pyinfra"
if str(PYINFRA_DIR) not in sys.path:
    sys.path.insert(0, str(PYINFRA_DIR))  # pyinfra's tasks, as its deploy.py imports them (test_pyinfra_render.py too)
PASSWORDS = {"acme": "acme-db_1", "globex": "Globex-2"}


def load_config(tmp_path: Path, add_tenant: str | None = None, tls: bool = True):
    """configs/oakestra.yaml (tenants acme and globex, every target's settings) with its secrets; with
    ``add_tenant``, plus that tenant (and its Oakestra slot), as a user would add it; ``tls``: false turns
    tracking.tls and artifact_store.tls off (no certificates are made here, and pyinfra's facts read them)."""
    data = yaml.safe_load((ROOT / "configs" / "oakestra.yaml").read_text())
    data["tracking"]["tls"] = data["artifact_store"]["tls"] = tls
    passwords = dict(PASSWORDS)
    if add_tenant:
        data["tenants"].append({"id": add_tenant})
        data["oakestra"]["tenants"].append({"id": add_tenant, "slot": len(data["oakestra"]["tenants"]) + 1})
        passwords[add_tenant] = f"{add_tenant}-db_3"
    tmp_path.mkdir(parents=True, exist_ok=True)
    data["state_dir"] = str(tmp_path / "state")
    data["secrets_file"] = str(tmp_path / "secrets.env")
    path = tmp_path / "stack.yaml"
    path.write_text(yaml.safe_dump(data, sort_keys=False))
    config = config_module.load(path)
    values = {key: key.lower().replace("_", "-") for key in required_keys(config)}  # any other secret
    values.update({"FLOPS_MYSQL_ADMIN_PASSWORD": "admin-pass",
                   **{db_password_key(tenant_id): password for tenant_id, password in passwords.items()}})
    return config, Secrets(config.secrets_file, values)


# --- the SQL template -------------------------------------------------------------------------------------


def test_one_template_names_a_binary_no_pad_collation_for_each_server(tmp_path):
    """The collation clause carries one choice per server in versioned comments: MariaDB runs /*M! ... */
    and skips /*!80000 ... */; MySQL 8 does the opposite. What MariaDB makes of it is checked against running
    servers (our backend-store image in tests/compose, Debian's MariaDB natively and on the pyinfra hosts: the
    databases report utf8mb4_nopad_bin). No MySQL 8 server runs in the tests: its branch is documented, untested."""
    config, secrets = load_config(tmp_path)
    sql = tenant_db.render(tenant_db.with_secrets(config, secrets))
    collation = "/*M! utf8mb4_nopad_bin */ /*!80000 utf8mb4_0900_bin */"
    for tenant in config.tenants:
        for verb in ("CREATE DATABASE IF NOT EXISTS", "ALTER DATABASE"):
            assert f"{verb} `{tenant.database}` CHARACTER SET utf8mb4 COLLATE {collation};" in sql
        assert (f"CREATE USER IF NOT EXISTS '{tenant.db_user}'@'%' IDENTIFIED BY '{PASSWORDS[tenant.id]}' "
                "REQUIRE SSL;" in sql)  # backend_store.tls is on by default
        assert f"ALTER USER '{tenant.db_user}'@'%' IDENTIFIED BY '{PASSWORDS[tenant.id]}' REQUIRE SSL;" in sql
        assert f"GRANT ALL PRIVILEGES ON `{tenant.database}`.* TO '{tenant.db_user}'@'%';" in sql
    without_tls = tenant_db.render(tenant_db.for_config(config, lambda t: secrets.db_password(t.id)))
    assert "REQUIRE SSL" not in without_tls and without_tls.count("REQUIRE NONE;") == 2 * len(config.tenants)


@pytest.mark.parametrize("tenant_id", ["acme`; DROP DATABASE mysql; --", "acme'@'%", "a b", "ACME", "acme\n"])
def test_an_injection_attempt_in_a_tenant_id_is_refused_before_rendering(tmp_path, monkeypatch, tenant_id):
    def no_rendering(*args, **kwargs):
        raise AssertionError("rendered")

    monkeypatch.setattr(tenant_db._TEMPLATES, "get_template", no_rendering)
    for database, user in ((f"mlflow_{tenant_id}", "mlflow_acme"), ("mlflow_acme", f"mlflow_{tenant_id}")):
        with pytest.raises(ConfigError, match="is not a plain name"):
            tenant_db.render([tenant_db.TenantDB(database, user, "pw")])
    with pytest.raises(ConfigError, match="is not a plain name"):
        tenant_db.sql_name(f"mlflow_{tenant_id}")
    # And the configuration refuses such a tenant id when it is loaded.
    path = tmp_path / "stack.yaml"
    path.write_text(yaml.safe_dump({"name": "t", "state_dir": str(tmp_path / "state"), "tenants": [{"id": tenant_id}]}))
    with pytest.raises(ConfigError):
        config_module.load(path)


def test_passwords_are_quoted_as_sql_string_literals():
    sql = tenant_db.render([tenant_db.TenantDB("mlflow_acme", "mlflow_acme", "it's\\odd;\nDROP")])
    assert "IDENTIFIED BY 'it''s\\\\odd;\\nDROP' REQUIRE NONE;" in sql
    statements = tenant_db.statements(sql)
    assert len(statements) == 8 and all(";" not in s.replace("odd;", "") for s in statements)


def test_statements_are_the_template_without_comments():
    sql = tenant_db.render([tenant_db.TenantDB("mlflow_acme", "mlflow_acme", "pw")])
    statements = tenant_db.statements(sql)
    assert [s.split(" `")[0].split(" '")[0] for s in statements] == [
        "CREATE DATABASE IF NOT EXISTS", "ALTER DATABASE", "CREATE USER IF NOT EXISTS", "ALTER USER",
        "GRANT ALL PRIVILEGES ON", "CREATE DATABASE IF NOT EXISTS", "ALTER DATABASE", "GRANT ALL PRIVILEGES ON"]
    # The second database holds MLflow's users and grants (tracking/auth_store.py): the tenant's user only.
    assert statements[-1] == "GRANT ALL PRIVILEGES ON `mlflow_acme_auth`.* TO 'mlflow_acme'@'%'"
    assert not any(s.lstrip().startswith("--") for s in statements)


def test_a_container_refuses_a_password_that_is_not_url_safe(tmp_path):
    checks, printf = tenant_db.shell_commands([tenant_db.TenantDB(
        "mlflow_acme", "mlflow_acme", tenant_db.FromEnvironment("FLOPS_TENANT_ACME_DB_PASSWORD"))])
    script = "; ".join([*checks, f"{printf} > {tmp_path / 'out.sql'}"])
    for bad in ("x'; DROP DATABASE mysql; --", "", "a b", "a\\b", "%s"):
        result = subprocess.run(["sh", "-c", script], env={"FLOPS_TENANT_ACME_DB_PASSWORD": bad, "PATH": "/usr/bin:/bin"},
                                capture_output=True, text=True)
        assert result.returncode == 2 and "must be a URL-safe password" in result.stderr, bad
        assert not (tmp_path / "out.sql").exists()


# --- the same statements on every target ------------------------------------------------------------------


def _native(config, secrets, tmp_path, monkeypatch) -> list[str]:
    """`flops-mlops up`: what provision_tenants executes through pymysql."""
    executed = []

    class Cursor:
        def __enter__(self):
            return self

        def __exit__(self, *exc):
            return False

        def execute(self, statement, args=None):
            assert args is None
            executed.append(statement)

    class Connection(Cursor):
        def cursor(self):
            return Cursor()

    monkeypatch.setattr(mysql.AdminConnection, "connect", lambda self, password=None, database=None: Connection())
    mysql.provision_tenants(mysql.AdminConnection("127.0.0.1", 3306, "root", "admin-pass"), config, secrets)
    return executed


def _host_settings(config, secrets):
    """pyinfra's view of a host with every role (its tasks are imported from deploy/pyinfra)."""
    from tasks.settings import HostSettings

    return HostSettings(config=config, secrets=secrets, mode="native", root="", install_packages=False,
                        service_user="flops-mlops", venv="/opt/venv", manage_venv=False, tracking_packages=())


def _pyinfra(config, secrets, tmp_path, monkeypatch) -> list[str]:
    """pyinfra: the tenants.sql file the backend store role writes (after its admin account statements)."""
    from pyinfra.api.util import get_template
    from tasks import backend_store
    from tasks.settings import TEMPLATES, TRIM

    s = _host_settings(config, secrets)
    text = get_template(str(TEMPLATES / "tenants.sql.j2"), jinja_env_kwargs=dict(TRIM)).render(
        **backend_store.tenants_data(s))
    statements = tenant_db.statements(text)
    admin = [s for s in statements if "'root'@'localhost'" in s or "''@'localhost'" in s]
    assert len(admin) == 4 and statements[:4] == admin
    return statements[4:]


def _shell_env(secrets: Secrets) -> dict[str, str]:
    return {"PATH": "/usr/bin:/bin", **{k: v for k, v in secrets.values.items() if k.endswith("_DB_PASSWORD")}}


def _oakestra(config, secrets, tmp_path, monkeypatch) -> list[str]:
    """Oakestra: the file the stores' mysql cmd writes into /docker-entrypoint-initdb.d (run here by sh)."""
    service = next(s for r in sla.render_all(config) if r.application_name == "stores"
                   for s in r.document["applications"][0]["microservices"] if s["microservice_name"] == "mysql")
    shell, flag, script = service["cmd"]
    out = tmp_path / "10-flops-tenants.sql"
    script = (script.replace(sla.MYSQL_INIT_FILE, str(out)).replace(f"chown mysql:mysql {out}", "true")
              .replace("exec docker-entrypoint.sh mysqld", "true"))
    subprocess.run([shell, flag, script], env=_shell_env(secrets), check=True)
    return tenant_db.statements(out.read_text())


def _compose(config, secrets, tmp_path, monkeypatch) -> list[str]:
    """compose: the initdb.d script as the MySQL image's entrypoint sources it (docker_process_sql: its helper)."""
    initdb = next(item for item in compose.render(config, tmp_path) if item.path == compose.INITDB_FILE)
    script = tmp_path / "10-flops-tenants.sh"
    script.write_text(initdb.text)
    out = tmp_path / "compose.sql"
    subprocess.run(["bash", "-c", f'set -eo pipefail; docker_process_sql() {{ cat > {out}; }}; . {script}'],
                   env=_shell_env(secrets), check=True, capture_output=True)
    return tenant_db.statements(out.read_text())


@pytest.mark.parametrize("target", [_native, _pyinfra, _oakestra, _compose],
                         ids=["native", "pyinfra", "oakestra", "compose"])
def test_the_same_statements_reach_every_target(tmp_path, monkeypatch, target):
    config, secrets = load_config(tmp_path)
    # Oakestra's MySQL has no TLS yet: the same statements with REQUIRE NONE there.
    tls = target in (_native, _pyinfra, _compose)
    expected = tenant_db.statements(tenant_db.render(
        tenant_db.for_config(config, lambda t: secrets.db_password(t.id), require_ssl=tls)))
    assert len(expected) == 8 * len(config.tenants)
    assert target(config, secrets, tmp_path, monkeypatch) == expected


# --- adding a tenant ---------------------------------------------------------------------------------------


def _flatten(value, path: str = ""):
    """``path=value`` facts of a document; list items named by their service or application name."""
    if isinstance(value, dict):
        for key, item in value.items():
            if key == "cmd" and path.endswith("[mysql]"):
                continue  # the stores' init script: compared statement by statement
            yield from _flatten(item, f"{path}.{key}" if path else str(key))
    elif isinstance(value, list):
        for item in value:
            name = isinstance(item, dict) and (item.get("microservice_name") or item.get("application_name"))
            yield from _flatten(item, f"{path}[{name}]" if name else f"{path}[]")
    elif isinstance(value, str) and path.endswith("FLOPS_FTP_USERS"):
        yield from (f"{path}[]={word}" for word in value.split())
    else:
        yield f"{path}={value}"


def _native_facts(config, secrets, tmp_path, monkeypatch) -> set[str]:
    services = {f"service {s.name} {s.kind} {s.address}" for s in Stack(config).services()}
    return services | {f"tenant {t.id}: {' '.join(server_argv(config, t))}" for t in config.tenants}


def _pyinfra_facts(config, secrets, tmp_path, monkeypatch) -> set[str]:
    from tasks import tracking_server

    s = _host_settings(config, secrets)
    facts = set()
    for tenant in config.tenants:
        service = tracking_server.service(s, tenant)
        facts |= {f"{service.name} {' '.join(service.argv)}", *(f"{service.name} {k}={v}" for k, v in
                                                                 tracking_server.environment(s, config, tenant).items())}
    return facts


def _oakestra_facts(config, secrets, tmp_path, monkeypatch) -> set[str]:
    return set(_flatten({item.application_name: item.document for item in sla.render_all(config)}))


def _compose_facts(config, secrets, tmp_path, monkeypatch) -> set[str]:
    rendered = next(item for item in compose.render(config, tmp_path) if item.path == compose.COMPOSE_FILE)
    document = yaml.safe_load(rendered.text)
    return set(_flatten({"services": document["services"], "volumes": document["volumes"]}))


@pytest.mark.parametrize("statements, facts", [(_native, _native_facts), (_pyinfra, _pyinfra_facts),
                                               (_oakestra, _oakestra_facts), (_compose, _compose_facts)],
                         ids=["native", "pyinfra", "oakestra", "compose"])
def test_adding_a_tenant_adds_its_parts_to_every_target_and_changes_nothing_else(tmp_path, monkeypatch,
                                                                                   statements, facts):
    tls = statements is not _pyinfra
    before_config, before_secrets = load_config(tmp_path / "before", tls=tls)
    after_config, after_secrets = load_config(tmp_path / "after", add_tenant="initech", tls=tls)
    before = set(statements(before_config, before_secrets, tmp_path / "before", monkeypatch))
    after = set(statements(after_config, after_secrets, tmp_path / "after", monkeypatch))
    # The same statements for the tenants there were, and the new tenant's database, user and grant.
    assert before < after
    assert {s for s in after - before if "initech" in s} == after - before
    assert any("CREATE DATABASE IF NOT EXISTS `mlflow_initech`" in s for s in after - before)
    # What runs: everything of the earlier tenants unchanged, plus parts that belong to the new tenant only.
    seen_before = facts(before_config, before_secrets, tmp_path / "before", monkeypatch)
    seen_after = facts(after_config, after_secrets, tmp_path / "after", monkeypatch)
    old = {fact.replace(str(tmp_path / "before"), "<dir>") for fact in seen_before}
    new = {fact.replace(str(tmp_path / "after"), "<dir>") for fact in seen_after}
    assert old <= new, sorted(old - new)[:5]
    added = new - old
    assert added and all(re.search("initech", fact, re.IGNORECASE) for fact in added), \
        [fact for fact in added if not re.search("initech", fact, re.IGNORECASE)][:5]


# --- the FTP users' routine -------------------------------------------------------------------------------


def test_ftp_folders_owners_and_modes():
    found = {f.path: (f.mode, f.owner) for f in ftp_users.folders("/h", "/e", "/ftp", ["flops_acme"], "ftp")}
    assert found == {"/h": (0o700, None), "/e": (0o711, None), "/ftp": (0o711, None),
                     "/ftp/flops_acme": (0o700, "ftp"), "/ftp/flops_acme/artifacts": (0o700, "ftp")}
    with pytest.raises(ValueError):
        ftp_users.folders("/h", "/e", "/ftp", ["../etc"], "ftp")


def test_ftp_password_hash_on_stdin_and_salts_kept(monkeypatch):
    calls = []
    real_run = subprocess.run

    def run(argv, **kwargs):
        calls.append((argv, kwargs.get("input")))
        return real_run(argv, **kwargs)

    monkeypatch.setattr(ftp_users.subprocess, "run", run)
    first = ftp_users.passwd_text([("flops_acme", "s3cret-pw")])
    assert not any("s3cret-pw" in " ".join(argv) for argv, _ in calls)
    assert calls[0][1] == "s3cret-pw\n"
    assert re.fullmatch(r"flops_acme:\$6\$[A-Za-z0-9./]{16}\$\S+\n", first)
    assert ftp_users.passwd_text([("flops_acme", "s3cret-pw")], first) == first
    changed = ftp_users.passwd_text([("flops_acme", "other")], first)
    assert changed != first and changed.split("$")[2] == first.split("$")[2]


def test_ftp_users_command_writes_the_password_file_and_folders(tmp_path):
    """What the artifact-store image's entrypoint runs (owner: this test's own account)."""
    import pwd

    owner = pwd.getpwuid(os.getuid()).pw_name
    home, empty, root = tmp_path / "run", tmp_path / "run-empty", tmp_path / "ftp"
    result = subprocess.run([sys.executable, str(Path(ftp_users.__file__)), "--home", str(home), "--empty", str(empty),
                             "--ftp-root", str(root), "--owner", owner, "--user", "flops_default=THE_PASSWORD"],
                            env={"PATH": os.environ["PATH"], "THE_PASSWORD": "pw-1"}, capture_output=True, text=True)
    assert result.returncode == 0, result.stderr
    modes = {p: oct(p.stat().st_mode & 0o777) for p in (home, empty, root, root / "flops_default",
                                                        root / "flops_default" / "artifacts", home / "passwd")}
    assert modes == {home: "0o700", empty: "0o711", root: "0o711", root / "flops_default": "0o700",
                     root / "flops_default" / "artifacts": "0o700", home / "passwd": "0o600"}
    assert (home / "passwd").read_text().startswith("flops_default:$6$")
    missing = subprocess.run([sys.executable, str(Path(ftp_users.__file__)), "--home", str(home), "--empty",
                              str(empty), "--ftp-root", str(root), "--owner", owner, "--user", "flops_x=UNSET"],
                             env={"PATH": os.environ["PATH"]}, capture_output=True, text=True)
    assert missing.returncode == 2 and "no password" in missing.stderr
