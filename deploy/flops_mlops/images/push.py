"""Push an OCI layout (a folder or an OCI archive, as `build-image` and `build-model-image --out` write it) to a
registry: every platform's config and layer blobs (those the registry lacks), each platform's manifest by digest,
then the image index under the tag. `push-image PATH REFERENCE`, and `--push REFERENCE` on the build commands.

The login is the secrets file's FLOPS_REGISTRY_USER and FLOPS_REGISTRY_PASSWORD: never an argument, so never in a
process's command line. docs/images.md says why our own client rather than skopeo.
"""

from __future__ import annotations

import json
import tarfile
from contextlib import contextmanager
from pathlib import Path
from typing import BinaryIO

from ..configuration.schema import ConfigError
from ..configuration.secrets import registry_login
from ..configuration.stack import StackConfig
from ..processes import StackError
from .oci import INDEX, MANIFEST
from .registry import Registry, parse_reference, throttled

INDEXES = (INDEX, "application/vnd.docker.distribution.manifest.list.v2+json")
PROGRESS_FROM = 10_000_000  # blobs from this size report their upload's progress


class Layout:
    """The blobs and top index of an OCI layout folder, or of an OCI archive (a .tar of one)."""

    def __init__(self, path: Path):
        self.path = path
        self.archive = tarfile.open(path) if path.is_file() else None
        if self.archive is None and not (path / "index.json").is_file():
            raise ConfigError(f"{path}: not an OCI layout (no index.json) nor an OCI archive")

    def close(self) -> None:
        if self.archive is not None:
            self.archive.close()

    @contextmanager
    def open(self, name: str):
        if self.archive is None:
            with open(self.path / name, "rb") as data:
                yield data
            return
        try:
            data = self.archive.extractfile(name)
        except KeyError:
            data = None
        if data is None:
            raise StackError(f"{self.path}: {name} is missing from the archive")
        with data:
            yield data

    def read(self, name: str) -> bytes:
        try:
            with self.open(name) as data:
                return data.read()
        except FileNotFoundError:
            raise StackError(f"{self.path}: {name} is missing") from None

    def blob_name(self, digest: str) -> str:
        algorithm, _, hexdigest = digest.partition(":")
        return f"blobs/{algorithm}/{hexdigest}"

    def blob(self, digest: str) -> bytes:
        return self.read(self.blob_name(digest))

    def top(self) -> dict:
        """The layout's one image (index or manifest) descriptor."""
        entries = json.loads(self.read("index.json")).get("manifests") or []
        if len(entries) != 1:
            names = [e.get("annotations", {}).get("org.opencontainers.image.ref.name") for e in entries]
            raise ConfigError(f"{self.path}: holds {len(entries)} images ({names}); push-image pushes a layout of "
                              "one, as build-image and build-model-image write it")
        return entries[0]


def add_push_arguments(parser, required: bool) -> None:
    if required:
        parser.add_argument("reference", metavar="REFERENCE",
                            help="where to push: REGISTRY/REPOSITORY:TAG, e.g. registry.example:5000/flops-mlops/"
                                 "model-server:0.1.0")
    else:
        parser.add_argument("--push", default=None, metavar="REFERENCE",
                            help="then push the image index to REGISTRY/REPOSITORY:TAG (over HTTPS; the login is "
                                 "FLOPS_REGISTRY_USER and FLOPS_REGISTRY_PASSWORD in the secrets file)")
    parser.add_argument("--registry-ca", default=None, metavar="FILE",
                        help="the CA certificate (PEM) that signed the registry's HTTPS certificate (default: the "
                             "system's trusted CAs)")


def checked(config: StackConfig, reference: str | None, ca: str | None, option: str = "--push"):
    """What a push needs, checked before a build starts: (Reference, CA file, login), or None without a push."""
    if reference is None:
        if ca is not None:
            raise ConfigError(f"--registry-ca {ca!r}: only with --push")
        return None
    ca_file = Path(ca).absolute() if ca else None
    if ca_file is not None and not ca_file.is_file():
        raise ConfigError(f"--registry-ca: {ca!r} is not a file")
    return parse_reference(reference, option), ca_file, registry_login(config)


