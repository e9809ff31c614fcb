"""Users of a tenant's tracking server: MLflow basic-auth users and grants, managed as the tenant's admin.

A thin client of MLflow's own auth REST API (the routes of ``mlflow.server.auth``), used by:
- ``flops-mlops user add|list|remove|passwd|grant|revoke``: an operator gives a data scientist access to one
  project, and takes it back;
- the FL runner (``round``) and the tracking-server containers (compose, Oakestra): one user per FL project,
  ``fl-<project>``, with EDIT on that project's experiment and registered model and nothing else.

Every user sees nothing until granted (the servers run with ``default_permission = NO_PERMISSIONS``); the
admin (user ``admin``, password in the secrets file) sees and manages everything.
"""

from __future__ import annotations

import getpass
import re
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import requests

from ..configuration.schema import ConfigError
from ..configuration.values import PROJECT_RULE, ProjectName, problem
from ..processes import StackError
from .experiments import TRAINING_EXPERIMENT

ADMIN = "admin"
PERMISSIONS = ("READ", "USE", "EDIT", "MANAGE")
USERNAME_PATTERN = re.compile(r"^[A-Za-z][A-Za-z0-9._@-]{0,63}$")
USERNAME_RULE = "1-64 characters: a letter, then letters, digits, '.', '_', '@' or '-'"
MIN_PASSWORD = 12


class UserError(StackError):
    """MLflow's auth API refused a call; the message says which call and why."""


def project_user(project: str) -> str:
    """The MLflow user an FL project's aggregator logs in as."""
    return f"fl-{project}"


def serving_user(project: str) -> str:
    """The MLflow user a model server of an FL project reads the registered model as (READ on it, nothing else)."""
    return f"serve-{project}"


def image_user(project: str) -> str:
    """The MLflow user ``build-model-image`` reads a project's model as (READ on it, nothing else): not
    ``serve-<project>``, whose re-keying would lock out a model server that is running."""
    return f"image-{project}"


def validate_username(value: str, where: str = "--name") -> str:
    if not USERNAME_PATTERN.fullmatch(value or ""):
        raise ConfigError(f"{where}: {value!r} is not a valid user name ({USERNAME_RULE})")
    if value == ADMIN:
        raise ConfigError(f"{where}: {ADMIN!r} is the tenant's administrator; its password lives in the secrets file")
    return value


def validate_project(value: str, where: str = "--project") -> str:
    if problem(ProjectName, value) is not None:
        raise ConfigError(f"{where}: {value!r} is not a valid project name ({PROJECT_RULE})")
    return value


