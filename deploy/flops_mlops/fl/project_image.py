"""`flops-mlops build-fl-image`: an FL project's actor image, built from its ML repository, offline.

The recipe is deploy/images/fl-project/Dockerfile (shipped in the wheel as flops_mlops/fl/fl-project-image); this
module prepares its build context and runs ``docker build``:
- ``repo/``: the repository's files at the resolved revision (a clone's .git left out);
- ``wheelhouse/``: the repository's dependencies plus flops-mlops[fl]'s, fetched once per dependency set into
  ``<cache>/../fl-wheels/<key>`` (pip, with this machine's configuration: torch's CPU build comes from where pip
  finds it here, e.g. a find-links folder);
- ``flops-mlops/``: our wheel, built from this checkout (a layer of its own);
- ``requirements.txt`` / ``constraints.txt``: the repository's requirements and flops-mlops[fl]'s; the runtime's
  versions of everything the repository does not pin (``environments.held_versions``: the same rule as the
  native virtualenvs).
The image is ``flops-mlops/fl-<project>:<tag>``, the tag being the repository's commit (a clone) or a hash of its
content (a folder): the name compose's fl profile and the project's Oakestra SLA use (``image_name``).

With ``--out`` no Docker daemon is used (``build_oci``): the same image as an OCI image index with a manifest per
``--platform``, built from a recipe (images.recipe) that says what the Dockerfile holds: Debian's python3, the
accounts fl and model, the venv of the same requirements and pins (each platform's wheels from the index, without
emulation), the repository in /srv/fl/repo. The contract is checked first, on this machine, in the project's
environment (fl/environments.py), as the Dockerfile's last step checks it.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from .. import bundled
from ..configuration.schema import ConfigError
from ..processes import StackError
from ..images import recipe as image_recipe
from ..images.oci import IMAGE_TAG
from ..images.platforms import Platform, add_platform_argument, parse_platforms
from ..images.recipe import PATH, QUIET_PYTHON, Account, Recipe
from ..images.wheels import own_wheel
from .environments import default_cache, for_repository, held_versions, key_of, runtime_requirements
from .ml_repo import IGNORED_PARTS, MLRepo, RepoError, repository_folder, resolve
from .settings import PROJECT_RULE, SettingsError, validate_project

DEFAULT_BASE_IMAGE = "debian:bookworm-20250520-slim"  # as deploy/images/python/Dockerfile


def image_name(project: str, tag: str) -> str:
    """The actor image of ``project`` built from the repository whose tag is ``tag``."""
    return f"flops-mlops/fl-{project.lower()}:{tag}"


def add_build_fl_image_parser(commands):
    parser = commands.add_parser(
        "build-fl-image", help="build an FL project's actor image from its ML repository (offline, from wheels)",
        description="Build flops-mlops/fl-<project>:<tag>: the ML repository (FLOps' contract) and, in one "
                    "virtualenv, its dependencies plus the FL runtime; the project's aggregator and learners run "
                    "it (compose's fl profile, the project's Oakestra SLA). The tag is the repository's commit (a "
                    "git URL) or a hash of its files (a folder). Every package comes from a wheelhouse prepared "
                    "here (pip, with this machine's configuration), so the build itself needs no index; the "
                    "recipe is deploy/images/fl-project/Dockerfile. Needs a Docker engine and a checkout; with "
                    "--out no Docker at all: an OCI image index with a manifest per --platform (root, mmdebstrap; "
                    "docs/images.md).")
    parser.add_argument("--project", required=True, help=f"FL project ({PROJECT_RULE})")
    parser.add_argument("--ml-repo", default=None, metavar="FOLDER|GIT-URL",
                        help="the ML repository (default: the scikit-learn example)")
    parser.add_argument("--revision", default=None, help="branch, tag or commit of a git --ml-repo")
    parser.add_argument("--base-image", default=os.environ.get("FLOPS_BASE_IMAGE", DEFAULT_BASE_IMAGE),
                        help=f"Debian 12 base image (default $FLOPS_BASE_IMAGE or {DEFAULT_BASE_IMAGE})")
    parser.add_argument("--compose-env", type=Path, default=None, metavar="FILE",
                        help="also set the compose variables that run this project on the image in FILE (compose's "
                             ".env): " + ", ".join(COMPOSE_VARIABLES) + " (earlier values of them are replaced)")
    parser.add_argument("--out", default=None, metavar="PATH",
                        help="build without Docker, and write the image as an OCI layout folder, or an OCI archive "
                             "if PATH ends in .tar")
    add_platform_argument(parser)
    return parser


def build_fl_image_command(config, args) -> int:
    try:
        validate_project(args.project, "--project")
        repo = resolve(args.ml_repo or str(repository_folder("")), args.revision, config.state_dir / "fl" / "repos")
    except (SettingsError, RepoError) as exc:
        raise ConfigError(str(exc)) from None
    if args.out is not None:
        if args.compose_env is not None:
            raise ConfigError("--compose-env: compose runs images of the Docker engine, and --out builds without "
                              "it; load the image first (skopeo copy oci:PATH docker-daemon:NAME), or drop --out")
        out = Path(args.out).absolute()
        if not out.parent.is_dir():
            raise ConfigError(f"--out: {args.out!r}: its folder {str(out.parent)!r} does not exist")
        platforms = parse_platforms(args.platform)
        image = image_name(args.project, repo.tag)
        digest = build_oci(repo, args.project, platforms, out, progress=print)
        print(f"built {image} ({digest}) for {', '.join(p.name for p in platforms)} in {out}")
        return 0
    if shutil.which("docker") is None:
        raise ConfigError("build-fl-image: no docker command on this machine (--out builds without Docker)")
    if args.compose_env is not None and not args.compose_env.is_file():
        raise ConfigError(f"--compose-env: {args.compose_env} is not a file (compose's .env: flops-mlops secrets "
                          "init writes it)")
    image = build(repo, args.project, args.base_image, progress=print)
    if args.compose_env is not None:
        set_compose_variables(args.compose_env, {"FLOPS_FL_PROJECT": args.project, "FLOPS_FL_IMAGE": image,
                                                 "FLOPS_SERVE_IMAGE": image})
        print(f"{args.compose_env}: {', '.join(COMPOSE_VARIABLES)} set for {image}")
    print(f"built {image} ({image_size(image) / 1e9:.2f} GB): run its actors with python -m "
          "flops_mlops.fl.aggregator | python -m flops_mlops.fl.learner (compose: FLOPS_FL_IMAGE=" + image + ")")
    return 0


COMPOSE_VARIABLES = ("FLOPS_FL_PROJECT", "FLOPS_FL_IMAGE", "FLOPS_SERVE_IMAGE")


def set_compose_variables(path: Path, values: dict[str, str]) -> None:
    """``values`` as KEY=value lines at the end of the env file ``path``, earlier lines of those keys removed; the
    file keeps its mode (it holds the stack's passwords)."""
    kept = [line for line in path.read_text(encoding="utf-8").splitlines()
            if line.split("=", 1)[0].strip() not in values]
    path.write_text("\n".join([*kept, *(f"{key}={value}" for key, value in values.items())]) + "\n",
                    encoding="utf-8")


def build(repo: MLRepo, project: str, base_image: str, progress=print) -> str:
    """Build the project's actor image from ``repo``; returns its name."""
    image = image_name(project, repo.tag)
    dependencies = repo.dependencies()
    started = time.monotonic()
    with tempfile.TemporaryDirectory(prefix="flops-fl-image-") as folder:
        context = Path(folder)
        progress(f"preparing the build context of {image}: {repo.source} ({dependencies.file.name})", flush=True)
        shutil.copytree(repo.folder, context / "repo", ignore=shutil.ignore_patterns(*IGNORED_PARTS, "*.pyc"))
        wheelhouse, own = context / "wheelhouse", context / "flops-mlops"
        wheelhouse.mkdir()
        own_wheel(own)
        (context / "requirements.txt").write_text("\n".join([*dependencies.requirements, *runtime_requirements()])
                                                  + "\n", encoding="utf-8")
        (context / "constraints.txt").write_text("\n".join(held_versions(dependencies)) + "\n", encoding="utf-8")
        cache = default_cache().parent / "fl-wheels" / key_of(dependencies)
        fetch_wheels(context, cache, dependencies.file.name)
        for wheel in cache.glob("*.whl"):
            link_or_copy(wheel, wheelhouse / wheel.name)
        progress(f"docker build of {image} on {base_image} ({len(list(wheelhouse.glob('*.whl')))} wheels)",
                 flush=True)
        built = subprocess.run(["docker", "build", "--file", str(bundled.folder("fl_project_image") / "Dockerfile"),
                                "--build-arg", f"BASE_IMAGE={base_image}", "--build-arg", f"ML_REPO_TAG={repo.tag}",
                                "--label", f"io.flops.project={project}", "--tag", image, str(context)],
                               capture_output=True, text=True)
    if built.returncode != 0:
        tail = "\n".join("    " + line for line in (built.stdout + built.stderr).strip().splitlines()[-20:])
        raise StackError(f"docker build of {image} failed (exit {built.returncode}):\n{tail}")
    progress(f"{image} built in {time.monotonic() - started:.0f} s", flush=True)
    return image


FL_ACCOUNT, MODEL_ACCOUNT = Account("fl", 10002, "/srv/fl"), Account("model", 10003, "/srv/model")
REPO_IN_IMAGE = "/srv/fl/repo"


def project_recipe(project: str, tag: str, requirements: Path, constraints: Path, wheels: Path) -> Recipe:
    """What deploy/images/fl-project/Dockerfile holds, as a recipe: the venv of ``requirements`` (the repository's
    and flops-mlops[fl]) pinned by ``constraints``, pip looking in ``wheels`` too; the repository comes as a layer
    of its own (``repository_layer``)."""
    return Recipe(
        name=f"fl-{project.lower()}", packages=(), accounts=(FL_ACCOUNT, MODEL_ACCOUNT),
        requirement="the repository's requirements and flops-mlops[fl]",
        pip_requirements=("-r", str(requirements)), constraints=constraints, find_links=(wheels,),
        config={"Env": [PATH, *QUIET_PYTHON, f"FLOPS_ML_REPO={REPO_IN_IMAGE}", f"FLOPS_ML_REPO_TAG={tag}"],
                "User": FL_ACCOUNT.name, "WorkingDir": FL_ACCOUNT.home,
                "Labels": {"io.flops.ml-repo-tag": tag, "io.flops.project": project},
                "Cmd": ["python", "-c", "print('choose a role: python -m flops_mlops.fl.aggregator or "
                        "flops_mlops.fl.learner')"]})


def build_oci(repo: MLRepo, project: str, platforms: list[Platform], out: Path, progress=print) -> str:
    """The project's actor image as an OCI image index for ``platforms``, without Docker; returns its digest."""
    image = image_name(project, repo.tag)
    if not IMAGE_TAG.fullmatch(image):
        raise ConfigError(f"--project: {project!r} gives the image name {image!r}, which is not a valid name:tag")
    dependencies = repo.dependencies()
    check_contract(repo, progress)
    with tempfile.TemporaryDirectory(prefix="flops-fl-oci-") as folder:
        work = Path(folder)
        requirements, constraints = work / "requirements.txt", work / "constraints.txt"
        requirements.write_text("\n".join([*dependencies.requirements, "flops-mlops[fl]"]) + "\n", encoding="utf-8")
        constraints.write_text("\n".join(held_versions(dependencies)) + "\n", encoding="utf-8")
        cache = default_cache().parent / "fl-wheels" / key_of(dependencies)
        recipe = project_recipe(project, repo.tag, requirements, constraints, cache if cache.is_dir() else work)

        def repository_layer(arch: Platform, here: Path) -> list[tuple[Path, str]]:
            place_repository(repo.folder, here / "repo")
            return [(here / "repo", f"the ML repository {repo.source} at {repo.tag}, in {REPO_IN_IMAGE}")]

        progress(f"building {image} for {', '.join(p.name for p in platforms)} without Docker", flush=True)
        return image_recipe.build(recipe, platforms, out, image, more_layers=repository_layer, progress=progress)


def check_contract(repo: MLRepo, progress) -> None:
    """The repository's contract, checked in the project's environment on this machine (no data): a broken
    repository is no image."""
    environment = for_repository(repo.dependencies(), progress=progress)
    with tempfile.TemporaryDirectory(prefix="flops-fl-runtime-") as runtime:
        done = subprocess.run([str(environment.python), "-m", "flops_mlops.fl.contract", "--ml-repo",
                               str(repo.folder), "--no-learner"], capture_output=True, text=True,
                              env={**os.environ, **environment.variables(Path(runtime))})
    if done.returncode != 0:
        raise ConfigError(f"{repo.source}: the repository breaks FLOps' contract, so no image is built:\n"
                          + (done.stderr or done.stdout).strip()[-3000:])
    progress(f"{repo.source}: the contract holds ({environment.description})", flush=True)


def place_repository(source: Path, layer: Path) -> None:
    """The repository's files (no .git, no bytecode) at /srv/fl/repo in the layer, root's, readable by all."""
    target = layer / REPO_IN_IMAGE.lstrip("/")
    shutil.copytree(source, target, ignore=shutil.ignore_patterns(*IGNORED_PARTS, "*.pyc"))
    for path in [layer, *layer.rglob("*")]:
        if not path.is_symlink():
            path.chmod(0o755 if path.is_dir() else 0o644)


def fetch_wheels(context: Path, cache: Path, file_name: str) -> None:
    """Every wheel the image needs besides ours into ``cache`` (kept: the next build of this dependency set needs
    no index)."""
    cache.mkdir(parents=True, exist_ok=True)
    local = [arg for folder in (cache, bundled.CHECKOUT / "deploy" / "images" / "wheelhouse")
             if folder.is_dir() for arg in ("--find-links", str(folder))]  # the images' wheelhouse, when filled
    done = subprocess.run([sys.executable, "-m", "pip", "wheel", "--quiet", "--disable-pip-version-check",
                           "--wheel-dir", str(cache), *local,
                           "-r", str(context / "requirements.txt"), "-c", str(context / "constraints.txt")],
                          capture_output=True, text=True)
    for ours in cache.glob("flops_mlops-*.whl"):
        ours.unlink()  # from the images' wheelhouse: ours is built from the checkout every time
    if done.returncode != 0:
        raise RepoError(f"{file_name}: pip could not fetch the wheels of the repository's dependencies:\n"
                        + "\n".join("  " + line for line in done.stderr.strip().splitlines()[-12:]))


def link_or_copy(source: Path, target: Path) -> None:
    try:
        os.link(source, target)
    except OSError:
        shutil.copy2(source, target)


def image_size(image: str) -> int:
    done = subprocess.run(["docker", "image", "inspect", "--format", "{{.Size}}", image], capture_output=True,
                          text=True)
    return int(done.stdout.strip() or 0)
