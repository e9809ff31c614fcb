"""Settings of one FL project run, read from FLOPS_* environment variables and matching flags.

The aggregator and learner entry points (and the containers and Oakestra services that run them) are
configured only through these; command-line flags override the environment.

    FLOPS_TRACKING_URI        aggregator only: the tenant's MLflow tracking server (http://host:port);
                              "off" keeps only the best model on disk (benchmark baseline)
    FLOPS_UI_URL              aggregator only: the tracking server as a browser on the user's machine reaches it
                              (http://host:port), for the links the summary prints (default: FLOPS_TRACKING_URI;
                              set it where the aggregator's address is one only it can resolve, as in compose)
    FLOPS_PROJECT             FL project name = MLflow experiment = registered model (letters and digits)
    FLOPS_ML_REPO             the ML repository's folder (FLOps' contract: model_manager.py, a dependency file);
                              default: the scikit-learn example shipped with flops-mlops (examples/sklearn)
    FLOPS_FLAVOR              aggregator only: sklearn, pytorch or keras (FLOps' names): the MLflow flavour the best
                              model is logged with (default: inferred from get_model()'s type)
    FLOPS_ML_REPO_TAG         aggregator only: the repository's commit or content hash (the per-project image's
                              tag), recorded with the model (default: a hash of FLOPS_ML_REPO's files)
    FLOPS_ROUNDS              number of training rounds (default 3)
    FLOPS_LEARNERS            number of learners the aggregator waits for (default 2); the repository's data
                              split reads it too
    FLOPS_MIN_LEARNERS        aggregator only: learners a round needs to go on after others failed (default 0: all)
    FLOPS_SEED                seed the repository's data split may read (default 42; the examples do)
    FLOPS_AGGREGATOR_ADDRESS  host:port the aggregator listens on and learners connect to (default 127.0.0.1:8080)
    FLOPS_LEARNER_INDEX       learner only: which learner this is, 0..LEARNERS-1 (the repository reads it)
    FLOPS_DATA_DIR            learner only: this learner's own data folder, read by the repository (optional)
    FLOPS_BETTER              aggregator only: what makes a round's model better: loss (lowest aggregated
                              evaluation loss, default) or accuracy (highest aggregated accuracy)
    FLOPS_ALIAS               aggregator only: registry alias set on the new model version (default champion)
    FLOPS_MODEL_DIR           aggregator only: folder that holds the one best global model (default ./flops-model)
    FLOPS_TIMEOUT             seconds after which the process gives up and exits non-zero (default 600)
    FLOPS_ROUND_TIMEOUT       seconds one round may take; a learner whose fit_model or evaluate_model runs longer
                              gives up and leaves (default 300)

Hierarchical FL (FLOps' hierarchical mode): one root aggregator runs FLOPS_CYCLES cycles over FLOPS_CLUSTERS cluster
aggregators (``cluster``); each cycle, every cluster aggregator runs FLOPS_ROUNDS rounds with its own FLOPS_LEARNERS
learners and returns their average. Only the root logs to MLflow.

    FLOPS_MODE                aggregator only: classic (default: one aggregator, the learners are its clients) or
                              hierarchical (the root aggregator: its clients are cluster aggregators)
    FLOPS_CLUSTERS            root aggregator only: cluster aggregators it waits for (hierarchical mode)
    FLOPS_MIN_CLUSTERS        root aggregator only: cluster aggregators a cycle needs to go on after others failed
                              (default 0: all)
    FLOPS_CYCLES              root aggregator only: training cycles (default 1); each runs FLOPS_ROUNDS rounds in
                              every cluster
    FLOPS_CLUSTER_INDEX       cluster aggregator only: which cluster this is, 0..CLUSTERS-1 (named cluster-<i>)
    FLOPS_CLUSTER_ADDRESS     cluster aggregator only: host:port it listens on for its learners (they have it as
                              their FLOPS_AGGREGATOR_ADDRESS; its own FLOPS_AGGREGATOR_ADDRESS is the root's)
In hierarchical mode FLOPS_LEARNERS is the learners per cluster for the root and a cluster aggregator, and the
learners of all clusters for a learner (its FLOPS_LEARNER_INDEX counts across clusters: the data split).
"""

from __future__ import annotations

import argparse
import math
import os
import re
from dataclasses import dataclass, field, fields
from pathlib import Path

