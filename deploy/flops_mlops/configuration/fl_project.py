"""An FL project's shape, the keys every target reads the same way (``FLProject``): its learners and rounds, its
flavour, and FLOps' hierarchical mode (clusters, cycles). ``oakestra.projects[]`` adds where the project runs on
Oakestra (oakestra.py); ``compose.fl`` is the project of compose's ``fl`` profile (``ComposeProject``).
``project_problem`` holds the rules that span these keys."""

from __future__ import annotations

from typing import Annotated, Literal

from pydantic import Field, StrictInt, StrictStr

from .schema import Broken, Model, doc
from .values import Positive, ProjectName, between, explained

Amount = Annotated[StrictInt, Field(ge=0), explained("expected 0 or more, got {value!r}")]
Learners = between(1, 253)
ClusterName = Annotated[StrictStr, Field(pattern=r"^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$"),
                        explained("{value!r} is not an Oakestra cluster name (letters, digits, '.', '_', '-')")]
MAX_LEARNERS = 64  # learners of one project, all clusters together


class FLProject(Model):
    """An FL project: an aggregator and its learners (classic), or a root aggregator over cluster aggregators
    with their learners each (hierarchical)."""

    name: ProjectName = doc("project name = MLflow experiment = registered model (letters and digits)")
    learners: Learners = doc("number of learners (FLOPS_LEARNERS); hierarchical: per cluster", 2)
    rounds: Positive = doc("training rounds (FLOPS_ROUNDS); hierarchical: per cycle, in every cluster", 3)
    flavor: Literal["sklearn", "pytorch", "keras"] | None = doc(
        "MLflow flavour of the model (FLOPS_FLAVOR; none: inferred from get_model())", None)
    min_learners: Amount = doc("learners a round needs to go on when others fail (FLOPS_MIN_LEARNERS; 0: all)", 0)
    mode: Literal["classic", "hierarchical"] = doc(
        "classic: one aggregator and `learners` learners; hierarchical (FLOps' hierarchical mode): a root "
        "aggregator (FLOPS_MODE) and, per cluster in `clusters`, a cluster aggregator and `learners` learners; "
        "only the root logs to MLflow", "classic")
    clusters: list[ClusterName] = doc(
        "hierarchical: the clusters, one cluster aggregator and its learners each (on Oakestra the names of the "
        "clusters the services are pinned to: SLA constraints direct and clusters/allowed with that name)", [])
    cycles: Positive = doc("hierarchical: training cycles of the root (FLOPS_CYCLES); each runs `rounds` rounds "
                           "in every cluster", 1)
    min_clusters: Amount = doc("hierarchical: cluster aggregators a cycle needs to go on when others fail "
                               "(FLOPS_MIN_CLUSTERS; 0: all)", 0)

    @property
    def all_learners(self) -> int:
        """Learners of the whole project: ``learners`` per cluster in hierarchical mode."""
        return self.learners * (len(self.clusters) if self.mode == "hierarchical" else 1)


class ComposeProject(FLProject):
    """The project compose's ``fl`` profile runs against the first tenant (its image: FLOPS_FL_IMAGE or
    images.fl_actor; .env's FLOPS_FL_PROJECT, FLOPS_FL_ROUNDS, FLOPS_FL_CYCLES and FLOPS_FL_FLAVOR override
    name, rounds, cycles and flavor when compose runs)."""

    name: ProjectName = doc("project name = MLflow experiment = registered model (letters and digits)",
                            "composedemo")


class Compose(Model):
    """What `render --target compose` adds to the stores and tracking servers."""

    fl: ComposeProject = doc("the FL project of the `fl` profile (`docker compose run --rm --use-aliases "
                             "fl-aggregator`)", ComposeProject())


def project_problem(project: FLProject, where: str) -> None:
    """Rules that span a project's keys: raises Broken naming ``where``.<key>, the value and what is expected."""

    def fail(key: str, message: str) -> Broken:
        return Broken(f"{where}.{key}", message)

    if project.min_learners > project.learners:
        raise fail("min_learners", f"expected 0 (all) to {project.learners} (the project's learners"
                                   f"{' per cluster' if project.mode == 'hierarchical' else ''}), got "
                                   f"{project.min_learners}")
    if project.mode == "classic":
        extra = [key for key, unset in (("clusters", []), ("cycles", 1), ("min_clusters", 0))
                 if getattr(project, key) != unset]
        if extra:
            raise fail(extra[0], "only for mode: hierarchical (this project is classic: one aggregator and its "
                                 "learners)")
        return
    if not project.clusters:
        raise fail("clusters", "mode hierarchical needs the clusters (one cluster aggregator and its learners "
                               "each)")
    seen = set()
    for k, name in enumerate(project.clusters):
        if name in seen:
            raise fail(f"clusters[{k}]", f"cluster {name!r} is listed twice")
        seen.add(name)
    if project.min_clusters > len(project.clusters):
        raise fail("min_clusters", f"expected 0 (all) to {len(project.clusters)} (the project's clusters), "
                                   f"got {project.min_clusters}")
    if project.all_learners > MAX_LEARNERS:
        raise fail("learners", f"{len(project.clusters)} clusters x {project.learners} learners do not fit one "
                               f"project (at most {MAX_LEARNERS} learners in all)")
