"""`flops-mlops round`: an FL project on this machine against a tenant's tracking server, with its progress and
summary: the ML repository is resolved (ml_repo), its environment found or built (environments), checked against
the contract (runner.preflight), then run and supervised (runner)."""

from __future__ import annotations

import argparse
import json
import os
import sys
from dataclasses import replace
from pathlib import Path
from typing import Any

from ..configuration.schema import ConfigError
from ..configuration.secrets import Secrets, admin_password_key, new_password
from ..processes import private_dir
from ..tracking.server import TrackingServer, client_env, client_verify, is_healthy
from ..tracking.users import AuthAdmin, ensure_project_user
from .best_model import BestModel
from .environments import for_repository
from .ml_repo import RepoError, repository_folder, resolve
from .recovery import close_stale_runs, project_lock
from .runner import FLRunError, PreflightError, Runtime, preflight, publish_kept, run_project
from .settings import BETTER_CHOICES, FLAVORS, MODES, PROJECT_RULE, FLSettings, SettingsError, validate_project
from .summary import round_line, summary_lines


def add_round_parser(commands) -> argparse.ArgumentParser:
    parser = commands.add_parser(
        "round", help="run an FL project (aggregator + learners on this machine) against a tenant's tracking server",
        description="Run an FL project on this machine: the ML repository's model (FLOps' contract; default: the "
                    "scikit-learn example), trained by K learner processes on their own data and one aggregator "
                    "on 127.0.0.1, in the repository's environment (a virtualenv per dependency set, cached; "
                    "this interpreter when it already meets them). Before anything starts, the repository is "
                    "checked against the contract (exit 2 names each violation). The aggregator logs one MLflow "
                    "run per round to the tenant's tracking server, keeps the best global model on disk "
                    "(state_dir/fl/<tenant>/<project>/model) and, after the last round, logs it with its "
                    "flavour's MLflow module and registers it under the project's name with an alias.")
    parser.add_argument("--tenant", required=True, help="tenant id (its tracking server must be up)")
    parser.add_argument("--project", required=True,
                        help=f"FL project = MLflow experiment = registered model name ({PROJECT_RULE})")
    parser.add_argument("--ml-repo", default=None, metavar="FOLDER|GIT-URL",
                        help="the ML repository in FLOps' contract (model_manager.py with ModelManager, conda.yaml "
                             "or requirements.txt): a folder, or a git URL (https://, ssh://, file://; cloned into "
                             "the state dir). Default: the scikit-learn example shipped with flops-mlops")
    parser.add_argument("--revision", default=None, help="branch, tag or commit of a git --ml-repo (default: its "
                                                         "default branch)")
    parser.add_argument("--flavor", choices=FLAVORS, default=None,
                        help="MLflow flavour the best model is logged with (FLOps' names; default: inferred from "
                             "get_model()'s type)")
    parser.add_argument("--data", type=Path, default=None, metavar="DIR",
                        help="each learner's own data: learner i gets DIR/learner-<i>/ as FLOPS_DATA_DIR (default: "
                             "none; the examples then split scikit-learn's bundled digits themselves)")
    parser.add_argument("--rounds", type=int, default=3,
                        help="training rounds (default 3); hierarchical: per cycle, in every cluster")
    parser.add_argument("--learners", type=int, default=None, help="learner processes (default 2; classic mode)")
    parser.add_argument("--min-learners", type=int, default=0,
                        help="learners a round needs to go on when others fail (default 0: all of them); "
                             "hierarchical: in each cluster")
    parser.add_argument("--mode", choices=MODES, default="classic",
                        help="classic (default): one aggregator, the learners are its clients; hierarchical "
                             "(FLOps' hierarchical mode): a root aggregator runs --cycles cycles over --clusters "
                             "cluster aggregators, each of which runs --rounds rounds with its own "
                             "--learners-per-cluster learners and returns their average; only the root logs")
    parser.add_argument("--clusters", type=int, default=None, help="hierarchical: cluster aggregators (default 2)")
    parser.add_argument("--learners-per-cluster", type=int, default=None,
                        help="hierarchical: learners of each cluster aggregator (default 2)")
    parser.add_argument("--cycles", type=int, default=None, help="hierarchical: training cycles (default 1)")
    parser.add_argument("--min-clusters", type=int, default=None,
                        help="hierarchical: cluster aggregators a cycle needs to go on when others fail (default "
                             "0: all of them)")
    parser.add_argument("--seed", type=int, default=42,
                        help="seed the repository's data split may read as FLOPS_SEED (default 42)")
    parser.add_argument("--better", choices=BETTER_CHOICES, default="loss",
                        help="which round's model is best: lowest aggregated loss (default) or highest accuracy")
    parser.add_argument("--alias", default="champion", help="registry alias for the new version (default champion)")
    parser.add_argument("--timeout", type=float, default=600, help="give up after this many seconds (default 600)")
    parser.add_argument("--round-timeout", type=float, default=300,
                        help="seconds a learner's fit_model or evaluate_model may take; a learner past it leaves "
                             "(default 300)")
    parser.add_argument("--engine", choices=["legacy", "deployment"], default="legacy",
                        help="Flower API: legacy start_server/start_client (default, fast) or the deployment "
                             "engine (SuperLink, SuperNodes, flwr run)")
    parser.add_argument("--json", action="store_true",
                        help="print the summary as JSON on stdout (progress goes to stderr)")
    parser.add_argument("--publish-kept", action="store_true",
                        help="train nothing: register the best model an earlier training of the project kept on "
                             "disk when its final upload failed (a store was down), as that training would have")
    return parser


