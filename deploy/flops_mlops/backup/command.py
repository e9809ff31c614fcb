"""`flops-mlops backup` and `flops-mlops restore`: one archive per tenant (archive.py), and back (docs/backup.md).

Backup order: the tracking database first (one consistent snapshot), the auth database, then every file of the
tenant's FTP folder. A model version is registered only after its files are uploaded, so every version the dump
names has its files in the archive, even while a round is logging.

Restore order: the whole archive is extracted into a private folder and checked against its manifest first (a
damaged archive changes nothing, exit 2); a tenant that has data is refused unless --force (exit 2: nothing
changed); then the tenant's tracking server is stopped (by its recorded pid), its tracking database, auth
database and artifacts replaced, and the server started again, which brings an older schema up to date first.
"""

from __future__ import annotations

import argparse
import os
import shutil
import sys
import tempfile
import time
from pathlib import Path

from packaging.version import Version

from ..configuration.accounts import tenant_account
from ..configuration.schema import ConfigError
from ..configuration.secrets import Secrets
from ..configuration.stack import StackConfig
from ..configuration.tracking import Tenant
from ..processes import StackError, private_dir
from ..tracking import schema
from ..stores import mysql
from ..tracking.server import TrackingServer, auth_db_path, backend_store_uri, sqlite_path
from ..tracking.users import project_user, serving_user
from . import archive, artifacts, databases

# What makes a tenant "have data": everything but what a fresh deployment makes by itself, which is the Default
# experiment (id 0), the admin and, for each FL project the deployment declares (compose, Oakestra), the users
# fl-<project> and serve-<project> with the project's experiment and registered model while they are empty
# (tracking/users.py re-creates and re-keys those at every start). Each query gives (name, how much it holds).
TRACKING_DATA = {
    "runs": ("runs", "SELECT run_uuid, 1 FROM runs"),
    "experiments": ("experiments", "SELECT e.name, COUNT(r.run_uuid) FROM experiments e LEFT JOIN runs r "
                                   "ON r.experiment_id = e.experiment_id WHERE e.experiment_id <> 0 GROUP BY e.name"),
    "registered models": ("registered_models", "SELECT m.name, COUNT(v.version) FROM registered_models m LEFT JOIN "
                                               "model_versions v ON v.name = m.name GROUP BY m.name"),
    "logged models": ("logged_models", "SELECT model_id, 1 FROM logged_models"),
}
AUTH_DATA = {"users besides admin": ("users", "SELECT username, 1 FROM users WHERE username <> 'admin'")}
DEPLOYMENT_USER_PREFIXES = (project_user(""), serving_user(""))  # the names tracking/users.py gives them


def data_counts(found: dict[str, list[tuple]]) -> dict[str, int]:
    """The rows ``TRACKING_DATA`` and ``AUTH_DATA`` found -> how many of each hold data (see above)."""
    users = [name for name, _ in found.get("users besides admin", [])]
    projects = {name.removeprefix(prefix) for name in users for prefix in DEPLOYMENT_USER_PREFIXES
                if name.startswith(prefix)}
    made = {f"{prefix}{project}" for project in projects for prefix in DEPLOYMENT_USER_PREFIXES}
    counts = {"users besides admin": len([name for name in users if name not in made])}
    for name, held in found.items():
        if name != "users besides admin":
            counts[name] = len([row for row in held if row[0] not in projects or row[1]])
    return counts


