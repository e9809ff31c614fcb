"""Write an OCI image index (one manifest per platform) from folders, one folder per layer, reproducibly.

Same folders and the same epoch give the same bytes, so the same digests: tar entries in sorted order, every
mtime set to the epoch (SOURCE_DATE_EPOCH), no user or group names (ids only), gzip without a name or time, JSON
with sorted keys. The result is an OCI layout folder (``oci-layout``, ``index.json``, ``blobs/sha256/``), or that
folder as one tar archive when the path ends in ``.tar``; skopeo, umoci, podman and buildah read both
(``oci:PATH:TAG``, ``oci-archive:PATH:TAG``).
"""

from __future__ import annotations

import gzip
import hashlib
import io
import json
import os
import re
import shutil
import tarfile
import tempfile
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path

from .platforms import Platform

INDEX = "application/vnd.oci.image.index.v1+json"
MANIFEST = "application/vnd.oci.image.manifest.v1+json"
CONFIG = "application/vnd.oci.image.config.v1+json"
LAYER = "application/vnd.oci.image.layer.v1.tar+gzip"
# A reference name: lowercase repository path (with an optional registry port), an explicit tag (no latest implied).
IMAGE_TAG = re.compile(r"^[a-z0-9]+(?:[._-][a-z0-9]+)*(?::[0-9]+)?(?:/[a-z0-9]+(?:[._-][a-z0-9]+)*)*"
                       r":[A-Za-z0-9_][A-Za-z0-9_.-]{0,127}$")
SKIPPED = ("dev/", "proc/", "sys/", "run/", "tmp/")  # what a runtime mounts: their folders stay, empty


@dataclass
class PlatformImage:
    platform: Platform
    layers: list[Path]  # folders, bottom first; each one's contents is a layer
    config: dict  # the OCI config's "config": Env, User, Entrypoint, ...
    history: list[str] = field(default_factory=list)  # one line per layer: what it holds


def write(out: Path, images: list[PlatformImage], tag: str, epoch: int) -> str:
    """Write the image index of ``images`` to ``out`` (a folder, or an archive if it ends in .tar), its reference
    name ``tag``; returns the index's digest."""
    with tempfile.TemporaryDirectory(prefix="flops-oci-", dir=out.parent) as folder:
        layout = Path(folder) / "layout"
        blobs = layout / "blobs" / "sha256"
        blobs.mkdir(parents=True)
        manifests = [manifest(blobs, image, epoch) for image in images]
        index = blob(blobs, INDEX, {"schemaVersion": 2, "mediaType": INDEX, "manifests": manifests})
        index["annotations"] = {"org.opencontainers.image.ref.name": tag}
        (layout / "oci-layout").write_text(canonical({"imageLayoutVersion": "1.0.0"}), encoding="utf-8")
        (layout / "index.json").write_text(canonical({"schemaVersion": 2, "mediaType": INDEX, "manifests": [index]}),
                                           encoding="utf-8")
        if out.exists():
            shutil.rmtree(out) if out.is_dir() else out.unlink()
        if out.suffix == ".tar":
            with open(out, "wb") as archive, tarfile.open(fileobj=archive, mode="w", format=tarfile.PAX_FORMAT) as tar:
                add_tree(tar, layout, epoch)
        else:
            layout.rename(out)
    return index["digest"]


def manifest(blobs: Path, image: PlatformImage, epoch: int) -> dict:
    layers, diff_ids = [], []
    for folder in image.layers:
        descriptor, diff_id = layer(blobs, folder, epoch)
        layers.append(descriptor)
        diff_ids.append(diff_id)
    created = datetime.fromtimestamp(epoch, timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")
    config = blob(blobs, CONFIG, {
        "created": created, "architecture": image.platform.architecture, "os": "linux", "config": image.config,
        "rootfs": {"type": "layers", "diff_ids": diff_ids},
        "history": [{"created": created, "created_by": line} for line in image.history]})
    descriptor = blob(blobs, MANIFEST, {"schemaVersion": 2, "mediaType": MANIFEST, "config": config,
                                        "layers": layers})
    descriptor["platform"] = {"architecture": image.platform.architecture, "os": "linux"}
    return descriptor


def layer(blobs: Path, folder: Path, epoch: int) -> tuple[dict, str]:
    """The folder's contents as a gzip layer blob; returns its descriptor and the uncompressed tar's digest."""
    unpacked, packed = hashlib.sha256(), hashlib.sha256()
    size = 0
    with tempfile.NamedTemporaryFile(dir=blobs, delete=False) as file:
        class Hashing(io.RawIOBase):  # hashes what gzip writes, as it writes it
            def writable(self):
                return True

            def write(self, data):
                nonlocal size
                packed.update(data)
                size += len(data)
                return file.write(data)

        class Feeding(io.RawIOBase):  # hashes the tar stream before gzip compresses it
            def writable(self):
                return True

            def write(self, data):
                unpacked.update(data)
                return compressor.write(data)

        with gzip.GzipFile(filename="", mode="wb", fileobj=Hashing(), mtime=0, compresslevel=6) as compressor:
            with tarfile.open(fileobj=Feeding(), mode="w|", format=tarfile.PAX_FORMAT) as tar:
                add_tree(tar, folder, epoch)
    digest = packed.hexdigest()
    os.replace(file.name, blobs / digest)
    os.chmod(blobs / digest, 0o644)
    return {"mediaType": LAYER, "digest": f"sha256:{digest}", "size": size}, f"sha256:{unpacked.hexdigest()}"


def add_tree(tar: tarfile.TarFile, root: Path, epoch: int) -> None:
    """Every entry under ``root`` (not root itself), sorted by path, with normalised headers."""
    for path in sorted_entries(root):
        name = path.relative_to(root).as_posix()
        info = tar.gettarinfo(str(path), arcname=name)
        info.mtime = epoch
        info.uname = info.gname = ""
        if info.isreg() and info.type != tarfile.LNKTYPE:
            with open(path, "rb") as data:
                tar.addfile(info, data)
        else:
            tar.addfile(info)


def sorted_entries(folder: Path, root: Path | None = None):
    """The paths below ``folder`` in sorted order, parents first, without the contents of SKIPPED."""
    root = root or folder
    for entry in sorted(os.scandir(folder), key=lambda entry: entry.name):
        path = Path(entry.path)
        relative = path.relative_to(root).as_posix() + "/"
        if any(relative.startswith(skipped) and relative != skipped for skipped in SKIPPED):
            continue
        yield path
        if entry.is_dir(follow_symlinks=False):
            yield from sorted_entries(path, root)


def blob(blobs: Path, media_type: str, content: dict) -> dict:
    data = canonical(content).encode()
    digest = hashlib.sha256(data).hexdigest()
    (blobs / digest).write_bytes(data)
    return {"mediaType": media_type, "digest": f"sha256:{digest}", "size": len(data)}


def canonical(content: dict) -> str:
    return json.dumps(content, sort_keys=True, separators=(",", ":"))