from ..configuration.values import PROJECT_RULE, Host, Port, ProjectName, problem

# More learner processes than this on one project is a mistake (each is a process of its own); a longer run than a
# day is one too.
MAX_LEARNERS = 64
MAX_TIMEOUT = 86400.0
MAX_SEED = 2**32 - 1  # scikit-learn's and NumPy's seeds are unsigned 32-bit

# Flower and MLflow report telemetry and look for updates by default; FL processes never do (no internet at
# the edge, and nothing about a project leaves it). Defaults only: an explicit setting wins.
NO_TELEMETRY = {"FLWR_TELEMETRY_ENABLED": "0", "FLWR_DISABLE_UPDATE_CHECK": "1",
                "MLFLOW_DISABLE_TELEMETRY": "true", "DO_NOT_TRACK": "true"}


def no_telemetry_defaults() -> None:
    for key, value in NO_TELEMETRY.items():
        os.environ.setdefault(key, value)


ADDRESS_PATTERN = re.compile(r"^(?P<host>[A-Za-z0-9.-]+):(?P<port>[0-9]{1,5})$")
BETTER_CHOICES = ("loss", "accuracy")
MODES = ("classic", "hierarchical")
FLAVORS = ("sklearn", "pytorch", "keras")  # FLOps' names (flops_utils.types.MLModelFlavor), as flavors.py logs them
URL_PATTERN = r"^https?://[A-Za-z0-9.:\[\]-]+/?$"


class SettingsError(ValueError):
    """A bad setting; the message names the variable/flag and the value."""


def validate_project(value: str, where: str = "project") -> str:
    """Project names reach MLflow experiment and model names, folders and Oakestra service names."""
    if problem(ProjectName, value) is not None:
        raise SettingsError(f"{where}: {value!r} is not a valid project name ({PROJECT_RULE})")
    return value


def parse_address(value: str, where: str = "FLOPS_AGGREGATOR_ADDRESS") -> tuple[str, int]:
    match = ADDRESS_PATTERN.fullmatch(value or "")
    if not match or problem(Host, match["host"]) is not None or problem(Port, int(match["port"])) is not None:
        raise SettingsError(f"{where}: {value!r} is not host:port (for example 127.0.0.1:8080)")
    return match["host"], int(match["port"])


A, L, B = ("aggregator",), ("learner",), ("aggregator", "learner")
C, AC, ALC = ("cluster",), ("aggregator", "cluster"), ("aggregator", "learner", "cluster")


def _setting(default, roles: tuple[str, ...], text: str):
    return field(default=default, metadata={"roles": roles, "help": text})


