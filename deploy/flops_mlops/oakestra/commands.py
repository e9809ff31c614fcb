"""The `push` and `undeploy` commands: arguments, credentials and what they print.

Credentials never come from the command line: the user name from --username or $FLOPS_OAKESTRA_USERNAME,
the password from the first line of --password-file (or $FLOPS_OAKESTRA_PASSWORD_FILE), or else from
$FLOPS_OAKESTRA_PASSWORD. Progress goes to stderr; exit 2 for bad input, 1 for a failed API call.
"""

from __future__ import annotations

import argparse
import os
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator

from ..configuration.loading import load
from ..configuration.schema import ConfigError
from ..configuration.secrets import Secrets, read_env
from ..configuration.stack import StackConfig
from ..rendered import differences
from . import sla
from .client import USER_NAME_PATTERN, Client, OakestraError, check_url
from .push import ENVIRONMENT_WARNING, Deployer, DeployState


def add_parsers(commands) -> None:
    push = commands.add_parser(
        "push", help="deploy the rendered applications to an Oakestra root orchestrator and wait until running",
        description="Render in memory (the same bytes as `render`), fill the secret placeholders from the secrets "
                    "file, then per application (stores, tracking, projects): create it if missing, add missing "
                    "services, request an instance of each service that has none and none waiting for a "
                    "cluster, and follow the statuses to RUNNING. Re-running it creates nothing twice and reports "
                    "what differs from the SLA. Ends with what exists on the orchestrator for this "
                    "configuration (stdout).")
    _orchestrator_options(push)
    push.add_argument("--reviewed", type=Path, metavar="DIR",
                      help="refuse to push unless the files in DIR (the reviewed `render --out DIR`) are "
                           "exactly what the configuration renders now")
    push.add_argument("--timeout", type=float, default=900, metavar="SECONDS",
                      help="give up when an application is not running after this long (default 900)")
    push.add_argument("--poll-interval", type=float, default=5, metavar="SECONDS",
                      help="seconds between status checks (default 5)")
    push.set_defaults(handler=cmd_push)

    undeploy = commands.add_parser(
        "undeploy", help="remove the applications from the orchestrator (instances, services, applications)",
        description="In reverse deploy order: undeploy every instance one by one, delete the services, then the "
                    "application. What is already gone is skipped, so it can be re-run after a partial failure. "
                    "Ends with what exists on the orchestrator for this configuration (stdout).")
    _orchestrator_options(undeploy)
    undeploy.set_defaults(handler=cmd_undeploy)


def templates_option(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--templates", type=Path, default=None, metavar="DIR",
                        help=f"SLA templates folder (default {sla.TEMPLATES_DIR})")


def _orchestrator_options(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--orchestrator", default=os.environ.get("FLOPS_OAKESTRA_URL") or None, metavar="URL",
                        help="system manager of the root orchestrator, http(s)://host:port "
                             "(default $FLOPS_OAKESTRA_URL), e.g. http://10.0.0.1:10000")
    parser.add_argument("--username", default=os.environ.get("FLOPS_OAKESTRA_USERNAME") or None,
                        help="Oakestra user (default $FLOPS_OAKESTRA_USERNAME)")
    parser.add_argument("--password-file", type=Path, default=os.environ.get("FLOPS_OAKESTRA_PASSWORD_FILE") or None,
                        metavar="FILE", help="file whose first line is the password (default "
                                             "$FLOPS_OAKESTRA_PASSWORD_FILE, else $FLOPS_OAKESTRA_PASSWORD)")
    parser.add_argument("--app", action="append", default=None, metavar="NAME",
                        help="only this application (stores, tracking or a project name); repeatable")
    parser.add_argument("--http-timeout", type=float, default=30, metavar="SECONDS",
                        help="timeout of one API call (default 30)")
    templates_option(parser)


def _password(args: argparse.Namespace) -> str:
    if args.password_file:
        try:
            lines = Path(args.password_file).read_text(encoding="utf-8").splitlines()
        except OSError as exc:
            raise ConfigError(f"--password-file: {args.password_file}: cannot read: {exc.strerror}") from None
        if not lines or not lines[0].strip():
            raise ConfigError(f"--password-file: {args.password_file}: the first line is empty")
        return lines[0].strip()
    password = os.environ.get("FLOPS_OAKESTRA_PASSWORD")
    if not password:
        raise ConfigError("no Oakestra password: give --password-file FILE or set FLOPS_OAKESTRA_PASSWORD")
    return password