@dataclass
class AuthAdmin:
    """The admin's session with one tracking server."""

    tracking_uri: str
    password: str
    username: str = ADMIN
    timeout: float = 30
    verify: str | bool = True  # the CA an HTTPS server is checked against (server.client_verify)

    def __post_init__(self) -> None:
        self.session = requests.Session()
        self.session.auth = (self.username, self.password)

    def call(self, method: str, path: str, ok: tuple[int, ...] = (200,), **kwargs) -> tuple[int, dict]:
        url = f"{self.tracking_uri.rstrip('/')}{path}"
        try:
            # verify on each request: requests prefers REQUESTS_CA_BUNDLE to a session's own verify
            response = self.session.request(method, url, timeout=self.timeout, verify=self.verify, **kwargs)
        except requests.RequestException as exc:
            raise UserError(f"{method} {url}: the tracking server does not answer ({type(exc).__name__})") from None
        try:
            body = response.json() if response.content else {}
        except ValueError:
            body = {"message": response.text[:200]}
        if response.status_code not in ok:
            if response.status_code == 401:
                raise UserError(f"{method} {url}: 401, the admin password was refused (it is the one the auth "
                                "database was created with; see `flops-mlops user passwd --admin`)")
            raise UserError(f"{method} {url}: HTTP {response.status_code}: {body.get('message', body)}")
        return response.status_code, body

    # --- users ---

    def users(self) -> list[dict]:
        return self.call("GET", "/api/2.0/mlflow/users/list")[1].get("users", [])

    def has_user(self, name: str) -> bool:
        status, _ = self.call("GET", "/api/2.0/mlflow/users/get", ok=(200, 404), params={"username": name})
        return status == 200

    def add_user(self, name: str, password: str) -> None:
        self.call("POST", "/api/2.0/mlflow/users/create", json={"username": name, "password": password})

    def set_password(self, name: str, password: str) -> None:
        body = {"username": name, "password": password}
        if name == self.username:  # MLflow asks for the current password when one changes one's own
            body["current_password"] = self.password
        self.call("PATCH", "/api/2.0/mlflow/users/update-password", json=body)

    def remove_user(self, name: str) -> None:
        self.call("DELETE", "/api/2.0/mlflow/users/delete", json={"username": name})

    def permissions(self, name: str) -> list[dict]:
        return self.call("GET", "/api/3.0/mlflow/users/permissions/list",
                         params={"username": name})[1].get("permissions", [])

    def grant(self, name: str, resource_type: str, resource_id: str, permission: str) -> None:
        """``permission`` on the resource, whatever ``name`` had on it before (MLflow refuses a second grant on
        one resource: an existing other permission is revoked first, the same one is kept)."""
        held = {(h["resource_type"], h["resource_pattern"]): h["permission"] for h in self.permissions(name)}
        if held.get((resource_type, resource_id)) == permission:
            return
        self.revoke(name, resource_type, resource_id)
        self.call("POST", "/api/3.0/mlflow/users/permissions/grant",
                  json={"username": name, "resource_type": resource_type, "resource_id": resource_id,
                        "permission": permission})

    def revoke(self, name: str, resource_type: str, resource_id: str) -> str | None:
        """Withdraw ``name``'s permission on the resource; the permission it held, or None if it held none."""
        for held in self.permissions(name):
            if (held["resource_type"], held["resource_pattern"]) == (resource_type, resource_id):
                self.call("POST", "/api/3.0/mlflow/users/permissions/revoke",
                          json={"username": name, "resource_type": resource_type, "resource_id": resource_id})
                return held["permission"]
        return None

    # --- a project's experiment and registered model ---

    def experiment_id(self, project: str, create: bool = False) -> str | None:
        status, body = self.call("GET", "/api/2.0/mlflow/experiments/get-by-name", ok=(200, 404),
                                 params={"experiment_name": project})
        if status == 200:
            return body["experiment"]["experiment_id"]
        if not create:
            return None
        status, body = self.call("POST", "/api/2.0/mlflow/experiments/create", ok=(200, 400),
                                 json={"name": project, "tags": [  # an FL project: opens on its runs
                                     {"key": key, "value": value} for key, value in
                                     {"flops.project": project, **TRAINING_EXPERIMENT}.items()]})
        if status == 400:  # created meanwhile by someone else
            return self.experiment_id(project)
        return body["experiment_id"]

    def ensure_registered_model(self, name: str) -> None:
        self.call("POST", "/api/2.0/mlflow/registered-models/create", ok=(200, 400), json={"name": name})

    def grant_project(self, name: str, project: str, permission: str, create: bool = False) -> None:
        """``permission`` on the project's experiment and on its registered model (same name)."""
        experiment = self.experiment_id(project, create=create)
        if experiment is None:
            raise UserError(f"project {project}: no experiment of that name on {self.tracking_uri} (run the project "
                            "once, or check the name)")
        if create:
            self.ensure_registered_model(project)
        self.grant(name, "experiment", experiment, permission)
        self.grant(name, "registered_model", project, permission)

    def revoke_project(self, name: str, project: str) -> list[str]:
        """Withdraw ``name``'s grants on the project's experiment and registered model; what was withdrawn."""
        if not self.has_user(name):
            raise UserError(f"no user {name!r} on {self.tracking_uri}")
        withdrawn = []
        experiment = self.experiment_id(project)
        for resource_type, resource_id in (("experiment", experiment), ("registered_model", project)):
            if resource_id is not None and (held := self.revoke(name, resource_type, resource_id)):
                withdrawn.append(f"{held} on {resource_type.replace('_', ' ')} {resource_id}")
        return withdrawn