@dataclass(frozen=True)
class FLSettings:
    project: str = _setting("", A, "FL project = MLflow experiment = registered model name")
    ml_repo: str = _setting("", B, "the ML repository's folder (default: the bundled scikit-learn example)")
    flavor: str = _setting("", A, "sklearn, pytorch or keras (default: inferred from get_model())")
    ml_repo_tag: str = _setting("", A, "the repository's commit or content hash, recorded with the model")
    tracking_uri: str = _setting("", A, "the tenant's tracking server, http://host:port; off: no tracking")
    ui_url: str = _setting("", A, "the tracking server as a browser reaches it, for printed links "
                                  "(default: the tracking URI)")
    rounds: int = _setting(3, AC, "training rounds (hierarchical: per cycle, in every cluster)")
    learners: int = _setting(2, ALC, "number of learners (the aggregator waits for all; the data split); "
                                       "hierarchical: per cluster")
    min_learners: int = _setting(0, AC, "learners a round needs to go on after others failed (0: all)")
    seed: int = _setting(42, B, "seed the repository's data split may read")
    aggregator_address: str = _setting("127.0.0.1:8080", ALC, "host:port the aggregator listens on / learners "
                                                                 "(hierarchical: cluster aggregators) join")
    learner_index: int = _setting(-1, L, "which learner this is, 0..learners-1")
    data_dir: str = _setting("", L, "this learner's own data folder (FLOPS_DATA_DIR, read by the repository)")
    better: str = _setting("loss", A, "best model: lowest aggregated loss, or highest accuracy")
    alias: str = _setting("champion", A, "registry alias pointed at the new model version")
    model_dir: Path = _setting(Path("flops-model"), A, "folder that holds the one best global model")
    timeout: float = _setting(600.0, ALC, "seconds before giving up (exit 1)")
    round_timeout: float = _setting(300.0, ALC, "seconds one round (a learner's fit or evaluation) may take")
    mode: str = _setting("classic", A, "classic, or hierarchical (a root aggregator over cluster aggregators)")
    clusters: int = _setting(0, A, "hierarchical: cluster aggregators the root waits for")
    min_clusters: int = _setting(0, A, "hierarchical: cluster aggregators a cycle needs after others failed (0: all)")
    cycles: int = _setting(1, A, "hierarchical: training cycles (each runs the rounds in every cluster)")
    cluster_index: int = _setting(-1, C, "which cluster this is, 0..clusters-1")
    cluster_address: str = _setting("", C, "host:port this cluster aggregator listens on for its learners")

    @property
    def hierarchical(self) -> bool:
        return self.mode == "hierarchical"

    @property
    def members(self) -> int:
        """The aggregator's Flower clients: its learners, or (hierarchical root) its cluster aggregators."""
        return self.clusters if self.hierarchical else self.learners

    @property
    def required_members(self) -> int:
        """Clients a round (cycle) needs: the minimum, or all of them."""
        return (self.min_clusters or self.clusters) if self.hierarchical else self.required_learners

    @property
    def server_rounds(self) -> int:
        """The aggregator's own rounds: training rounds, or (hierarchical root) cycles."""
        return self.cycles if self.hierarchical else self.rounds

    @property
    def words(self) -> tuple[str, str, str]:
        """How messages name a round, a client and the minimum's flag."""
        if self.hierarchical:
            return "cycle", "cluster aggregators", "--min-clusters"
        return "round", "learners", "--min-learners"

    @property
    def required_learners(self) -> int:
        """Learners a round needs: min_learners, or all of them."""
        return self.min_learners or self.learners

    def check(self, role: str) -> "FLSettings":
        if role == "aggregator":
            validate_project(self.project, "FLOPS_PROJECT/--project")
            if self.tracking_uri != "off" and not re.fullmatch(URL_PATTERN, self.tracking_uri or ""):
                raise SettingsError(f"FLOPS_TRACKING_URI/--tracking-uri: {self.tracking_uri!r} is not "
                                    "http(s)://host:port (or off)")
            if self.ui_url and not re.fullmatch(URL_PATTERN, self.ui_url):
                raise SettingsError(f"FLOPS_UI_URL/--ui-url: {self.ui_url!r} is not http(s)://host:port")
            if self.better not in BETTER_CHOICES:
                raise SettingsError(f"FLOPS_BETTER/--better: {self.better!r} is not one of {', '.join(BETTER_CHOICES)}")
            if not re.fullmatch(r"^[A-Za-z][A-Za-z0-9_-]{0,63}$", self.alias):
                raise SettingsError(f"FLOPS_ALIAS/--alias: {self.alias!r} is not a valid alias")
            if self.flavor not in ("", *FLAVORS):
                raise SettingsError(f"FLOPS_FLAVOR/--flavor: {self.flavor!r} is not one of {', '.join(FLAVORS)}")
            if not 0 <= self.min_learners <= self.learners:
                raise SettingsError(f"FLOPS_MIN_LEARNERS/--min-learners: expected 0 (all) to {self.learners} (the "
                                    f"learners), got {self.min_learners}")
            if self.mode not in MODES:
                raise SettingsError(f"FLOPS_MODE/--mode: {self.mode!r} is not one of {', '.join(MODES)}")
            if self.hierarchical:
                if self.clusters < 1:
                    raise SettingsError(f"FLOPS_CLUSTERS/--clusters: hierarchical mode needs at least 1 cluster "
                                        f"aggregator, got {self.clusters}")
                if self.cycles < 1:
                    raise SettingsError(f"FLOPS_CYCLES/--cycles: expected at least 1, got {self.cycles}")
                if not 0 <= self.min_clusters <= self.clusters:
                    raise SettingsError(f"FLOPS_MIN_CLUSTERS/--min-clusters: expected 0 (all) to {self.clusters} (the "
                                        f"clusters), got {self.min_clusters}")
                if self.clusters * self.learners > MAX_LEARNERS:
                    raise SettingsError(f"FLOPS_CLUSTERS/--clusters: {self.clusters} clusters x {self.learners} "
                                        f"learners are more processes than one project should start (at most "
                                        f"{MAX_LEARNERS} learners)")
        if role == "cluster":
            if self.cluster_index < 0:
                raise SettingsError(f"FLOPS_CLUSTER_INDEX/--cluster-index: expected 0 or more, got "
                                    f"{self.cluster_index}")
            if not 0 <= self.min_learners <= self.learners:
                raise SettingsError(f"FLOPS_MIN_LEARNERS/--min-learners: expected 0 (all) to {self.learners} (the "
                                    f"cluster's learners), got {self.min_learners}")
            parse_address(self.cluster_address, "FLOPS_CLUSTER_ADDRESS")
        if role == "learner" and not 0 <= self.learner_index < self.learners:
            raise SettingsError(f"FLOPS_LEARNER_INDEX/--learner-index: {self.learner_index} is outside "
                                f"0..{self.learners - 1}")
        for name, low in (("rounds", 1), ("learners", 1)):
            if getattr(self, name) < low:
                raise SettingsError(f"FLOPS_{name.upper()}/--{name.replace('_', '-')}: expected at least {low}, "
                                    f"got {getattr(self, name)}")
        if not 0 <= self.seed <= MAX_SEED:
            raise SettingsError(f"FLOPS_SEED/--seed: expected 0-{MAX_SEED} (a seed of the data generator), "
                                f"got {self.seed}")
        if self.learners > MAX_LEARNERS:
            raise SettingsError(f"FLOPS_LEARNERS/--learners: {self.learners} learners are more processes than one "
                                f"project should start (at most {MAX_LEARNERS})")
        if not (math.isfinite(self.timeout) and 0 < self.timeout <= MAX_TIMEOUT):
            raise SettingsError(f"FLOPS_TIMEOUT/--timeout: expected seconds in (0, {MAX_TIMEOUT}], got {self.timeout}")
        if not (math.isfinite(self.round_timeout) and 0 < self.round_timeout <= MAX_TIMEOUT):
            raise SettingsError(f"FLOPS_ROUND_TIMEOUT/--round-timeout: expected seconds in (0, {MAX_TIMEOUT}], got "
                                f"{self.round_timeout}")
        parse_address(self.aggregator_address)
        return self


