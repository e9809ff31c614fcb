"""`flops-mlops build-model-image`: an image that serves one version of a tenant's registered model offline.

The model's files are fetched as image-<project> (READ on that model only; not serve-<project>, whose re-keying
would lock out a model server that runs) and copied on top of a base image that meets the model's requirements:
the model-server image (images.model_server) when this (the same, pinned)
environment meets them; else the FL project's own actor image, flops-mlops/fl-<project>:<tag>, whose environment
trained the model (the tag the model's MLmodel records as ``flops.ml_repo_tag``; `build-fl-image` builds it), or
``--base``. The image holds no credential and needs no tracking server.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import tempfile
from pathlib import Path

import yaml

from ..configuration.schema import ConfigError
from ..configuration.stack import StackConfig
from ..fl.project_image import image_name
from ..processes import StackError
from ..tracking.users import image_user
from ..images import push
from ..images.oci import IMAGE_TAG
from ..images.platforms import DEFAULT as DEFAULT_PLATFORMS
from ..images.platforms import add_platform_argument, parse_platforms
from . import oci_image
from .fetch import FetchError, unmet_requirements
from .service import DEFAULT_PORT, add_model_arguments, check_arguments, serving_registry

BAKED_DIR = "/srv/model/baked"  # where the image keeps the model (FLOPS_SERVE_MODEL_DIR)


def add_build_image_parser(commands):
    parser = commands.add_parser(
        "build-model-image", help="build an image that serves one version of a tenant's registered model, offline",
        description="Fetch one version of models:/<project> (the one --alias points at, default champion, or "
                    "--version) from the tenant's tracking server as image-<project> (READ on that model only; a "
                    "running model server's serve-<project> keeps its password), "
                    "check its requirements against the pinned environment, and build an image FROM the "
                    "model-server image (images.model_server) with the model's files in it: it serves without a "
                    "tracking server and holds no credential. With --out, no Docker: an OCI image index for each "
                    "--platform (default linux/amd64 and linux/arm64) built from Debian's packages and the "
                    "platforms' wheels (root, mmdebstrap, qemu-user-static; docs/images.md). Without --out, a "
                    "Docker engine builds FROM images.model_server (deploy/images/python/Dockerfile, target "
                    "model-server).")
    add_model_arguments(parser, "bake", "bake this version")
    parser.add_argument("--tag", default=None,
                        help="image name:tag (default flops-mlops/model-<tenant>-<project>:<version>, lowercase)")
    parser.add_argument("--base", default=None, metavar="IMAGE",
                        help="image to build on (default: images.model_server if it meets the model's requirements, "
                             "else the project's actor image flops-mlops/fl-<project>:<tag> that build-fl-image "
                             "built from the repository the model was trained from)")
    add_platform_argument(parser)
    parser.add_argument("--out", default=None, metavar="PATH",
                        help="build without Docker: write the OCI image index (one manifest per --platform) to PATH, "
                             "an OCI layout folder, or an OCI archive if PATH ends in .tar (needs root, mmdebstrap, "
                             "and qemu-user-static for a foreign platform)")
    push.add_push_arguments(parser, required=False)
    parser.set_defaults(port=DEFAULT_PORT, poll=0.0)  # what check_arguments checks; the image listens on 8080
    return parser


def build_image_command(config: StackConfig, args) -> int:
    tenant, alias = check_arguments(config, args)
    if args.tag is not None and not IMAGE_TAG.fullmatch(args.tag):
        raise ConfigError(f"--tag: {args.tag!r} is not an image name:tag (lowercase name, explicit tag; no latest "
                          "is implied)")
    platforms = parse_platforms(args.platform)
    out = Path(args.out).absolute() if args.out else None
    target = push.checked(config, args.push, args.registry_ca)
    if target is not None and out is None:
        raise ConfigError(f"--push {args.push!r}: only with --out (a Docker build is pushed with docker push)")
    if out is not None:
        if args.base is not None:
            raise ConfigError(f"--base {args.base!r}: only for a Docker build (without --out); an OCI image is built "
                              "on the model server's own root filesystem")
        if not out.parent.is_dir():
            raise ConfigError(f"--out: {args.out!r}: its folder {str(out.parent)!r} does not exist")
    elif shutil.which("docker") is None:
        raise ConfigError("build-model-image: no docker command on this machine; --out PATH builds an OCI image "
                          "without one")
    elif args.platform != DEFAULT_PLATFORMS:
        raise ConfigError(f"--platform {args.platform!r}: only with --out (a Docker build is for this machine's "
                          "platform)")
    registry = serving_registry(config, tenant, args.project, args, user=image_user)
    try:
        version = str(args.version) if args.version is not None else registry.version_of(args.project, alias)
        with tempfile.TemporaryDirectory(prefix="flops-model-image-") as context:
            model = registry.fetch(args.project, version, Path(context) / "model")
            tag = args.tag or f"flops-mlops/model-{tenant.id}-{args.project}:{version}".lower()
            if out is not None:
                build_oci(model, platforms, out, tag, tenant.id, args.project, version)
                return push.after_build(out, tag, target)
            base = args.base or base_image(config, model, args.project, version)
            (Path(context) / "Dockerfile").write_text(baked_dockerfile(base, tenant.id, args.project, version),
                                                      encoding="utf-8")
            print(f"building {tag}: models:/{args.project}/{version} of tenant {tenant.id} on {base}", flush=True)
            built = subprocess.run(["docker", "build", "--tag", tag, context], capture_output=True, text=True)
    except FetchError as exc:
        raise StackError(str(exc)) from None
    if built.returncode != 0:
        tail = "\n".join("    " + line for line in (built.stdout + built.stderr).strip().splitlines()[-15:])
        raise StackError(f"docker build of {tag} failed (exit {built.returncode}):\n{tail}")
    print(f"built {tag}; run it with: docker run --rm -p 8080:8080 {tag}")
    return 0


def build_oci(model: Path, platforms, out: Path, tag: str, tenant: str, project: str, version: str) -> None:
    """The OCI image index, no Docker daemon: the model-server image's root filesystem per platform, built here."""
    problems = unmet_requirements(model)
    if problems:
        raise StackError(f"models:/{project}/{version} needs what the model-server image does not have (its "
                         "environment is deploy/images/constraints.txt):\n  " + "\n  ".join(problems) +
                         "\nan OCI image is built on the model server only; build a Docker image with --base")
    print(f"building {tag} for {', '.join(p.name for p in platforms)}: models:/{project}/{version} of tenant "
          f"{tenant}", flush=True)
    digest = oci_image.build(model, platforms, out, tag, served_environment(project, version),
                             labels(tenant, project, version))
    print(f"built {tag} ({digest}) in {out}")