def _progress(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


def add_parsers(commands, load_config) -> None:
    backup = commands.add_parser(
        "backup", help="write one archive per tenant: its databases, then its artifacts (mode 0600)",
        description="Write one tar archive per tenant into DIR (mode 0600): a consistent dump of the tenant's "
                    "tracking database (mariadb-dump --single-transaction, or SQLite's backup API), its auth "
                    "database (users and grants), then every file of its FTP folder, with a manifest (sizes, "
                    "sha256, MLflow version, schema revisions, time). The stack keeps running; progress goes to "
                    "stderr, the archive's path to stdout. See docs/backup.md.")
    which = backup.add_mutually_exclusive_group(required=True)
    which.add_argument("--tenant", help="tenant id")
    which.add_argument("--all", action="store_true", help="every tenant of the configuration")
    backup.add_argument("--out", required=True, type=Path, metavar="DIR", help="folder for the archives (made 0700)")
    backup.set_defaults(handler=lambda args: backup_command(load_config(args), args))

    restore = commands.add_parser(
        "restore", help="put a tenant's backup archive back: databases, users and grants, artifacts",
        description="Check FILE against its manifest (every size and sha256) before anything changes; then stop "
                    "the tenant's tracking server, replace its tracking database, auth database and FTP folder "
                    "with the archive's, and start the server again (an older schema is upgraded first). The "
                    "stores must be up (`up`). A tenant that already has runs, experiments, models, users or "
                    "artifacts is refused unless --force. Exit 2: bad archive, wrong tenant, or refused; nothing "
                    "was changed. See docs/backup.md.")
    restore.add_argument("--tenant", required=True, help="tenant id (must be the archive's)")
    restore.add_argument("file", type=Path, metavar="FILE", help="archive written by `flops-mlops backup`")
    restore.add_argument("--force", action="store_true", help="replace the tenant's existing data")
    restore.set_defaults(handler=lambda args: restore_command(load_config(args), args))


# --- backup ---------------------------------------------------------------------------------------------------

def backup_command(config: StackConfig, args: argparse.Namespace) -> int:
    tenants = list(config.tenants) if args.all else [config.tenant(args.tenant)]
    secrets = Secrets.load(config)
    if args.out.exists() and not args.out.is_dir():
        raise ConfigError(f"--out: {args.out} exists and is not a folder")
    private_dir(args.out)
    for tenant in tenants:
        path = backup_tenant(config, tenant, secrets, args.out, _progress)
        print(path)
    return 0


def backup_tenant(config: StackConfig, tenant: Tenant, secrets: Secrets, out: Path, progress) -> Path:
    started = time.time()
    staging = Path(tempfile.mkdtemp(prefix=f".flops-backup-{tenant.id}-", dir=out))
    try:
        (staging / "db").mkdir(mode=0o700)
        say = lambda text: progress(f"tenant {tenant.id}: {text}")  # noqa: E731
        uri = backend_store_uri(config, tenant, secrets)
        if config.backend_store.kind == "mysql":
            revision = schema.revision(uri)
            say("dumping the tracking database (mariadb-dump --single-transaction)")
            databases.dump_mysql(config, tenant, secrets, staging / archive.TRACKING_SQL)
        else:
            say("copying the tracking database (SQLite backup API)")
            databases.copy_sqlite(sqlite_path(config, tenant), staging / archive.TRACKING_SQLITE)
            revision = schema.revision(f"sqlite:///{staging / archive.TRACKING_SQLITE}")
        if config.backend_store.kind == "mysql":
            say("dumping the auth database (users and grants; mariadb-dump --single-transaction)")
            databases.dump_mysql(config, tenant, secrets, staging / archive.AUTH_SQL, auth=True)
            auth_revision = schema.revision(auth_uri(config, tenant, secrets), schema.AUTH_VERSION_TABLE)
        else:
            say("copying the auth database (users and grants)")
            databases.copy_sqlite(auth_db_path(config, tenant), staging / archive.AUTH_SQLITE)
            auth_revision = schema.revision(f"sqlite:///{staging / archive.AUTH_SQLITE}", schema.AUTH_VERSION_TABLE)
        say(f"copying the artifacts ({config.artifact_store.kind} FTP, as {tenant.ftp_user})")
        artifacts.download(artifacts.repository(config, tenant, secrets), staging / archive.ARTIFACTS, say)
        manifest = {
            "format": archive.FORMAT, "tenant": tenant.id, "stack": config.name,
            "created": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(started)),
            "backend_store": config.backend_store.kind, "mlflow_version": schema.mlflow_version(),
            "schema_revision": revision,
            "auth_schema_revision": auth_revision}
        path = archive.write(staging, manifest, out / archive.archive_name(tenant.id, started))
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    say(f"wrote {path} ({path.stat().st_size / 2**20:.1f} MiB, mode 0600) in {time.time() - started:.0f} s")
    return path