HIERARCHICAL_ONLY = {"mode", "clusters", "min_clusters", "cycles"}


def environment(settings: FLSettings, role: str) -> dict[str, str]:
    """The FLOPS_* variables that give a process of ``role`` (aggregator or learner) these settings.

    The one mapping from settings to environment: the runner, and the Oakestra SLAs, start FL processes with it;
    ``from_environment`` reads it back.
    """
    variables = {}
    for f in fields(FLSettings):
        value = str(getattr(settings, f.name))
        if f.name in HIERARCHICAL_ONLY and not settings.hierarchical:
            continue  # a classic aggregator's environment stays as it was before the hierarchical mode
        if role in f.metadata["roles"] and value != "":  # empty: unset, the reader's default
            variables[f"FLOPS_{f.name.upper()}"] = value
    return variables


def from_environment(argv: list[str] | None, role: str, description: str) -> FLSettings:
    """Settings from FLOPS_* variables, overridden by flags; raises SettingsError on bad values."""
    parser = argparse.ArgumentParser(prog=f"python -m flops_mlops.fl.{role}", description=description)
    values: dict[str, object] = {}
    mine = [f for f in fields(FLSettings) if role in f.metadata["roles"]]
    for f in mine:
        env = os.environ.get(f"FLOPS_{f.name.upper()}")
        parser.add_argument(f"--{f.name.replace('_', '-')}", dest=f.name, default=None,
                            help=f"{f.metadata['help']} (default: $FLOPS_{f.name.upper()} or {f.default!s})")
        if env is not None and env != "":
            values[f.name] = env
    args = parser.parse_args(argv)
    for f in mine:
        if getattr(args, f.name) is not None:
            values[f.name] = getattr(args, f.name)
    converted: dict[str, object] = {}
    for f in mine:
        if f.name not in values:
            continue
        raw = values[f.name]
        kind = type(f.default)
        try:
            converted[f.name] = Path(str(raw)) if isinstance(f.default, Path) else kind(raw)
        except ValueError:
            raise SettingsError(f"FLOPS_{f.name.upper()}/--{f.name.replace('_', '-')}: expected "
                                f"{kind.__name__}, got {raw!r}") from None
    return FLSettings(**converted).check(role)