def round_command(config, args) -> int:
    """`round`: its flags checked, then one training of the project, holding the project's lock
    (fl/recovery.py) from the repository's checks to the summary."""
    tenant = config.tenant(args.tenant)
    work_dir = config.state_dir / "fl" / tenant.id / args.project
    try:
        validate_project(args.project, "--project")
        settings = FLSettings(project=args.project, tracking_uri=config.tracking_uri(tenant), rounds=args.rounds,
                              min_learners=args.min_learners, seed=args.seed,
                              better=args.better, alias=args.alias, timeout=args.timeout,
                              round_timeout=args.round_timeout, flavor=args.flavor or "",
                              model_dir=work_dir / "model", **mode_settings(args))
        settings.check("aggregator")
        learners = settings.clusters * settings.learners if settings.hierarchical else settings.learners
        if args.data is not None:
            missing = [f"learner-{i}" for i in range(learners) if not (args.data / f"learner-{i}").is_dir()]
            if missing:
                raise SettingsError(f"--data: {args.data} has no folder {', '.join(missing)} (learner i reads "
                                    f"DIR/learner-<i>/)")
    except SettingsError as exc:
        raise ConfigError(str(exc)) from None
    with project_lock(work_dir, tenant.id, args.project):
        return train(config, args, tenant, work_dir, settings, learners)


