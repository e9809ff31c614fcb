"""`flops-mlops build-model-image`: an image that serves one version of a tenant's registered model offline.

The model's files are fetched as serve-<project> (READ on that model only), checked against the pinned
environment, and copied on top of the model-server image (images.model_server): the image holds no credential
and needs no tracking server.
"""

from __future__ import annotations

import re
import shutil
import subprocess
import tempfile
from pathlib import Path

from ..configuration.schema import ConfigError
from ..configuration.stack import StackConfig
from ..processes import StackError
from .fetch import FetchError, unmet_requirements
from .service import DEFAULT_PORT, add_model_arguments, check_arguments, serving_registry

IMAGE_TAG = re.compile(r"^[a-z0-9]+(?:[._-][a-z0-9]+)*(?::[0-9]+)?(?:/[a-z0-9]+(?:[._-][a-z0-9]+)*)*"
                       r":[A-Za-z0-9_][A-Za-z0-9_.-]{0,127}$")
BAKED_DIR = "/srv/model/baked"  # where the image keeps the model (FLOPS_SERVE_MODEL_DIR)


def add_build_image_parser(commands):
    parser = commands.add_parser(
        "build-model-image", help="build an image that serves one version of a tenant's registered model, offline",
        description="Fetch one version of models:/<project> (the one --alias points at, default champion, or "
                    "--version) from the tenant's tracking server as serve-<project> (READ on that model only), "
                    "check its requirements against the pinned environment, and build an image FROM the "
                    "model-server image (images.model_server) with the model's files in it: it serves without a "
                    "tracking server and holds no credential. Needs a Docker engine; the model-server image is "
                    "built from deploy/images/python/Dockerfile, target model-server (multi-platform: see docs/serving.md).")
    add_model_arguments(parser, "bake", "bake this version")
    parser.add_argument("--tag", default=None,
                        help="image name:tag (default flops-mlops/model-<tenant>-<project>:<version>, lowercase)")
    parser.set_defaults(port=DEFAULT_PORT, poll=0.0)  # what check_arguments checks; the image listens on 8080
    return parser


def build_image_command(config: StackConfig, args) -> int:
    tenant, alias = check_arguments(config, args)
    if args.tag is not None and not IMAGE_TAG.fullmatch(args.tag):
        raise ConfigError(f"--tag: {args.tag!r} is not an image name:tag (lowercase name, explicit tag; no latest "
                          "is implied)")
    if shutil.which("docker") is None:
        raise ConfigError("build-model-image: no docker command on this machine")
    registry = serving_registry(config, tenant, args.project, args)
    try:
        version = str(args.version) if args.version is not None else registry.version_of(args.project, alias)
        with tempfile.TemporaryDirectory(prefix="flops-model-image-") as context:
            model = registry.fetch(args.project, version, Path(context) / "model")
            problems = unmet_requirements(model)
            if problems:
                raise StackError(f"models:/{args.project}/{version} needs what the model-server image does not have "
                                 "(its environment is deploy/images/constraints.txt):\n  " + "\n  ".join(problems))
            tag = args.tag or f"flops-mlops/model-{tenant.id}-{args.project}:{version}".lower()
            (Path(context) / "Dockerfile").write_text(baked_dockerfile(config.images.model_server, tenant.id,
                                                                      args.project, version), encoding="utf-8")
            print(f"building {tag}: models:/{args.project}/{version} of tenant {tenant.id} on "
                  f"{config.images.model_server}", flush=True)
            built = subprocess.run(["docker", "build", "--tag", tag, context], capture_output=True, text=True)
    except FetchError as exc:
        raise StackError(str(exc)) from None
    if built.returncode != 0:
        tail = "\n".join("    " + line for line in (built.stdout + built.stderr).strip().splitlines()[-15:])
        raise StackError(f"docker build of {tag} failed (exit {built.returncode}):\n{tail}")
    print(f"built {tag}; run it with: docker run --rm -p 8080:8080 {tag}")
    return 0


def baked_dockerfile(base: str, tenant: str, project: str, version: str) -> str:
    """The Dockerfile of a baked model image: the model's files on top of the model-server image, nothing else."""
    return (f"FROM {base}\n"
            f"COPY --chown=model:model model/ {BAKED_DIR}/\n"
            f"ENV FLOPS_SERVE_MODEL_DIR={BAKED_DIR} FLOPS_SERVE_MODEL_NAME={project} FLOPS_SERVE_VERSION={version}\n"
            f'LABEL io.flops.tenant="{tenant}" io.flops.model="{project}" io.flops.model-version="{version}"\n')
