"""`flops-mlops serve`: a tenant's registered model served on this machine, recorded like the stack's services.

One model server per (tenant, project): ``python -m flops_mlops.serving.server`` (MLflow's scoring server in our
own process, no conda/virtualenv), started in a session of its own as the tracking servers' account, with its
pid in ``<state_dir>/pids/model-<tenant>-<project>.pid`` and its log in ``logs/``. Its folder
``<state_dir>/serving/<tenant>-<project>/`` holds the record (``service.json``: address and model) that `status`
and `down` read, and the fetched model versions.

It reads the model as ``serve-<project>``, a user with READ on that registered model only, re-keyed with a new
password at every start and given to the process by environment only. Served by alias (default champion), the
server asks every ``--poll`` seconds where the alias points and swaps in a new version without a restart: a later
`flops-mlops round` that registers a new champion moves the service.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import time
from dataclasses import dataclass
from pathlib import Path

import requests

from ..configuration.accounts import own_tree, tenant_account
from ..configuration.schema import ConfigError
from ..configuration.stack import StackConfig
from ..configuration.tracking import Tenant
from ..processes import ManagedProcess, StackError, port_is_free, private_dir, wait_until, write_private

ALIAS_PATTERN = re.compile(r"^[A-Za-z_][A-Za-z0-9_-]{0,254}$")
DEFAULT_PORT = 8080
DEFAULT_POLL = 15.0


@dataclass(frozen=True)
class ModelService:
    """One served model of the native stack: its process and its record."""

    config: StackConfig
    tenant_id: str
    project: str

    @property
    def name(self) -> str:
        return f"model-{self.tenant_id}-{self.project}"

    @property
    def folder(self) -> Path:
        return self.config.state_dir / "serving" / f"{self.tenant_id}-{self.project}"

    @property
    def process(self) -> ManagedProcess:
        return ManagedProcess(self.name, self.config.state_dir)

    def record(self) -> dict:
        try:
            return json.loads((self.folder / "service.json").read_text(encoding="utf-8"))
        except (FileNotFoundError, ValueError):
            return {}

    @property
    def address(self) -> str:
        record = self.record()
        return f"{record.get('host', '?')}:{record.get('port', '?')}"


def recorded_services(config: StackConfig) -> list[ModelService]:
    """The model servers `serve` has started in this state dir (running or not), for `status` and `down`."""
    services = []
    for record in sorted((config.state_dir / "serving").glob("*/service.json")):
        try:
            data = json.loads(record.read_text(encoding="utf-8"))
            services.append(ModelService(config, data["tenant"], data["project"]))
        except (ValueError, KeyError):
            continue
    return services


def add_model_arguments(parser, verb: str, version_help: str) -> None:
    """--tenant, --project and which version (--alias or --version): what serve and build-model-image share."""
    parser.add_argument("--tenant", required=True, help="tenant id (its tracking server must be up)")
    parser.add_argument("--project", required=True, help="FL project = registered model name")
    which = parser.add_mutually_exclusive_group()
    which.add_argument("--alias", default=None, help=f"{verb} the version this alias points at (default champion)")
    which.add_argument("--version", type=int, default=None, help=version_help)


def add_serve_parser(commands):
    parser = commands.add_parser(
        "serve", help="serve a tenant's registered model (the FL project's champion) over HTTP",
        description="Serve models:/<project>@<alias> (or a fixed --version) of a tenant with MLflow's scoring "
                    "server: POST /invocations, GET /ping, /version, and /model (what is served). It runs on "
                    "this machine's Python environment (no conda or virtualenv); the model's requirements must be "
                    "met by it, or it does not start. It reads the model as serve-<project>, a user with READ on "
                    "that registered model only. Served by alias, it follows the alias: every --poll seconds it "
                    "asks where the alias points and swaps in the new version, so a later `round` moves it. "
                    "`status` lists it, `down` (or serve --stop) stops it.")
    add_model_arguments(parser, "serve", "serve this fixed version (no reload)")
    parser.add_argument("--port", type=int, default=DEFAULT_PORT, help=f"port to listen on (default {DEFAULT_PORT})")
    parser.add_argument("--poll", type=float, default=DEFAULT_POLL,
                        help=f"seconds between alias checks (default {DEFAULT_POLL:.0f}; 0: never reload)")
    parser.add_argument("--detach", action="store_true", help="return once it answers /ping and leave it running")
    parser.add_argument("--stop", action="store_true", help="stop this project's model server instead")
    return parser


def check_arguments(config: StackConfig, args) -> tuple[Tenant, str | None]:
    from ..tracking.users import validate_project

    tenant = config.tenant(args.tenant)
    validate_project(args.project)
    alias = None if args.version is not None else (args.alias or "champion")
    if alias is not None and not ALIAS_PATTERN.fullmatch(alias):
        raise ConfigError(f"--alias: {alias!r} is not an alias (a letter or '_', then letters, digits, '_' or '-')")
    if args.version is not None and args.version < 1:
        raise ConfigError(f"--version: expected a version number >= 1, got {args.version}")
    if not 1 <= args.port <= 65535:
        raise ConfigError(f"--port: expected a TCP port (1-65535), got {args.port}")
    if args.poll < 0:
        raise ConfigError(f"--poll: expected seconds >= 0, got {args.poll}")
    return tenant, alias


def serve_command(config: StackConfig, args) -> int:
    tenant, alias = check_arguments(config, args)
    service = ModelService(config, tenant.id, args.project)
    if args.stop:
        stopped = service.process.stop()
        print(f"{service.name}: {'stopped' if stopped else 'was not running'}")
        return 0
    if service.process.is_running():
        raise ConfigError(f"--project: {args.project} of tenant {tenant.id} is already served at "
                          f"http://{service.address} (stop it first: serve --stop, or down)")
    host = config.tracking.host
    if not port_is_free(host, args.port):
        raise ConfigError(f"--port: port {args.port} on {host} is already in use; choose another one")
    started = start(config, tenant, service, alias, args)
    url = f"http://{config.tracking.public_host}:{args.port}"
    example = service.folder / "example.json"
    print(f"serving models:/{args.project}/{started['version']}"
          + (f" (alias {alias}; followed every {args.poll:g} s)" if alias and args.poll else "")
          + f" of tenant {tenant.id} at {url} (pid {service.process.recorded().pid})")
    curl = f"predict:  curl -s -X POST {url}/invocations -H 'Content-Type: application/json' --data @{example}"
    if args.detach:
        print(f"stop it with: flops-mlops --config {args.config} serve --tenant {tenant.id} --project {args.project} "
              "--stop (or down)")
        print(curl)
        return 0
    print(curl)
    print("running in the foreground; press Ctrl-C to stop", flush=True)
    try:
        while service.process.is_running():
            time.sleep(1)
    except KeyboardInterrupt:
        service.process.stop()
        return 0
    raise service.process.failure(f"{service.name} exited")


def start(config: StackConfig, tenant: Tenant, service: ModelService, alias: str | None, args) -> dict:
    """Start the model server, wait until it answers /ping; return what GET /model says it serves."""
    account = tenant_account(config, tenant, lambda line: print(line, flush=True))
    registry = serving_registry(config, tenant, args.project, args)
    python, variables = model_environment(registry, args.project, alias, args.version, service.folder / "runtime")
    private_dir(service.folder.parent, 0o711 if account else 0o700)
    private_dir(service.folder)
    if account:
        own_tree(service.folder, account)  # its model cache too, if an earlier release cached it as another account
    env = {key: value for key, value in os.environ.items() if not key.startswith(("MLFLOW_", "FLOPS_"))}
    env.update({
        "MLFLOW_TRACKING_URI": registry.tracking_uri, "MLFLOW_TRACKING_USERNAME": registry.username,
        "MLFLOW_TRACKING_PASSWORD": registry.password, "MLFLOW_DISABLE_TELEMETRY": "true",
        "FLOPS_SERVE_MODEL_NAME": args.project, "FLOPS_SERVE_HOST": config.tracking.host,
        "FLOPS_SERVE_PORT": str(args.port), "FLOPS_SERVE_POLL_SECONDS": str(args.poll),
        "FLOPS_SERVE_CACHE": str(service.folder / "models"), "PYTHONUNBUFFERED": "1",
        **({"FLOPS_SERVE_ALIAS": alias} if alias else {"FLOPS_SERVE_VERSION": str(args.version)}),
    })
    if account:
        env["HOME"] = str(service.folder)
    from ..configuration.certificates import tracking_ca
    from ..tracking.server import client_env, copy_private

    if (ca := tracking_ca(config)) is not None:  # tracking.tls: a copy its account can read
        env.update(client_env(config, copy_private(ca, service.folder / "tracking-ca.crt", account)))
    write_private(service.folder / "service.json", json.dumps({
        "tenant": tenant.id, "project": args.project, "host": config.tracking.host, "port": args.port,
        "alias": alias, "version": args.version}) + "\n", 0o644)
    env.update(variables)
    service.process.start([str(python), "-m", "flops_mlops.serving.server"], env=env, cwd=service.folder,
                          account=account)
    base = f"http://{config.tracking.host}:{args.port}"
    try:
        wait_until(lambda: answers(f"{base}/ping"), service.process, f"{service.name} did not come up", 180)
        served = requests.get(f"{base}/model", timeout=5).json()
    except BaseException:
        service.process.stop()
        raise
    example = service.folder / "models" / f"{args.project}-v{served['version']}" / "serving_input_example.json"
    if example.exists():
        shutil.copyfile(example, service.folder / "example.json")
        os.chmod(service.folder / "example.json", 0o644)
    return served


def model_environment(registry, project: str, alias: str | None, version: int | None,
                      runtime_dir: Path) -> tuple[Path, dict[str, str]]:
    """The Python that meets the model's requirements: this one, or the virtualenv an FL project with those
    dependencies ran in (``round`` builds and caches it: fl/environments.py); with the variables it needs."""
    from ..fl.environments import meeting
    from .fetch import FetchError

    number = str(version) if version is not None else registry.version_of(project, alias or "champion")
    try:
        requirements = registry.file(project, number, "requirements.txt").decode("utf-8").splitlines()
    except FetchError:
        requirements = []
    environment, lacking = meeting(requirements)
    if environment is None:
        raise StackError(f"models:/{project}/{number} needs what neither this Python nor any FL project's "
                         "environment has (run its repository once with `flops-mlops round --ml-repo ...`, which "
                         "builds that environment):\n  " + "\n  ".join(lacking))
    if environment.key is None:
        return environment.python, {}
    print(f"models:/{project}/{number} needs {', '.join(line.split(':')[0] for line in lacking)}: served from "
          f"{environment.description}", flush=True)
    return environment.python, environment.variables(runtime_dir)


def answers(url: str) -> bool:
    try:
        return requests.get(url, timeout=2).status_code == 200
    except requests.RequestException:
        return False


def serving_registry(config: StackConfig, tenant: Tenant, project: str, args, user=None):
    """The tenant's registry as serve-<project> (or ``user(project)``), re-keyed now (the password stays in this
    process)."""
    from ..configuration.secrets import Secrets, new_password
    from ..tracking.server import TrackingServer
    from ..tracking.users import AuthAdmin, ensure_serving_user, serving_user
    from .fetch import Registry

    tracker = TrackingServer(config, tenant)
    if not tracker.healthy():
        raise StackError(f"tracking server of tenant {tenant.id} at {tracker.local_uri} is not answering; start the "
                         f"stack first: flops-mlops --config {args.config} up --detach")
    password = new_password()
    admin = AuthAdmin(tracker.local_uri, Secrets.load(config).admin_password(tenant.id), verify=tracker.verify)
    return Registry(tracker.local_uri, ensure_serving_user(admin, project, password, user=user or serving_user),
                    password, verify=tracker.verify)