def add_or_rekey(admin: AuthAdmin, name: str, password: str) -> None:
    """User ``name`` with ``password``: created, or given the new password if it exists."""
    try:
        admin.add_user(name, password)
    except UserError:
        if not admin.has_user(name):  # not refused for existing (another worker may have just created it)
            raise
        admin.set_password(name, password)


def ensure_project_user(admin: AuthAdmin, project: str, password: str) -> str:
    """Create (or re-key) ``fl-<project>`` with EDIT on the project's experiment and registered model only."""
    name = project_user(validate_project(project))
    add_or_rekey(admin, name, password)
    admin.grant_project(name, project, "EDIT", create=True)
    return name


def ensure_serving_user(admin: AuthAdmin, project: str, password: str, create: bool = False,
                        user=serving_user) -> str:
    """Create (or re-key) ``serve-<project>`` (or ``user(project)``) with READ on the project's registered model
    only: it may resolve the model's aliases and download its versions' files, and sees no experiment, run or other
    model. ``create``: an empty registered model is created if the project has none yet (containers, before the
    first round)."""
    name = user(validate_project(project))
    status, _ = admin.call("GET", "/api/2.0/mlflow/registered-models/get", ok=(200, 404), params={"name": project})
    if status == 404 and create:
        admin.ensure_registered_model(project)
    elif status == 404:
        raise UserError(f"no registered model {project!r} on {admin.tracking_uri}: run the FL project first "
                        f"(flops-mlops round --project {project})")
    add_or_rekey(admin, name, password)
    admin.grant(name, "registered_model", project, "READ")
    return name


def wait_until_healthy(tracking_uri: str, timeout: float, verify: str | bool = True) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            if requests.get(f"{tracking_uri.rstrip('/')}/health", timeout=2, verify=verify).status_code == 200:
                return True
        except requests.RequestException:
            pass
        time.sleep(1)
    return False


# --- `flops-mlops user` --------------------------------------------------------------------------------


def add_user_parser(commands):
    parser = commands.add_parser(
        "user", help="manage who may log in to a tenant's tracking server (MLflow basic auth)",
        description="Users of a tenant's MLflow tracking server, managed as its admin (password in the secrets "
                    "file). Every user sees nothing until granted access to a project. Passwords are read from "
                    "--password-file or asked for at a prompt, never taken as an argument.")
    actions = parser.add_subparsers(dest="user_action", metavar="ACTION", required=True)

    def action(name: str, text: str):
        # No abbreviations: `--password SECRET` must be refused, not taken for --password-file (and echoed).
        sub = actions.add_parser(name, help=text, description=text, allow_abbrev=False)
        sub.add_argument("--tenant", required=True, help="tenant id (its tracking server must be up)")
        return sub

    add = action("add", "create a user (no access to anything until granted)")
    add.add_argument("--name", required=True, help=f"user name ({USERNAME_RULE})")
    add.add_argument("--password-file", type=Path, metavar="FILE",
                     help=f"read the password from FILE (first line; at least {MIN_PASSWORD} characters)")
    action("list", "list the users and what each may do")
    remove = action("remove", "delete a user and its grants")
    remove.add_argument("--name", required=True, help="user name")
    passwd = action("passwd", "set a user's password (or, with --admin, rotate the admin's)")
    who = passwd.add_mutually_exclusive_group(required=True)
    who.add_argument("--name", help="user name")
    who.add_argument("--admin", action="store_true",
                     help="rotate the admin password: a new random one is set on the server and written to the "
                          "secrets file (the old file is backed up)")
    passwd.add_argument("--password-file", type=Path, metavar="FILE", help="read the password from FILE")
    grant = action("grant", "give a user a permission on one FL project (its experiment and registered model)")
    grant.add_argument("--name", required=True, help="user name")
    grant.add_argument("--project", required=True, help=f"FL project = experiment = registered model ({PROJECT_RULE})")
    grant.add_argument("--permission", choices=PERMISSIONS, default="READ",
                       help="READ (default): see runs and download models; EDIT: also log; MANAGE: also grant "
                            "and delete")
    revoke = action("revoke", "withdraw a user's permission on one FL project (its experiment and registered model); "
                              "its other grants stay")
    revoke.add_argument("--name", "--user", dest="name", required=True, help="user name")
    revoke.add_argument("--project", required=True, help=f"FL project ({PROJECT_RULE})")
    return parser


