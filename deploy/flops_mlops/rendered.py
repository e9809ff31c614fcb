"""Files that `flops-mlops render` writes (Oakestra SLA files, the compose project): written atomically, or
compared with what is on disk (`--check`, and `push --reviewed`)."""

from __future__ import annotations

import sys
from dataclasses import dataclass
from pathlib import Path

from .processes import write_private


@dataclass(frozen=True)
class RenderedFile:
    path: str  # relative to the output folder
    text: str
    mode: int = 0o644


def differences(files: list[RenderedFile], out: Path) -> list[str]:
    """The files that are missing in ``out`` or differ from what was rendered."""
    stale = []
    for item in files:
        target = out / item.path
        if not target.is_file() or target.read_text(encoding="utf-8") != item.text:
            stale.append(str(target))
    return stale


def write(files: list[RenderedFile], out: Path) -> list[Path]:
    """Write every file (each atomically, with its mode); returns the paths."""
    written = []
    for item in files:
        write_private(out / item.path, item.text, item.mode)
        written.append(out / item.path)
    return written


def write_or_check(files: list[RenderedFile], out: Path, check: bool, rerun: str) -> int:
    """`render`'s output: the paths written, or with ``check`` the files that drifted (exit 1) and ``rerun``,
    the command that renders them again."""
    if not check:
        for path in write(files, out):
            print(path)
        return 0
    stale = differences(files, out)
    for path in stale:
        print(f"differs from the configuration: {path}", file=sys.stderr)
    if stale:
        print(f"re-run: {rerun}", file=sys.stderr)
        return 1
    print(f"{out}: all {len(files)} file(s) are up to date")
    return 0
