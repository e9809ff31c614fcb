"""The `flops-mlops` command line.

Exit codes: 0 success, 1 a runtime failure (a service that did not come up, a failed round),
2 a usage or configuration error (nothing was started or changed).
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import sys
import time
from pathlib import Path

from . import config as config_module
from . import secrets as secrets_module
from .config import ConfigError
from .processes import StackError
from .stack import Stack

DEFAULT_CONFIG = "configs/local.yaml"


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="flops-mlops",
        description="Run the MLOps side of FLOps: MLflow tracking servers (one per tenant) that proxy artifacts "
                    "to an FTP artifact store and keep metadata in a SQLite or MySQL backend store.",
        epilog="Exit codes: 0 ok, 1 runtime failure, 2 usage or configuration error.")
    parser.add_argument("--config", default=os.environ.get("FLOPS_CONFIG", DEFAULT_CONFIG), metavar="FILE",
                        help=f"stack configuration (YAML); default $FLOPS_CONFIG or {DEFAULT_CONFIG}")
    commands = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)

    secrets = commands.add_parser("secrets", help="manage the per-deployment secrets file (.env)")
    secrets_commands = secrets.add_subparsers(dest="secrets_command", metavar="ACTION", required=True)
    init = secrets_commands.add_parser(
        "init", help="write random passwords for every key the configuration needs (mode 0600)",
        description="Write the secrets file named by secrets_file in the configuration. Existing values are "
                    "kept and only missing keys are added; --force regenerates every value after copying the "
                    "old file to a timestamped backup. Stores that already exist keep the passwords they were "
                    "created with: after --force, start them with the backup, or recreate them.")
    init.add_argument("--force", action="store_true", help="regenerate every password (old file is backed up)")
    init.set_defaults(handler=cmd_secrets_init)

    up = commands.add_parser("up", help="start the stores and one tracking server per tenant",
                             description="Start the stack and wait until every tracking server answers /health. "
                                         "Without --detach it runs in the foreground; Ctrl-C stops everything. "
                                         "On a stack that is partly running (a service crashed or was killed), "
                                         "start only what is down and leave the rest running.")
    up.add_argument("--detach", action="store_true", help="return once healthy and leave the stack running")
    up.set_defaults(handler=cmd_up)

    restart = commands.add_parser("restart", help="restart one tenant's tracking server (the rest keeps running)",
                                  description="Stop the tenant's tracking server, start it again (schema upgrade "
                                              "first) and wait until it answers /health. No other service or "
                                              "tenant is touched.")
    restart.add_argument("--tenant", required=True, help="tenant id")
    restart.set_defaults(handler=cmd_restart)

    status = commands.add_parser("status", help="show which services are up or down, since when, and each tenant's "
                                                "URIs")
    status.add_argument("--json", action="store_true", help="print machine-readable JSON (passwords masked)")
    status.set_defaults(handler=cmd_status)

    down = commands.add_parser("down", help="stop what `up` started (data stays)")
    down.add_argument("--purge", action="store_true", help="also delete the state dir: databases, artifacts, logs")
    down.set_defaults(handler=cmd_down)

    keys = commands.add_parser("config", help="check a configuration, or list every key with its default")
    keys.add_argument("action", choices=["check", "keys"], help="check: validate the file; keys: document keys")
    keys.add_argument("--markdown", action="store_true",
                      help="keys: print docs/configuration.md (generated from the model; CI checks it for drift)")
    keys.set_defaults(handler=cmd_config)

    from .fl.runner import add_round_parser  # the FL project runner (flops_mlops/fl)

    add_round_parser(commands).set_defaults(handler=cmd_round)

    from .oakestra.commands import add_parsers as add_oakestra_parsers  # push, undeploy
    from .oakestra.commands import templates_option

    render = commands.add_parser(
        "render", help="write what a target runs, from the configuration: Oakestra SLA files or the compose project",
        description="oakestra (default): one SLA v2.0 JSON file per application (stores, tracking, one per FL "
                    "project) from sla_templates/ and the oakestra section, each checked against the SLA schema "
                    "and the service IP plan first. compose: compose.yaml and the backend store's init script for "
                    "every tenant (one tracking server each); the compose.yaml at the repository's root is this "
                    "render of configs/compose.yaml. On any error nothing is written; no file holds a secret "
                    "(placeholders and ${VARIABLE} references only).")
    render.add_argument("--target", choices=["oakestra", "compose"], default="oakestra",
                        help="what to render (default oakestra)")
    render.add_argument("--out", required=True, type=Path, metavar="DIR", help="folder to write the files to")
    render.add_argument("--check", action="store_true",
                        help="write nothing; exit 1 if the files in DIR differ from what would be rendered")
    templates_option(render)
    render.set_defaults(handler=cmd_render)
    add_oakestra_parsers(commands)

    from .users import add_user_parser  # who may log in to a tenant's tracking server

    add_user_parser(commands).set_defaults(handler=cmd_user)

    from .serving import add_build_image_parser, add_serve_parser  # a tenant's registered model over HTTP (MLflow's scoring server)

    add_serve_parser(commands).set_defaults(handler=cmd_serve)
    add_build_image_parser(commands).set_defaults(handler=cmd_build_model_image)

    from .provision import add_provision_parser  # pyinfra deploys for hosts (deploy/pyinfra)

    add_provision_parser(commands).set_defaults(handler=cmd_provision)
    return parser


def load_config(args: argparse.Namespace) -> config_module.StackConfig:
    return config_module.load(Path(args.config))


def cmd_secrets_init(args: argparse.Namespace) -> int:
    config = load_config(args)
    result = secrets_module.init(config, force=args.force)
    if result.backup:
        print(f"backed up the old secrets to {result.backup}")
    if result.added:
        print(f"wrote {result.path} (mode 0600): {len(result.added)} new, {len(result.kept)} kept")
    else:
        print(f"{result.path} already holds all {len(result.kept)} secrets; nothing changed "
              "(use --force to regenerate them)")
    return 0


def cmd_up(args: argparse.Namespace) -> int:
    config = load_config(args)
    stack = Stack(config)
    outcome = stack.up()
    print_endpoints(config)
    if outcome == "running":
        return 0  # someone else's stack (for example `up --detach`): not ours to supervise or stop
    if outcome == "healed":
        print(f"stack {config.name} runs again; the services started now run detached like the others")
        return 0
    if args.detach:
        print(f"stack {config.name} is up; stop it with: flops-mlops --config {args.config} down")
        return 0
    print("running in the foreground; press Ctrl-C to stop", flush=True)
    return stack.supervise()


def print_endpoints(config: config_module.StackConfig) -> None:
    for tenant in config.tenants:
        print(f"tenant {tenant.id}: MLflow UI and tracking URI {config.tracking_uri(tenant)} (log in as admin, "
              f"password {secrets_module.admin_password_key(tenant.id)} in {config.secrets_file})")


def cmd_status(args: argparse.Namespace) -> int:
    config = load_config(args)
    report = Stack(config).status()
    if args.json:
        print(json.dumps(report, indent=2))
        return 0
    print(f"stack {report['stack']} (state in {report['state_dir']})")
    for service in report["services"]:
        print(f"  {service['name']:<22} {service['kind']:<9} {service['address']:<22} {describe_state(service)}")
    for tenant in report["tenants"]:
        health = "healthy" if tenant["healthy"] else "not answering"
        print(f"  tenant {tenant['id']}: {tenant['tracking_uri']} ({health})")
        print(f"    backend store:  {tenant['backend_store']}")
        print(f"    artifacts:      {tenant['artifact_destination']}")
    return 0


def describe_state(service: dict) -> str:
    since = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(service["since"])) if service["since"] else None
    if service["state"] == "running":
        return f"up since {since} (pid {service['pid']})"
    if service["state"] == "down":
        return (f"DOWN: exited on its own; last sign of life {since} (see {service['log']}); "
                "`up` starts it again")
    if service["state"] == "stopped":
        return f"stopped since {since}"
    return "never started"


def cmd_restart(args: argparse.Namespace) -> int:
    config = load_config(args)
    Stack(config).restart(args.tenant)
    tenant = config.tenant(args.tenant)
    print(f"tenant {tenant.id}: tracking server restarted, {config.tracking_uri(tenant)}")
    return 0


def cmd_down(args: argparse.Namespace) -> int:
    config = load_config(args)
    stopped = Stack(config).down(purge=args.purge)
    if not stopped:
        print(f"stack {config.name}: nothing was running")
    elif not args.purge:
        print(f"stack {config.name} is down; data kept in {config.state_dir}")
    return 0


def cmd_round(args: argparse.Namespace) -> int:
    from .fl.runner import round_command

    return round_command(load_config(args), args)


def cmd_user(args: argparse.Namespace) -> int:
    from .users import user_command

    return user_command(load_config(args), args)


def cmd_serve(args: argparse.Namespace) -> int:
    from .serving import serve_command

    return serve_command(load_config(args), args)


def cmd_build_model_image(args: argparse.Namespace) -> int:
    from .serving import build_image_command

    return build_image_command(load_config(args), args)


def cmd_provision(args: argparse.Namespace) -> int:
    from .provision import provision_command

    return provision_command(load_config(args), args)


def cmd_render(args: argparse.Namespace) -> int:
    from . import rendered

    config = load_config(args)
    if args.target == "oakestra":
        from .oakestra import sla

        slas = sla.render_all(config, args.templates)
        for path in sla.strays(slas, args.out):
            print(f"note: {path} is not rendered by this configuration (a removed application?); "
                  "push ignores it, delete it if it is gone", file=sys.stderr)
        files = [item.file for item in slas]
    else:
        if args.templates is not None:
            raise ConfigError("--templates: only for --target oakestra (the SLA templates)")
        from . import compose

        files = compose.render(config, args.out)
    rerun = f"flops-mlops --config {args.config} render --target {args.target} --out {args.out}"
    code = rendered.write_or_check(files, args.out, args.check, rerun)
    if args.target == "compose" and not args.check:
        env = "" if config.secrets_file.resolve() == (args.out / ".env").resolve() else f" --env-file {config.secrets_file}"
        print(f"next: flops-mlops --config {args.config} secrets init; docker compose -f {args.out / files[0].path}"
              f"{env} up -d", file=sys.stderr)
    return code


def cmd_config(args: argparse.Namespace) -> int:
    if args.action == "keys":
        if args.markdown:
            print(config_module.markdown(), end="")
            return 0
        for key, default, text in config_module.describe():
            print(f"{key}\n    {text}" + (f"\n    default: {default}" if default else ""))
        return 0
    config = load_config(args)  # every rule, the oakestra section's included, holds once loaded
    print(f"{config.source}: ok (stack {config.name}, {len(config.tenants)} tenant(s))")
    return 0


def redacted(text: str, args: argparse.Namespace) -> str:
    """``text`` with every password of the stack replaced by ***: log tails may quote store URIs."""
    try:
        values = secrets_module.read_env(load_config(args).secrets_file).values()
    except (ConfigError, OSError):
        return text
    return secrets_module.redact(text, [value for value in values if len(value) >= 8])


def _terminate(signum: int, frame: object) -> None:
    raise KeyboardInterrupt  # SIGTERM cleans up like Ctrl-C: what a half-done command started is stopped


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    signal.signal(signal.SIGTERM, _terminate)
    try:
        return args.handler(args)
    except ConfigError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    except StackError as exc:
        print(f"error: {redacted(str(exc), args)}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":
    sys.exit(main())