def read_password(path: Path | None, name: str) -> str:
    if path is not None:
        try:
            lines = path.read_text(encoding="utf-8").splitlines()
        except OSError as exc:
            raise ConfigError(f"{path}: cannot read the password file: {exc.strerror}") from None
        password = lines[0] if lines else ""
        where = str(path)
    else:
        if not sys.stdin.isatty():
            raise ConfigError("--password-file: no password given and no terminal to ask on")
        password = getpass.getpass(f"password for {name}: ")
        if getpass.getpass("again: ") != password:
            raise ConfigError("the two passwords differ")
        where = "the password"
    if len(password) < MIN_PASSWORD:
        raise ConfigError(f"{where}: expected at least {MIN_PASSWORD} characters")
    return password


def user_command(config, args) -> int:
    from ..configuration import secrets as secrets_module
    from .server import TrackingServer

    tenant = config.tenant(args.tenant)
    secrets = secrets_module.Secrets.load(config)
    tracker = TrackingServer(config, tenant)
    admin = AuthAdmin(tracker.local_uri, secrets.admin_password(tenant.id), verify=tracker.verify)
    if args.user_action == "list":
        for user in sorted(admin.users(), key=lambda u: u["username"]):
            role = "admin" if user.get("is_admin") else "user"
            grants = ", ".join(f"{p['resource_type']} {p['resource_pattern']}: {p['permission']}"
                               for p in admin.permissions(user["username"])) if role == "user" else "everything"
            print(f"{user['username']:<24} {role:<6} {grants or 'nothing'}")
        return 0
    if args.user_action == "passwd" and args.admin:
        return rotate_admin(config, tenant, admin)
    name = validate_username(args.name)
    if args.user_action == "add":
        if admin.has_user(name):
            raise ConfigError(f"--name: user {name!r} already exists on tenant {tenant.id}'s server")
        admin.add_user(name, read_password(args.password_file, name))
        print(f"user {name} added to tenant {tenant.id}; it sees nothing until granted: "
              f"flops-mlops user grant --tenant {tenant.id} --name {name} --project P")
    elif args.user_action == "remove":
        admin.remove_user(name)
        print(f"user {name} removed from tenant {tenant.id}")
    elif args.user_action == "passwd":
        admin.set_password(name, read_password(args.password_file, name))
        print(f"password of {name} changed")
    elif args.user_action == "grant":
        project = validate_project(args.project)
        admin.grant_project(name, project, args.permission)
        print(f"{name} may now {args.permission} project {project} (experiment and registered model) of tenant "
              f"{tenant.id}")
    elif args.user_action == "revoke":
        project = validate_project(args.project)
        withdrawn = admin.revoke_project(name, project)
        print(f"{name} no longer holds {' and '.join(withdrawn)} of tenant {tenant.id}" if withdrawn else
              f"{name} held no grant on project {project} of tenant {tenant.id}; nothing to revoke")
    return 0


def rotate_admin(config, tenant, admin: AuthAdmin) -> int:
    """A new admin password: set on the server first, then written to the secrets file (old file backed up)."""
    from ..configuration import secrets as secrets_module

    new = secrets_module.new_password()
    admin.set_password(ADMIN, new)
    key = secrets_module.admin_password_key(tenant.id)
    backup = secrets_module.replace_value(config, key, new)
    print(f"admin password of tenant {tenant.id} rotated; {key} in {config.secrets_file} holds the new one "
          f"(old file backed up to {backup})")
    return 0
