"""The `flops-mlops` command line.

Exit codes: 0 success, 1 a runtime failure (a service that did not come up, a failed round),
2 a usage or configuration error (nothing was started or changed).
"""

from __future__ import annotations

import argparse
import os
import signal
import sys
from collections.abc import Callable
from pathlib import Path

from . import rendered
from .backup import command as backup  # backup, restore (backup/)
from .compose import render as compose
from .configuration import certificates, keys, loading
from .configuration import secrets as secrets_module
from .configuration.schema import ConfigError
from .configuration.stack import StackConfig
from .fl.command import add_round_parser, round_command  # FL projects (fl/)
from .fl.project_image import add_build_fl_image_parser, build_fl_image_command
from .images import command as images  # build-image: our images without Docker (images/)
from .images import push as image_push  # push-image: an OCI layout to a registry (images/)
from .native import commands as native  # up, restart, status, down (native/)
from .oakestra import sla
from .oakestra.commands import add_parsers as add_oakestra_parsers  # push, undeploy (oakestra/)
from .oakestra.commands import templates_option
from .processes import StackError
from .pyinfra.provision import add_provision_parser, provision_command  # pyinfra deploys (pyinfra/)
from .serving.image import add_build_image_parser, build_image_command  # (serving/)
from .serving.service import add_serve_parser, serve_command  # a registered model over HTTP (serving/)
from .tracking.gc import add_gc_parser, gc_command  # mlflow gc for one tenant (tracking/)
from .tracking.users import add_user_parser, user_command  # who may log in to a tracking server (tracking/)

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

    secrets = commands.add_parser("secrets", help="manage the per-deployment secrets file (.env)",
                                  description="The secrets file (secrets_file in the configuration, mode 0600) holds "
                                              "every password of a deployment; nothing else does.")
    secrets_commands = secrets.add_subparsers(dest="secrets_command", metavar="ACTION", required=True)
    init = secrets_commands.add_parser(
        "init", help="write random passwords for every key the configuration needs (mode 0600)",
        description="Write the secrets file named by secrets_file in the configuration. Existing values are "
                    "kept and only missing keys are added; --force regenerates every value after copying the "
                    "old file to a timestamped backup. Stores that already exist keep the passwords they were "
                    "created with: after --force, start them with the backup, or recreate them.")
    init.add_argument("--force", action="store_true", help="regenerate every password (old file is backed up)")
    init.set_defaults(handler=cmd_secrets_init)
    renew = secrets_commands.add_parser(
        "renew-certificates", help="replace the tracking servers' HTTPS certificates (tracking.tls)",
        description="Make a new certificate and key for each tenant's tracking server (or only --tenant's), signed "
                    "by the deployment's CA, which is kept (clients keep trusting it). Nothing else changes: runs, "
                    "models, users and passwords stay. A running server serves its old certificate until it is "
                    "restarted: flops-mlops restart --tenant T. A certificate of your own (tracking.tls_certificate) "
                    "is not ours to renew: replace its files, then restart.")
    renew.add_argument("--tenant", metavar="T", help="only this tenant's server (default: every tenant's)")
    renew.set_defaults(handler=cmd_secrets_renew)

    native.add_parsers(commands, load_config)
    backup.add_parsers(commands, load_config)

    keys = commands.add_parser("config", help="check a configuration, or list every key with its default",
                               description="check: load the configuration with every rule (exit 2 names the file, "
                                           "key and value); keys: every key, what it means and its default.")
    keys.add_argument("action", choices=["check", "keys"], help="check: validate the file; keys: document keys")
    keys.add_argument("--markdown", action="store_true",
                      help="keys: print docs/configuration.md (generated from the model; CI checks it for drift)")
    keys.set_defaults(handler=cmd_config)

    add_round_parser(commands).set_defaults(handler=with_config(round_command))
    add_build_fl_image_parser(commands).set_defaults(handler=with_config(build_fl_image_command))

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

    add_user_parser(commands).set_defaults(handler=with_config(user_command))
    add_gc_parser(commands).set_defaults(handler=with_config(gc_command))
    add_serve_parser(commands).set_defaults(handler=with_config(serve_command))
    add_build_image_parser(commands).set_defaults(handler=with_config(build_image_command))
    images.add_parser(commands).set_defaults(handler=with_config(images.build_image))
    image_push.add_parser(commands).set_defaults(handler=with_config(image_push.push_command))
    add_provision_parser(commands).set_defaults(handler=with_config(provision_command))
    return parser


def load_config(args: argparse.Namespace) -> StackConfig:
    return loading.load(Path(args.config))


def with_config(command: Callable[[StackConfig, argparse.Namespace], int]) -> Callable[[argparse.Namespace], int]:
    """A handler that runs ``command`` on the configuration --config names."""
    return lambda args: command(load_config(args), args)


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


def cmd_secrets_renew(args: argparse.Namespace) -> int:
    config = load_config(args)
    t = config.tracking
    if not t.tls:
        raise ConfigError(f"{config.source}: tracking.tls: false, so the tracking servers have no certificate to "
                          "renew; set tracking.tls: true")
    if t.tls_certificate is not None:
        raise ConfigError(f"{config.source}: tracking.tls_certificate: {t.tls_certificate} is your own certificate; "
                          "replace that file and tracking.tls_key, then restart each tenant's server")
    tenant_ids = [config.tenant(args.tenant).id] if args.tenant else None
    for tenant_id in certificates.make_tracking_certificates(config, force=True, tenant_ids=tenant_ids):
        crt = certificates.tracking_files(config, tenant_id)[0]
        print(f"tenant {tenant_id}: new certificate {crt}, expires {certificates.expiry(crt)}; the server uses it "
              f"after: flops-mlops --config {args.config} restart --tenant {tenant_id}")
    return 0


def cmd_render(args: argparse.Namespace) -> int:
    config = load_config(args)
    if args.target == "oakestra":
        slas = sla.render_all(config, args.templates)
        for path in sla.strays(slas, args.out):
            print(f"note: {path} is not rendered by this configuration (a removed application?); "
                  "push ignores it, delete it if it is gone", file=sys.stderr)
        files = [item.file for item in slas]
    else:
        if args.templates is not None:
            raise ConfigError("--templates: only for --target oakestra (the SLA templates)")
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
            print(keys.markdown(), end="")
            return 0
        for key, default, text in keys.describe():
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