# --- restore --------------------------------------------------------------------------------------------------

def restore_command(config: StackConfig, args: argparse.Namespace) -> int:
    tenant = config.tenant(args.tenant)
    if not args.file.is_file():
        raise ConfigError(f"{args.file}: no such archive")
    secrets = Secrets.load(config)
    with tempfile.TemporaryDirectory(prefix="flops-restore-") as folder:
        _progress(f"checking {args.file} (every size and sha256 of its manifest)")
        checked = archive.extract_checked(args.file, Path(folder))
        check_fits(config, tenant, checked, args.file)
        if not args.force:
            refuse_if_has_data(config, tenant, secrets)
        restore_tenant(config, tenant, secrets, checked, _progress)
    m = checked.manifest
    print(f"tenant {tenant.id}: restored the backup of {m['created']} (MLflow {m['mlflow_version']}, "
          f"{len(m['files'])} files) from {args.file}")
    return 0


def check_fits(config: StackConfig, tenant: Tenant, checked: archive.Checked, file: Path) -> None:
    """The archive belongs to this tenant, this kind of backend store, and an MLflow no newer than ours."""
    m = checked.manifest
    if m.get("tenant") != tenant.id:
        raise ConfigError(f"{file}: manifest.json: tenant: the archive holds tenant {m.get('tenant')!r}, not "
                          f"{tenant.id!r}; nothing was changed")
    if m.get("backend_store") != config.backend_store.kind:
        raise ConfigError(f"{file}: manifest.json: backend_store: the archive holds a {m.get('backend_store')} "
                          f"database, and {config.source} has backend_store.kind {config.backend_store.kind}; "
                          "nothing was changed")
    try:
        Version(str(m.get("mlflow_version")))
    except ValueError:
        raise ConfigError(f"{file}: manifest.json: mlflow_version: {m.get('mlflow_version')!r} is not a "
                          "version") from None
    # What decides is the data's schema, not the version that took the archive: `up` backs a tenant up before an
    # upgrade with the newer MLflow, and the roll-back restores that archive with the older one.
    revisions = (("tracking", m.get("schema_revision")), ("auth", m.get("auth_schema_revision")))
    unknown = [f"{which} {rev}" for which, rev in revisions if rev and schema.unknown_to_this_mlflow(which, str(rev))]
    if unknown:
        raise ConfigError(f"{file}: manifest.json: schema_revision: the archive's schema ({', '.join(unknown)}) is "
                          f"newer than MLflow {schema.mlflow_version()} knows (the archive was taken with MLflow "
                          f"{m['mlflow_version']}): install that version or newer first; nothing was changed")
    expected = archive.TRACKING_SQL if config.backend_store.kind == "mysql" else archive.TRACKING_SQLITE
    if checked.file(expected) is None:
        raise ConfigError(f"{file}: the archive lacks {expected}; nothing was changed")
    # With MySQL the auth database is a dump; an archive of an earlier release holds its SQLite file instead.
    auth = (archive.AUTH_SQL, archive.AUTH_SQLITE) if config.backend_store.kind == "mysql" else (archive.AUTH_SQLITE,)
    if all(checked.file(name) is None for name in auth):
        raise ConfigError(f"{file}: the archive lacks {' or '.join(auth)}; nothing was changed")


def tenant_data(config: StackConfig, tenant: Tenant, secrets: Secrets) -> dict[str, int]:
    """What the tenant holds now (counts that are not 0; TRACKING_DATA says what counts)."""
    rows: dict[str, list[tuple]] = {}
    if config.backend_store.kind == "mysql" or sqlite_path(config, tenant).exists():
        rows.update(databases.rows(backend_store_uri(config, tenant, secrets), TRACKING_DATA))
    if config.backend_store.kind == "mysql":
        rows.update(databases.rows(auth_uri(config, tenant, secrets), AUTH_DATA))
    elif auth_db_path(config, tenant).exists():
        rows.update(databases.rows(f"sqlite:///{auth_db_path(config, tenant)}", AUTH_DATA))
    found = data_counts(rows)
    found["artifact files"] = len(artifacts.files(artifacts.repository(config, tenant, secrets)))
    return {name: count for name, count in found.items() if count}