def served_environment(project: str, version: str) -> dict[str, str]:
    """What a baked image's server reads (both builds): the model-server recipe's environment but PATH (a Docker
    build may start FROM a project's actor image, which has the quiet-Python settings but not the server's), and
    the baked model's name, version and folder."""
    recipe = dict(line.split("=", 1) for line in oci_image.MODEL_SERVER.config["Env"] if not line.startswith("PATH="))
    return {**recipe, "FLOPS_SERVE_MODEL_DIR": BAKED_DIR, "FLOPS_SERVE_MODEL_NAME": project,
            "FLOPS_SERVE_VERSION": version}


def labels(tenant: str, project: str, version: str) -> dict[str, str]:
    return {"io.flops.tenant": tenant, "io.flops.model": project, "io.flops.model-version": version}


def base_image(config: StackConfig, model: Path, project: str, version: str) -> str:
    """The model-server image when the pinned environment meets the model's requirements, else the project's actor
    image (present on this engine) named by the repository tag the model records."""
    problems = unmet_requirements(model)
    if not problems:
        return config.images.model_server
    metadata = (yaml.safe_load((model / "MLmodel").read_text(encoding="utf-8")) or {}).get("metadata") or {}
    tag = metadata.get("flops.ml_repo_tag")
    wanted = f"models:/{project}/{version} needs what the model-server image does not have (its environment is " \
             "deploy/images/constraints.txt):\n  " + "\n  ".join(problems)
    if not tag:
        raise StackError(f"{wanted}\nname an image that has them with --base")
    image = image_name(project, str(tag))
    if subprocess.run(["docker", "image", "inspect", image], capture_output=True).returncode != 0:
        raise StackError(f"{wanted}\nits project's image {image} (the environment it was trained in) is not on this "
                         f"Docker engine: build it with `flops-mlops build-fl-image --project {project} --ml-repo "
                         "REPO` from the repository at tag " + str(tag) + ", or name an image with --base")
    return image


def baked_dockerfile(base: str, tenant: str, project: str, version: str) -> str:
    """The Dockerfile of a baked model image: the model's files on the base, served as the model-server image
    serves (its user, port, healthcheck and entry point, set here too: a project's actor image has the user
    ``model`` and our package, not the model server's settings)."""
    return (f"FROM {base}\n"
            f"COPY --chown=model:model model/ {BAKED_DIR}/\n"
            f"ENV {' '.join(f'{name}={value}' for name, value in served_environment(project, version).items())}\n"
            f"LABEL {' '.join(f'{name}={json.dumps(value)}' for name, value in labels(tenant, project, version).items())}\n"
            "USER model\n"
            "WORKDIR /srv/model\n"
            "EXPOSE 8080\n"
            'HEALTHCHECK --interval=5s --timeout=3s --start-period=60s --retries=3 CMD ["python", "-c", "import os, '
            "urllib.request; urllib.request.urlopen(f\\\"http://127.0.0.1:{os.environ['FLOPS_SERVE_PORT']}/ping\\\", "
            'timeout=2)"]\n'
            'ENTRYPOINT ["python", "-m", "flops_mlops.serving.server"]\n'
            "CMD []\n")