def train(config, args, tenant, work_dir: Path, settings: FLSettings, learners: int) -> int:
    progress = sys.stderr if args.json else sys.stdout

    def say(text: str) -> None:
        print(text, file=progress, flush=True)

    try:
        repo = resolve(args.ml_repo or str(repository_folder("")), args.revision, config.state_dir / "fl" / "repos")
        dependencies = repo.dependencies()
        say(f"ML repository: {repo.source}" + (f" at {repo.revision}" if repo.revision else "")
            + f" (tag {repo.tag}; {dependencies.file.name}: {len(dependencies.requirements)} requirements)")
        for note in dependencies.notes:
            say(f"  {note}")
        environment = for_repository(dependencies, progress=lambda text, **_: say(text))
        say(f"environment: {environment.description}")
        # What the project writes from here on (best model, logs, the actors' files) is its owner's only, as the
        # rest of the state dir: folders 0700, files 0600 (the umask the FL processes inherit).
        for folder in (config.state_dir / "fl", config.state_dir / "fl" / tenant.id, work_dir):
            private_dir(folder)
        os.umask(0o077)
        runtime = Runtime(environment.python, environment.variables(work_dir / "runtime"))
        settings = replace(settings, ml_repo=str(repo.folder), ml_repo_tag=repo.tag)
        if args.publish_kept:
            return publish(config, args, tenant, work_dir, settings, runtime, say)
        checked = preflight(replace(settings, learners=learners), runtime, work_dir,
                            args.data.resolve() if args.data else None)
    except (RepoError, PreflightError) as exc:
        raise ConfigError(str(exc)) from None
    settings = replace(settings, flavor=settings.flavor or checked["flavor"])
    say(f"contract: holds ({checked['arrays']} parameter arrays, {checked['parameters']:,} parameters; flavour "
        f"{settings.flavor}" + ("" if args.flavor else ", inferred from get_model()") + "; "
        + ("input example from get_input_example()" if checked.get("input_example") else
           "no get_input_example(): the model will be logged without a signature or input example") + ")")
    # After the repository's checks: a broken repository is named (exit 2) whether the stack is up or not.
    if not is_healthy(settings.tracking_uri, client_verify(config)):
        raise FLRunError(f"tracking server of tenant {tenant.id} at {settings.tracking_uri} is not answering; "
                         f"start the stack first: flops-mlops --config {args.config} up --detach")
    admin = project_admin(config, tenant)
    closed = close_stale_runs(admin, settings.project)
    if closed:
        say(f"marked FAILED: {len(closed)} run(s) an earlier training of {settings.project} left RUNNING "
            f"(tag flops.failure): {', '.join(closed)}")
    login = project_login(config, tenant, settings.project, admin)

    def on_event(event: dict[str, Any]) -> None:
        if event["event"] == "learner_failed":
            role = " (cluster aggregator)" if event.get("role") == "cluster aggregator" else ""
            say(f"{event['learner']}{role} failed (exit {event['code']}): {event['message']}")
            return
        if event["event"] == "notice":
            say(f"note: {event['message']}")
            return
        say(round_line(event))

    shape = (f"hierarchical, {settings.cycles} cycles over {settings.clusters} cluster aggregators, each "
             f"{settings.rounds} rounds with {settings.learners} learners" if settings.hierarchical else
             f"{settings.rounds} rounds, {settings.learners} learners")
    say(f"FL project {settings.project} for tenant {tenant.id}: {shape} ({args.engine} engine), tracking at "
        f"{settings.tracking_uri}")
    try:
        summary = run_project(settings, work_dir, on_event, engine=args.engine, env=login, runtime=runtime,
                              data_dir=args.data.resolve() if args.data else None)
    except FLRunError as exc:
        if exc.summary and exc.summary.get("model_uri"):
            say(f"the training could not go on; the best model so far ({settings.words[0]} "
                f"{exc.summary['best_round']}) is "
                f"registered: {exc.summary['model_uri']} (version {exc.summary['model_version']})")
        elif (kept := BestModel(settings.model_dir).kept()) is not None:
            say(f"the best model ({settings.words[0]} {kept.round}) is kept in "
                f"{settings.model_dir} but not registered; once the stores answer again, register it with: "
                f"{finish_command(args, tenant.id)}")
        raise
    if args.json:
        keys = ("project", "experiment_id", "run_ids", "best_round", "better", "model_uri", "model_version",
                "logged_model_uri", "flavor", "signature", "model_bytes", "ui_url", "best_run_url", "model_url",
                "model_dir", "aggregator_address", "rounds", "failed_learners", "mode", "clusters", "cycles",
                "unit")
        print(json.dumps({key: summary.get(key) for key in keys}, indent=2))
        return 0
    print("\n" + "\n".join(summary_lines(summary)))
    print(f"log in as:        admin, password {admin_password_key(tenant.id)} in {config.secrets_file} "
          f"(or a user of your own: flops-mlops user add --tenant {tenant.id} --name NAME)")
    return 0


def finish_command(args, tenant_id: str) -> str:
    """The `round --publish-kept` line that registers what this training kept."""
    repo = f" --ml-repo {args.ml_repo}" + (f" --revision {args.revision}" if args.revision else "") \
        if args.ml_repo else ""
    flags = f" --flavor {args.flavor}" if args.flavor else ""
    alias = f" --alias {args.alias}" if args.alias != "champion" else ""
    return (f"flops-mlops --config {args.config} round --tenant {tenant_id} --project {args.project}{repo}{flags}"
            f"{alias} --publish-kept")


