"""`flops-mlops round`: an FL project on this machine against a tenant's tracking server, with its progress and
summary (runner.py runs and supervises the processes)."""

from __future__ import annotations

import argparse
import json
import sys
from typing import Any

from ..configuration.schema import ConfigError
from ..configuration.secrets import Secrets, admin_password_key, new_password
from ..tracking.server import TrackingServer, is_healthy
from ..tracking.users import AuthAdmin, ensure_project_user
from .runner import FLRunError, run_project
from .settings import BETTER_CHOICES, PROJECT_RULE, FLSettings, SettingsError, validate_project
from .summary import round_line, summary_lines


def add_round_parser(commands) -> argparse.ArgumentParser:
    parser = commands.add_parser(
        "round", help="run an FL project (aggregator + learners on this machine) against a tenant's tracking server",
        description="Run an FL project on this machine: one aggregator and K learner processes on 127.0.0.1. "
                    "The aggregator logs one MLflow run per round to the tenant's tracking server, keeps the "
                    "best global model on disk (state_dir/fl/<tenant>/<project>/model) and, after the last "
                    "round, logs and registers it under the project's name with an alias.")
    parser.add_argument("--tenant", required=True, help="tenant id (its tracking server must be up)")
    parser.add_argument("--project", required=True,
                        help=f"FL project = MLflow experiment = registered model name ({PROJECT_RULE})")
    parser.add_argument("--rounds", type=int, default=3, help="training rounds (default 3)")
    parser.add_argument("--learners", type=int, default=2, help="learner processes (default 2)")
    parser.add_argument("--seed", type=int, default=42, help="seed of the synthetic data and its split (default 42)")
    parser.add_argument("--better", choices=BETTER_CHOICES, default="loss",
                        help="which round's model is best: lowest aggregated loss (default) or highest accuracy")
    parser.add_argument("--alias", default="champion", help="registry alias for the new version (default champion)")
    parser.add_argument("--timeout", type=float, default=600, help="give up after this many seconds (default 600)")
    parser.add_argument("--engine", choices=["legacy", "deployment"], default="legacy",
                        help="Flower API: legacy start_server/start_client (default, fast) or the deployment "
                             "engine (SuperLink, SuperNodes, flwr run)")
    parser.add_argument("--json", action="store_true",
                        help="print the summary as JSON on stdout (progress goes to stderr)")
    return parser


def round_command(config, args) -> int:
    tenant = config.tenant(args.tenant)
    try:
        validate_project(args.project, "--project")
        settings = FLSettings(project=args.project, tracking_uri=config.tracking_uri(tenant), rounds=args.rounds,
                              learners=args.learners, seed=args.seed, better=args.better, alias=args.alias,
                              timeout=args.timeout,
                              model_dir=config.state_dir / "fl" / tenant.id / args.project / "model")
        settings.check("aggregator")
    except SettingsError as exc:
        raise ConfigError(str(exc)) from None
    if not is_healthy(settings.tracking_uri):
        raise FLRunError(f"tracking server of tenant {tenant.id} at {settings.tracking_uri} is not answering; "
                         f"start the stack first: flops-mlops --config {args.config} up --detach")
    login = project_login(config, tenant, settings.project)
    progress = sys.stderr if args.json else sys.stdout

    def on_round(event: dict[str, Any]) -> None:
        print(round_line(event), file=progress, flush=True)

    print(f"FL project {settings.project} for tenant {tenant.id}: {settings.rounds} rounds, {settings.learners} "
          f"learners ({args.engine} engine), tracking at {settings.tracking_uri}", file=progress, flush=True)
    work_dir = config.state_dir / "fl" / tenant.id / settings.project
    summary = run_project(settings, work_dir, on_round, engine=args.engine, env=login)
    if args.json:
        keys = ("project", "experiment_id", "run_ids", "best_round", "better", "model_uri", "model_version",
                "logged_model_uri", "ui_url", "best_run_url", "model_url", "model_dir", "aggregator_address",
                "rounds")
        print(json.dumps({key: summary.get(key) for key in keys}, indent=2))
        return 0
    print("\n" + "\n".join(summary_lines(summary)))
    print(f"log in as:        admin, password {admin_password_key(tenant.id)} in {config.secrets_file} "
          f"(or a user of your own: flops-mlops user add --tenant {tenant.id} --name NAME)")
    return 0


def project_login(config, tenant, project: str) -> dict[str, str]:
    """The aggregator's own MLflow login: user fl-<project>, EDIT on this project only, a new password each run.

    Created (or re-keyed) here as the tenant's admin; only the aggregator gets it, learners get no credentials.
    """
    secrets = Secrets.load(config)
    admin = AuthAdmin(TrackingServer(config, tenant).local_uri, secrets.admin_password(tenant.id))
    password = new_password()
    user = ensure_project_user(admin, project, password)
    return {"MLFLOW_TRACKING_USERNAME": user, "MLFLOW_TRACKING_PASSWORD": password}
