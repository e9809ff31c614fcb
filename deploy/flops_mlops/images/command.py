"""`flops-mlops build-image NAME --out PATH`: one of our images (images.catalog) without a Docker daemon, as one OCI
image index with a manifest per --platform."""

from __future__ import annotations

from pathlib import Path

from ..configuration.schema import ConfigError
from ..configuration.stack import StackConfig
from . import push, recipe
from .oci import IMAGE_TAG
from .catalog import RECIPES
from .platforms import add_platform_argument, parse_platforms


def add_parser(commands):
    parser = commands.add_parser(
        "build-image", help="build one of our images without Docker: an OCI image index for each platform",
        description="Build one of our images (what its Dockerfile target in deploy/images/ holds) with no Docker "
                    "command and no daemon: a Debian root filesystem per --platform from Debian's packages "
                    "(mmdebstrap; a foreign platform's package scripts under qemu-user-static), that platform's "
                    "wheels installed without emulation, our files, written as one OCI image index to --out. "
                    "Needs root. The same inputs and SOURCE_DATE_EPOCH give the same digest, which it prints. "
                    "With --push, then pushes it to a registry. docs/images.md says why and how.")
    parser.add_argument("name", choices=sorted(RECIPES), metavar="NAME",
                        help=f"the image: {', '.join(sorted(RECIPES))}")
    add_platform_argument(parser)
    parser.add_argument("--out", required=True, metavar="PATH",
                        help="an OCI layout folder to write, or an OCI archive if PATH ends in .tar")
    parser.add_argument("--tag", default=None,
                        help="the index's reference name (default: the configuration's images.<name>, e.g. "
                             "flops-mlops/tracking-server:0.1.0)")
    push.add_push_arguments(parser, required=False)
    return parser


def build_image(config: StackConfig, args) -> int:
    platforms = parse_platforms(args.platform)
    out = Path(args.out).absolute()
    if not out.parent.is_dir():
        raise ConfigError(f"--out: {args.out!r}: its folder {str(out.parent)!r} does not exist")
    tag = args.tag or getattr(config.images, args.name.replace("-", "_"))
    if not IMAGE_TAG.fullmatch(tag):
        raise ConfigError(f"--tag: {tag!r} is not an image name:tag (lowercase name, explicit tag; no latest is "
                          "implied)")
    target = push.checked(config, args.push, args.registry_ca)
    print(f"building {tag} for {', '.join(p.name for p in platforms)}", flush=True)
    digest = recipe.build(RECIPES[args.name], platforms, out, tag)
    print(f"built {tag} ({digest}) in {out}")
    return push.after_build(out, tag, target)