def refuse_if_has_data(config: StackConfig, tenant: Tenant, secrets: Secrets) -> None:
    held = tenant_data(config, tenant, secrets)
    if held:
        listed = ", ".join(f"{count} {name}" for name, count in held.items())
        raise ConfigError(f"tenant {tenant.id} already has data ({listed}); a restore replaces all of it: back it "
                          "up first, then add --force; nothing was changed")


def restore_tenant(config: StackConfig, tenant: Tenant, secrets: Secrets, checked: archive.Checked,
                   progress) -> None:
    say = lambda text: progress(f"tenant {tenant.id}: {text}")  # noqa: E731
    tracker = TrackingServer(config, tenant)
    was_running = tracker.process.is_running()
    # The tenant's own account (configuration/accounts.py), for a server to start or SQLite files to write; a
    # restore into MySQL and the FTP store alone (compose, pyinfra's stores, from any host) needs none.
    local_files = config.backend_store.kind != "mysql" or checked.file(archive.AUTH_SQL) is None
    account = tenant_account(config, tenant) if was_running or local_files else None
    if was_running and tracker.stop():
        say("tracking server stopped")
    try:
        _replace_data(config, tenant, secrets, checked, account, say)
    except StackError as exc:
        raise StackError(f"{exc}; tenant {tenant.id} is half restored and its tracking server is stopped: fix "
                         "that, then run the restore again with --force") from None
    if was_running:
        say("starting the tracking server (schema upgrade first)")
        tracker.start(secrets, account)
        tracker.wait_healthy(progress)
    else:
        say(f"no tracking server of tenant {tenant.id} runs here: start it again, which upgrades the schema first "
            f"(`flops-mlops --config {config.source} up` for a native stack; on compose `docker compose start "
            "tracking-server`)")


def _replace_data(config: StackConfig, tenant: Tenant, secrets: Secrets, checked: archive.Checked, account,
                  say) -> None:
    if config.backend_store.kind == "mysql":
        say("loading the tracking database (its tables are replaced)")
        databases.load_mysql(config, tenant, secrets, checked.file(archive.TRACKING_SQL))
    else:
        say("restoring the tracking database (SQLite)")
        _restore_sqlite(checked.file(archive.TRACKING_SQLITE), sqlite_path(config, tenant), account)
    if config.backend_store.kind == "mysql" and checked.file(archive.AUTH_SQL) is not None:
        say("loading the auth database (users and grants; its tables are replaced)")
        databases.load_mysql(config, tenant, secrets, checked.file(archive.AUTH_SQL), auth=True)
    elif config.backend_store.kind == "mysql":
        # An archive of a release that kept the logins in SQLite: the auth database is emptied and the file put
        # where such a release kept it; the tracking server's next start (upgrade-schema) moves it in.
        say("restoring the auth database (an earlier release's SQLite file, moved into MySQL on the next start)")
        with tempfile.NamedTemporaryFile() as empty:
            databases.load_mysql(config, tenant, secrets, Path(empty.name), auth=True)
        _restore_sqlite(checked.file(archive.AUTH_SQLITE), auth_db_path(config, tenant), account)
    else:
        say("restoring the auth database (users and grants)")
        _restore_sqlite(checked.file(archive.AUTH_SQLITE), auth_db_path(config, tenant), account)
    say("replacing the artifacts")
    artifacts.replace_all(artifacts.repository(config, tenant, secrets), checked.artifacts, say)


def auth_uri(config: StackConfig, tenant: Tenant, secrets: Secrets) -> str:
    """The tenant's auth database on the MySQL backend store."""
    return mysql.tenant_uri(config, tenant, secrets.db_password(tenant.id), auth=True)


def _restore_sqlite(source: Path, target: Path, account) -> None:
    private_dir(target.parent)
    if account:
        os.chown(target.parent, account.pw_uid, account.pw_gid)
    databases.copy_sqlite(source, target)
    os.chmod(target, 0o600)
    if account:
        os.chown(target, account.pw_uid, account.pw_gid)
