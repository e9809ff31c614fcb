"""Benchmark: the size of each of our images built without Docker, per platform, and what building it costs.

For each image of `flops-mlops build-image` (tracking-server, artifact-store, fl-actor, model-server), one build of
both platforms (linux/amd64 and linux/arm64) as an OCI archive, with no Docker involved. Recorded per platform,
read from the archive itself: the bytes of its layers as stored and sent (gzip), and unpacked (each layer's tar
stream, decompressed and counted), per layer with its history line; and the wall time of the whole build.
The issue's goals are stated unpacked (what a node's disk holds): tracking server and model server <= 400 MB.

Writes bench/results/oci_images.json (bench/report.py renders it). Needs root and the builder's Debian packages
(mmdebstrap arch-test qemu-user-static binfmt-support), a checkout, and Debian's mirror and PyPI.

    .venv/bin/python bench/oci_images.py [--images tracking-server model-server ...]
"""

from __future__ import annotations

import argparse
import gzip
import json
import subprocess
import sys
import tarfile
import tempfile
import time
from pathlib import Path

from common import CLI, ROOT, RESULTS, machine, started_at, write_report

IMAGES = ("tracking-server", "artifact-store", "fl-actor", "model-server")
PLATFORMS = "linux/amd64,linux/arm64"
GOALS_MB = {"tracking-server": 400, "model-server": 400}


def unpacked_bytes(data) -> int:
    total = 0
    with gzip.GzipFile(fileobj=data) as stream:
        while chunk := stream.read(1 << 20):
            total += len(chunk)
    return total


def sizes(archive: Path) -> list[dict]:
    """Per platform: its layers' stored (gzip) and unpacked bytes, with their history lines."""
    with tarfile.open(archive) as tar:
        def read(digest: str):
            return tar.extractfile(f"blobs/sha256/{digest.removeprefix('sha256:')}")

        (top,) = json.load(tar.extractfile("index.json"))["manifests"]
        platforms = []
        for entry in json.load(read(top["digest"]))["manifests"]:
            manifest = json.load(read(entry["digest"]))
            config = json.load(read(manifest["config"]["digest"]))
            layers = [{"what": history["created_by"], "gzip_bytes": layer["size"],
                       "unpacked_bytes": unpacked_bytes(read(layer["digest"]))}
                      for layer, history in zip(manifest["layers"], config["history"])]
            platforms.append({"platform": f"linux/{entry['platform']['architecture']}", "layers": layers,
                              "gzip_bytes": sum(layer["gzip_bytes"] for layer in layers),
                              "unpacked_bytes": sum(layer["unpacked_bytes"] for layer in layers)})
    return platforms


def build(name: str, folder: Path) -> dict:
    archive = folder / f"{name}.tar"
    started = time.monotonic()
    done = subprocess.run([*CLI, "--config", str(ROOT / "configs" / "local.yaml"), "build-image", name,
                           "--platform", PLATFORMS, "--out", str(archive)], capture_output=True, text=True, cwd=ROOT)
    seconds = time.monotonic() - started
    if done.returncode != 0:
        raise SystemExit(f"build-image {name} failed (exit {done.returncode}):\n{(done.stdout + done.stderr)[-3000:]}")
    digest = done.stdout.split(" (", 1)[1].split(")", 1)[0]
    result = {"image": name, "digest": digest, "build_s": round(seconds, 1), "platforms": sizes(archive),
              "goal_unpacked_mb": GOALS_MB.get(name)}
    archive.unlink()
    print(f"{name}: {seconds:.0f} s, " + ", ".join(f"{p['platform']} {p['unpacked_bytes'] / 1e6:.0f} MB unpacked"
                                                    for p in result["platforms"]), flush=True)
    return result


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--images", nargs="+", choices=IMAGES, default=list(IMAGES))
    args = parser.parse_args(argv)
    report = {"benchmark": "oci_images", "date": started_at(), "machine": machine(), "platforms": PLATFORMS,
              "cache": "none: every build downloads its Debian packages and wheels (pip's cache as found)"}
    with tempfile.TemporaryDirectory(prefix="flops-bench-oci-") as folder:
        report["images"] = [build(name, Path(folder)) for name in args.images]
    write_report(report, RESULTS / "oci_images.json")
    return 0


if __name__ == "__main__":
    sys.exit(main())
