"""Benchmark: the size of each example's FL project image, and what building it costs.

For each example of examples/ (scikit-learn, PyTorch, Keras), `flops-mlops build-fl-image` builds the project's
image (its repository, its dependencies and the FL runtime in one virtualenv, from a wheelhouse prepared here), as a
user would for compose or Oakestra. Recorded per example: the image's size as the engine reports it (`docker image
inspect`: all its layers, the base image's included), the size of the base image, the wall time of the build
(the engine's build cache as it was found, said in the JSON) and the packages that weigh most in the image's
virtualenv (`du` of site-packages, read in a container of the image).

Writes bench/results/project_images.json (bench/report.py renders it). Needs a Docker engine and a checkout.

    .venv/bin/python bench/project_images.py [--examples sklearn pytorch keras] [--base-image IMAGE]
"""

from __future__ import annotations

import argparse
import os
import re
import subprocess
import sys
import time

from common import CLI, ROOT, RESULTS, machine, started_at, write_report

EXAMPLES = ("sklearn", "pytorch", "keras")


def image_bytes(image: str) -> int:
    done = subprocess.run(["docker", "image", "inspect", "--format", "{{.Size}}", image], capture_output=True,
                          text=True, check=True)
    return int(done.stdout.strip())


def heaviest_packages(image: str, count: int = 5) -> list[dict]:
    """The largest folders of the image's virtualenv site-packages, in bytes."""
    script = "du -sb /opt/venv/lib/python3*/site-packages/* 2>/dev/null | sort -rn | head -n %d" % count
    done = subprocess.run(["docker", "run", "--rm", "--network", "none", "--entrypoint", "/bin/sh", image, "-c",
                           script], capture_output=True, text=True, timeout=300)
    rows = []
    for line in done.stdout.splitlines():
        size, path = line.split(None, 1)
        rows.append({"package": path.rsplit("/", 1)[-1], "bytes": int(size)})
    return rows


def build(example: str, base_image: str) -> dict:
    project = f"bench{example}"
    started = time.monotonic()
    done = subprocess.run([*CLI, "build-fl-image", "--project", project, "--ml-repo", str(ROOT / "examples" / example),
                           "--base-image", base_image], capture_output=True, text=True, cwd=ROOT)
    seconds = time.monotonic() - started
    if done.returncode != 0:
        raise SystemExit(f"build-fl-image for examples/{example} failed (exit {done.returncode}):\n"
                         f"{(done.stdout + done.stderr)[-3000:]}")
    image = re.search(r"^built (\S+) \(", done.stdout, re.MULTILINE).group(1)  # flops-mlops/fl-<project>:<tag>
    print(f"examples/{example}: {image}, {seconds:.0f} s", flush=True)
    return {"example": example, "image": image, "build_s": round(seconds, 1), "image_bytes": image_bytes(image),
            "heaviest_packages": heaviest_packages(image)}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--examples", nargs="+", choices=EXAMPLES, default=list(EXAMPLES))
    parser.add_argument("--base-image", default=os.environ.get("FLOPS_BASE_IMAGE", "flops-local/debian:bookworm-slim"))
    args = parser.parse_args(argv)
    report = {"benchmark": "project_images", "date": started_at(), "machine": machine(),
              "base_image": args.base_image, "base_image_bytes": image_bytes(args.base_image),
              "build_cache": "as found: the engine's build cache and pip's cache were not cleared",
              "images": [build(example, args.base_image) for example in args.examples]}
    write_report(report, RESULTS / "project_images.json")
    return 0


if __name__ == "__main__":
    sys.exit(main())