def push(layout_path: Path, target, report=print) -> str:
    """Push the layout to ``target`` (what ``checked`` returned); returns the index's digest."""
    reference, ca_file, login = target
    registry = Registry(reference, login, ca_file)
    layout = Layout(layout_path)
    try:
        top = layout.top()
        report(f"pushing {layout_path} to {reference}", flush=True)
        registry.check()
        push_descriptor(registry, layout, top, reference.tag, report)
    finally:
        layout.close()
    report(f"pushed {reference} ({top['digest']})")
    # The configuration's images.<name> (so the Oakestra SLAs and compose) can name exactly this index.
    report(f"by digest: {reference.host}/{reference.repository}@{top['digest']}")
    return top["digest"]


def after_build(out: Path, tag: str, target) -> int:
    """--push after a build, or how to push later without it."""
    if target is not None:
        push(out, target)
    else:
        print(f"push it with: flops-mlops push-image {out} REGISTRY/{tag}")
    return 0


def push_descriptor(registry: Registry, layout: Layout, descriptor: dict, tag: str | None, report) -> None:
    """Push what ``descriptor`` names, what it refers to first; an index's manifests by digest, it under ``tag``."""
    content = layout.blob(descriptor["digest"])
    media_type = descriptor.get("mediaType") or json.loads(content).get("mediaType") or MANIFEST
    document = json.loads(content)
    if media_type in INDEXES:
        for child in document["manifests"]:
            push_descriptor(registry, layout, child, None, report)
    else:
        platform = descriptor.get("platform", {}).get("architecture", "image")
        for blob in [document["config"], *document["layers"]]:
            push_blob(registry, layout, blob, platform, report)
    answered = registry.put_manifest(tag or descriptor["digest"], media_type, content)
    if answered and answered != descriptor["digest"]:
        raise StackError(f"{registry.reference.host} stored {descriptor['digest']} as {answered}")


def push_blob(registry: Registry, layout: Layout, blob: dict, platform: str, report) -> None:
    digest, size = blob["digest"], blob["size"]
    if registry.blob_exists(digest):
        report(f"  {platform}: {digest[:19]} already there")
        return
    report(f"  {platform}: uploading {digest[:19]} ({size / 1e6:.1f} MB)", flush=True)
    progress = throttled(lambda line: print(line, flush=True), digest[:19], size) if size >= PROGRESS_FROM \
        else (lambda sent: None)

    def open_blob() -> BinaryIO:
        return layout.open(layout.blob_name(digest))
    registry.upload_blob(digest, size, open_blob, progress)


def add_parser(commands):
    parser = commands.add_parser(
        "push-image", help="push an OCI image index (build-image or build-model-image --out) to a registry",
        description="Push the OCI layout folder or archive PATH (one image index, as build-image and "
                    "build-model-image --out write it) to a registry speaking the OCI distribution API, over HTTPS "
                    "with its certificate verified: each platform's config and layers the registry lacks, each "
                    "platform's manifest, then the index under REFERENCE's tag. The login is FLOPS_REGISTRY_USER "
                    "and FLOPS_REGISTRY_PASSWORD in the secrets file (none if both are absent). docs/images.md.")
    parser.add_argument("path", metavar="PATH", help="the OCI layout folder, or OCI archive (.tar), to push")
    add_push_arguments(parser, required=True)
    return parser


def push_command(config: StackConfig, args) -> int:
    path = Path(args.path).absolute()
    if not path.exists():
        raise ConfigError(f"PATH: {args.path!r} does not exist")
    push(path, checked(config, args.reference, args.registry_ca, "REFERENCE"))
    return 0