def _credentials(args: argparse.Namespace) -> tuple[str, str, str]:
    """(orchestrator URL, user, password), checked before anything else happens."""
    if not args.orchestrator:
        raise ConfigError("--orchestrator: give the root orchestrator's URL (or set FLOPS_OAKESTRA_URL)")
    url = check_url(args.orchestrator)
    if not args.username:
        raise ConfigError("--username: give the Oakestra user (or set FLOPS_OAKESTRA_USERNAME)")
    if not USER_NAME_PATTERN.fullmatch(args.username):
        raise ConfigError(f"--username: {args.username!r} is not an Oakestra user name (letters, digits, '.', '_', "
                          "'@', '-')")
    if args.http_timeout <= 0:
        raise ConfigError(f"--http-timeout: expected a positive number, got {args.http_timeout}")
    return url, args.username, _password(args)


def _session(args: argparse.Namespace, config: StackConfig, credentials: tuple[str, str, str],
             redact: list[str]) -> tuple[list[sla.Rendered], list[sla.Rendered], Deployer]:
    """(every rendered application, the ones --app selects, the deployer)."""
    everything = rendered = sla.render_all(config, args.templates)
    if args.app:
        known = [item.application_name for item in rendered]
        unknown = [name for name in args.app if name not in known]
        if unknown:
            raise ConfigError(f"--app: {', '.join(unknown)} is not rendered by {config.source} "
                              f"(applications: {', '.join(known)})")
        rendered = [item for item in rendered if item.application_name in args.app]
    client = Client(*credentials, timeout=args.http_timeout, redact=redact)
    return everything, rendered, Deployer(client, DeployState.load(config, client.url))


def cmd_push(args: argparse.Namespace) -> int:
    credentials = _credentials(args)
    if args.timeout <= 0 or args.poll_interval <= 0:
        raise ConfigError("--timeout and --poll-interval must be positive")
    config = load(Path(args.config))
    secrets = Secrets.load(config)
    files = sla.read_pem_files(config)  # certificates and keys, base64url; the keys are masked like the secrets
    keys = [text for name, text in files.items() if name.endswith(".key")]
    everything, rendered, deployer = _session(args, config, credentials, [*secrets.values.values(), *keys])
    if args.reviewed:
        stale = differences([item.file for item in rendered], args.reviewed)
        if stale:
            raise ConfigError(f"--reviewed: {', '.join(stale)} differ(s) from what {config.source} renders now; "
                              f"render again and review the change before pushing")
    documents = [sla.resolve_secrets(item.document, secrets.values, str(secrets.path), files) for item in rendered]
    deployer.say(ENVIRONMENT_WARNING)
    with _reporting(deployer, everything):
        for item, document in zip(rendered, documents):
            deployer.push(item, document, args.timeout, args.poll_interval)
        print(f"pushed {len(rendered)} application(s) to {deployer.client.url}: "
              + ", ".join(item.application_name for item in rendered))
    return 0


def cmd_undeploy(args: argparse.Namespace) -> int:
    credentials = _credentials(args)
    config = load(Path(args.config))
    # Only to mask them in error bodies: undeploy works without the secrets file.
    known = read_env(config.secrets_file) if config.secrets_file.is_file() else {}
    everything, rendered, deployer = _session(args, config, credentials, list(known.values()))
    with _reporting(deployer, everything):
        removed = [item.application_name for item in reversed(rendered) if deployer.undeploy(item)]
        print(f"removed {len(removed)} application(s) from {deployer.client.url}"
              + (": " + ", ".join(removed) if removed else " (nothing to do)"))
    return 0


@contextmanager
def _reporting(deployer: Deployer, everything: list[sla.Rendered]) -> Iterator[None]:
    """Print what exists for this configuration at the end, also after a failed call once the user is known."""
    try:
        yield
    except OakestraError:
        if deployer.knows_user():
            try:
                print("\n".join(deployer.report(everything)))
            except OakestraError as exc:
                print(f"(cannot list what exists: {exc})")
        raise
    print("\n".join(deployer.report(everything)))
