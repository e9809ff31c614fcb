"""The OCI image index writer (flops_mlops.images.oci) on small folders: the same folders give the same digest
whatever the files' times and the order they were made in; a layout and an archive hold the same index; each layer
lists its entries sorted, at the epoch, with ids and no names; a changed file or epoch changes the digest."""

from __future__ import annotations

import gzip
import json
import os
import re
import tarfile

import pytest
from flops_mlops.configuration.schema import ConfigError
from flops_mlops.images import oci
from flops_mlops.images.platforms import PLATFORMS, parse_platforms
from flops_mlops.images.registry import parse_reference

EPOCH = 1700000000


def folders(root, order):
    """Two layers; ``order`` decides in which order the files are created (and so their directory order)."""
    base, top = root / "base", root / "top"
    for name in order:
        path = base / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(f"content of {name}\n")
        os.utime(path, (os.path.getmtime(path) + len(order), os.path.getmtime(path) + len(order)))
    (base / "dev" / "null").parent.mkdir(exist_ok=True)
    (base / "dev" / "null").write_text("a runtime mounts /dev: not in the layer")
    (top / "srv").mkdir(parents=True)
    (top / "srv" / "model.bin").write_bytes(bytes(range(256)))
    os.symlink("model.bin", top / "srv" / "link")
    return [base, top]


def images(layers):
    return [oci.PlatformImage(PLATFORMS[name], layers, {"User": "model"}, ["base", "top"])
            for name in ("linux/amd64", "linux/arm64")]


def test_same_folders_give_the_same_digest_and_bytes(tmp_path):
    first = oci.write(tmp_path / "a", images(folders(tmp_path / "1", ["b/x", "a", "c/y/z"])), "m:1", EPOCH)
    second = oci.write(tmp_path / "b", images(folders(tmp_path / "2", ["c/y/z", "a", "b/x"])), "m:1", EPOCH)
    assert first == second
    assert sorted(p.name for p in (tmp_path / "a" / "blobs" / "sha256").iterdir()) == \
        sorted(p.name for p in (tmp_path / "b" / "blobs" / "sha256").iterdir())
    archive = oci.write(tmp_path / "c.tar", images(folders(tmp_path / "3", ["a", "b/x", "c/y/z"])), "m:1", EPOCH)
    assert archive == first
    with tarfile.open(tmp_path / "c.tar") as tar:
        assert json.load(tar.extractfile("index.json"))["manifests"][0]["digest"] == first


def test_layers_are_sorted_at_the_epoch_without_names(tmp_path):
    oci.write(tmp_path / "out", images(folders(tmp_path / "src", ["b/x", "a"])), "m:1", EPOCH)
    blobs = tmp_path / "out" / "blobs" / "sha256"
    index = json.loads((tmp_path / "out" / "index.json").read_text())["manifests"][0]
    assert index["annotations"] == {"org.opencontainers.image.ref.name": "m:1"}
    manifests = json.loads((blobs / index["digest"].removeprefix("sha256:")).read_bytes())["manifests"]
    assert [m["platform"]["architecture"] for m in manifests] == ["amd64", "arm64"]
    manifest = json.loads((blobs / manifests[1]["digest"].removeprefix("sha256:")).read_bytes())
    config = json.loads((blobs / manifest["config"]["digest"].removeprefix("sha256:")).read_bytes())
    assert config["architecture"] == "arm64" and config["created"] == "2023-11-14T22:13:20Z"
    with tarfile.open(fileobj=gzip.open(blobs / manifest["layers"][0]["digest"].removeprefix("sha256:"))) as tar:
        members = tar.getmembers()
    assert [m.name for m in members] == ["a", "b", "b/x", "dev"]
    assert {m.mtime for m in members} == {EPOCH} and {(m.uname, m.gname) for m in members} == {("", "")}
    assert {m.uid for m in members} == {os.getuid()}


def test_a_changed_file_or_epoch_changes_the_digest(tmp_path):
    layers = folders(tmp_path / "src", ["a"])
    first = oci.write(tmp_path / "1", images(layers), "m:1", EPOCH)
    assert oci.write(tmp_path / "2", images(layers), "m:1", EPOCH + 1) != first
    (layers[1] / "srv" / "model.bin").write_bytes(b"other")
    assert oci.write(tmp_path / "3", images(layers), "m:1", EPOCH) != first


@pytest.mark.parametrize("text, named", [("linux/s390x", "'linux/s390x'"), ("", "''"),
                                         ("linux/amd64,linux/amd64", "twice"), ("arm64", "'arm64'")])
def test_bad_platforms_are_refused_naming_them(text, named):
    with pytest.raises(ConfigError, match=named):
        parse_platforms(text)


def test_platforms_in_the_order_given():
    assert [p.debian for p in parse_platforms("linux/arm64,linux/amd64")] == ["arm64", "amd64"]


@pytest.mark.parametrize("text, parts", [
    ("registry.example:5000/flops-mlops/model-server:0.1.0", ("registry.example:5000", "flops-mlops/model-server",
                                                              "0.1.0")),
    ("127.0.0.1:5000/shop:1", ("127.0.0.1:5000", "shop", "1")),
    ("localhost/a/b:v2", ("localhost", "a/b", "v2")),
    ("registry:443/shop:1", ("registry:443", "shop", "1")),
])
def test_push_references_name_registry_repository_and_tag(text, parts):
    reference = parse_reference(text)
    assert (reference.host, reference.repository, reference.tag) == parts and str(reference) == text


@pytest.mark.parametrize("text", ["flops-mlops/model-server:0.1.0", "registry.example/shop", "Registry.example/a:1",
                                  "registry.example/shop@sha256:abc", "https://registry.example/shop:1"])
def test_push_references_without_a_registry_or_tag_are_refused_naming_them(text):
    with pytest.raises(ConfigError, match=re.escape(repr(text))):
        parse_reference(text)
