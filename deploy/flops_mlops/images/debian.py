"""A Debian root filesystem for one architecture, from Debian's packages, with mmdebstrap.

minbase (apt, dpkg and the essential packages) plus what the image needs (python3), without recommends,
documentation, manual pages, translations or iconv converters; /usr merged by mmdebstrap's hook (no usrmerge package, and so no
perl). A foreign architecture's maintainer scripts run under qemu-user-static through binfmt_misc
(`ensure_emulation`). SOURCE_DATE_EPOCH makes mmdebstrap clamp its timestamps; the same mirror state gives the
same files.
"""

from __future__ import annotations

import os
import platform
import shutil
import subprocess
from pathlib import Path

from ..processes import StackError, run_whole
from .platforms import Platform

SUITE = "bookworm"
MIRROR = os.environ.get("FLOPS_DEBIAN_MIRROR", "http://deb.debian.org/debian")
BINFMT = Path("/proc/sys/fs/binfmt_misc")
# Documentation, manual pages, translations, and glibc's iconv converters (20 MB; Python's codecs are its own,
# and nothing in our images calls iconv).
EXCLUDED = ("/usr/share/doc/*", "/usr/share/man/*", "/usr/share/info/*", "/usr/share/locale/*",
            "/usr/share/lintian/*", "/usr/lib/*/gconv/*.so")
TOOLS = {"mmdebstrap": "mmdebstrap", "arch-test": "arch-test"}  # command: Debian package


def root_filesystem(target: Path, arch: Platform, packages: list[str], epoch: int) -> None:
    """Create the root filesystem in ``target`` (which must not exist yet)."""
    missing = [package for command, package in TOOLS.items() if shutil.which(command) is None]
    if missing:
        raise StackError(f"building a root filesystem needs the Debian packages {', '.join(missing)} "
                         f"(apt-get install {' '.join(missing)})")
    if os.geteuid() != 0:
        raise StackError("building a root filesystem needs root (mmdebstrap's root mode; a privileged builder "
                         "container is enough, no Docker daemon)")
    if arch.machine != platform.machine():
        ensure_emulation(arch)
    target.parent.mkdir(parents=True, exist_ok=True)
    options = [f"--dpkgopt=path-exclude={pattern}" for pattern in EXCLUDED]
    done = run_whole(
        ["mmdebstrap", "--quiet", "--mode=root", "--variant=minbase", f"--arch={arch.debian}",
         f"--include={','.join(packages)}", "--hook-dir=/usr/share/mmdebstrap/hooks/merged-usr",
         "--dpkgopt=path-include=/usr/share/doc/*/copyright", *options, "--format=directory",
         SUITE, str(target), MIRROR],
        env={**os.environ, "SOURCE_DATE_EPOCH": str(epoch)})  # interrupted: mmdebstrap, apt and dpkg all stop
    if done.returncode != 0:
        tail = "\n".join("    " + line for line in done.stderr.strip().splitlines()[-15:])
        raise StackError(f"mmdebstrap for {arch.name} failed (exit {done.returncode}):\n{tail}")


def ensure_emulation(arch: Platform) -> None:
    """binfmt_misc mounted and qemu-user-static's interpreter for ``arch`` registered (both need root)."""
    if not (BINFMT / "register").exists():
        mounted = subprocess.run(["mount", "-t", "binfmt_misc", "binfmt_misc", str(BINFMT)], capture_output=True,
                                 text=True)
        if mounted.returncode != 0:
            raise StackError(f"{arch.name} needs emulation, and binfmt_misc could not be mounted on {BINFMT}: "
                             f"{mounted.stderr.strip()}")
    entry = BINFMT / f"qemu-{arch.machine}"
    if not entry.exists() and shutil.which("update-binfmts"):
        subprocess.run(["update-binfmts", "--enable", f"qemu-{arch.machine}"], capture_output=True)
    if not entry.exists():
        raise StackError(f"{arch.name} needs emulation: no {entry} (apt-get install qemu-user-static "
                         "binfmt-support)")
