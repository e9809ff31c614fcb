"""The commands of the stack on this machine: `up`, `restart`, `status` and `down` (docs/native.md)."""

from __future__ import annotations

import argparse
import json

from ..configuration import certificates
from ..configuration.secrets import admin_password_key
from ..configuration.stack import StackConfig
from . import status as status_report
from .stack import Stack


def add_parsers(commands, load_config) -> None:
    """The four commands; ``load_config(args)`` reads the configuration --config names."""
    up = commands.add_parser("up", help="start the stores and one tracking server per tenant",
                             description="Start the stack and wait until every tracking server answers /health. "
                                         "Without --detach it runs in the foreground; Ctrl-C stops everything. "
                                         "On a stack that is partly running (a service crashed or was killed), "
                                         "start only what is down and leave the rest running.")
    up.add_argument("--detach", action="store_true", help="return once healthy and leave the stack running")
    up.set_defaults(handler=lambda args: up_command(load_config(args), args))

    restart = commands.add_parser("restart", help="restart one tenant's tracking server (the rest keeps running)",
                                  description="Stop the tenant's tracking server, start it again (schema upgrade "
                                              "first) and wait until it answers /health. No other service or "
                                              "tenant is touched.")
    restart.add_argument("--tenant", required=True, help="tenant id")
    restart.set_defaults(handler=lambda args: restart_command(load_config(args), args))

    status = commands.add_parser("status", help="show which services are up or down, since when, and each tenant's "
                                                "URIs",
                                 description="Show each service of the stack on this machine (stores, tracking "
                                             "servers, model servers): running or not, its pid and since when, and "
                                             "each tenant's tracking URI. Passwords in URIs are masked.")
    status.add_argument("--json", action="store_true", help="print machine-readable JSON (passwords masked)")
    status.set_defaults(handler=lambda args: status_command(load_config(args), args))

    down = commands.add_parser("down", help="stop what `up` started (data stays)",
                               description="Stop every service `up` and `serve` started on this machine, by the "
                                           "pids they recorded. The data stays in state_dir unless --purge.")
    down.add_argument("--purge", action="store_true", help="also delete the state dir: databases, artifacts, logs")
    down.set_defaults(handler=lambda args: down_command(load_config(args), args))


def up_command(config: StackConfig, args: argparse.Namespace) -> int:
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


def print_endpoints(config: StackConfig) -> None:
    for tenant in config.tenants:
        print(f"tenant {tenant.id}: MLflow UI and tracking URI {config.tracking_uri(tenant)} (log in as admin, "
              f"password {admin_password_key(tenant.id)} in {config.secrets_file})")
    if config.tracking.tls and (ca := certificates.tracking_ca(config)) is not None:
        print(f"HTTPS: the servers' certificates are signed by the CA {ca} (give it to your browser or client; "
              f"MLflow clients: MLFLOW_TRACKING_SERVER_CERT_PATH={ca})")


def status_command(config: StackConfig, args: argparse.Namespace) -> int:
    report = status_report.report(Stack(config))
    if args.json:
        print(json.dumps(report, indent=2))
    else:
        status_report.print_report(report)
    return 0


def restart_command(config: StackConfig, args: argparse.Namespace) -> int:
    Stack(config).restart(args.tenant)
    tenant = config.tenant(args.tenant)
    print(f"tenant {tenant.id}: tracking server restarted, {config.tracking_uri(tenant)}")
    return 0


def down_command(config: StackConfig, args: argparse.Namespace) -> int:
    stopped = Stack(config).down(purge=args.purge)
    if not stopped:
        print(f"stack {config.name}: nothing was running")
    elif not args.purge:
        print(f"stack {config.name} is down; data kept in {config.state_dir}")
    return 0