def publish(config, args, tenant, work_dir: Path, settings: FLSettings, runtime: Runtime, say) -> int:
    """`round --publish-kept`: register the kept best model of an earlier training (fl/publish.py)."""
    kept = BestModel(settings.model_dir).kept()
    if kept is None:
        raise ConfigError(f"--publish-kept: {settings.model_dir} holds no kept model (best.npz and best.json): "
                          f"no training of {settings.project} for tenant {tenant.id} kept one on this machine")
    if not is_healthy(settings.tracking_uri, client_verify(config)):
        raise FLRunError(f"tracking server of tenant {tenant.id} at {settings.tracking_uri} is not answering; "
                         f"start the stack first: flops-mlops --config {args.config} up --detach")
    say(f"publishing the kept model of {settings.project} ({settings.words[0]} {kept.round}, loss {kept.loss:.4f}, "
        f"accuracy {kept.accuracy:.4f}) from {settings.model_dir}")
    published = publish_kept(settings, work_dir, project_login(config, tenant, settings.project), runtime)
    if args.json:
        print(json.dumps(published, indent=2))
    else:
        print(f"registered:       {published['model_uri']} (version {published['model_version']}, "
              f"{published['logged_model_uri']}; {published['flavor']}), in the run of {settings.words[0]} "
              f"{published['best_round']} ({published['run_id']})")
    return 0


HIERARCHICAL_FLAGS = ("clusters", "learners_per_cluster", "cycles", "min_clusters")


def mode_settings(args) -> dict[str, Any]:
    """The mode's settings from the flags; SettingsError for a flag of the other mode (it would be ignored)."""
    def flag(name: str) -> str:
        return "--" + name.replace("_", "-")

    given = [flag(name) for name in HIERARCHICAL_FLAGS if getattr(args, name) is not None]
    if args.mode == "classic":
        if given:
            raise SettingsError(f"{', '.join(given)}: only for --mode hierarchical (this is a classic run: one "
                                "aggregator and --learners learners)")
        return {"learners": 2 if args.learners is None else args.learners}
    if args.learners is not None:
        raise SettingsError("--learners: in hierarchical mode say --clusters K --learners-per-cluster N (K*N "
                            "learners in all)")
    if args.engine != "legacy":
        raise SettingsError(f"--engine {args.engine}: hierarchical mode runs on the legacy engine only")
    defaults = {"clusters": 2, "learners_per_cluster": 2, "cycles": 1, "min_clusters": 0}
    values = {name: default if getattr(args, name) is None else getattr(args, name)
              for name, default in defaults.items()}
    if values["learners_per_cluster"] < 1:
        raise SettingsError(f"--learners-per-cluster: expected at least 1, got {values['learners_per_cluster']}")
    return {"mode": "hierarchical", "clusters": values["clusters"], "learners": values["learners_per_cluster"],
            "cycles": values["cycles"], "min_clusters": values["min_clusters"]}


def project_admin(config, tenant) -> AuthAdmin:
    """The tenant's admin session with its tracking server (the password from the secrets file)."""
    tracker = TrackingServer(config, tenant)
    return AuthAdmin(tracker.local_uri, Secrets.load(config).admin_password(tenant.id), verify=tracker.verify)


def project_login(config, tenant, project: str, admin: AuthAdmin | None = None) -> dict[str, str]:
    """The aggregator's own MLflow login: user fl-<project>, EDIT on this project only, a new password each run.

    Created (or re-keyed) here as the tenant's admin; only the aggregator gets it, learners get no credentials.
    With tracking.tls also the CA it verifies the server against (MLFLOW_TRACKING_SERVER_CERT_PATH).
    """
    admin = admin or project_admin(config, tenant)
    password = new_password()
    user = ensure_project_user(admin, project, password)
    return {"MLFLOW_TRACKING_USERNAME": user, "MLFLOW_TRACKING_PASSWORD": password, **client_env(config)}
