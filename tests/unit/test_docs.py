"""The user's docs match the code: their links lead somewhere, and the README names only commands that exist."""

from __future__ import annotations

import re
from pathlib import Path

from flops_mlops.cli import build_parser

ROOT = Path(__file__).resolve().parents[2]
PAGES = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]


def test_every_relative_link_leads_to_a_file():
    broken = []
    for page in PAGES:
        for target in re.findall(r"\]\(([^)#:]+)(?:#[^)]*)?\)", page.read_text(encoding="utf-8")):
            if not (page.parent / target).exists():
                broken.append(f"{page.relative_to(ROOT)} -> {target}")
    assert not broken, "links to nothing:\n" + "\n".join(broken)


def test_the_readme_names_only_commands_the_cli_has():
    commands = set(next(a for a in build_parser()._actions if a.dest == "command").choices)
    named = set(re.findall(r"^\| `([a-z]+)[ `]", (ROOT / "README.md").read_text(encoding="utf-8"), re.M))
    named |= {c for row in re.findall(r"^\| `([a-z]+)`, `([a-z]+)`, `([a-z]+)`", (ROOT / "README.md").read_text(
        encoding="utf-8"), re.M) for c in row}
    assert named and named <= commands, f"README names {sorted(named - commands)}, the CLI has {sorted(commands)}"


def test_the_readme_stays_short():
    assert len((ROOT / "README.md").read_text(encoding="utf-8").splitlines()) <= 160
