"""Folders shipped beside the code: the SLA templates and the pyinfra deploys.

A wheel carries them inside the package (flops_mlops/sla_templates, flops_mlops/pyinfra, copied there at build
time by setup.py); a checkout or an editable install reads them where they are edited: sla_templates/ and
deploy/pyinfra/ at the top of the repository.
"""

from __future__ import annotations

from pathlib import Path

PACKAGE = Path(__file__).resolve().parent
CHECKOUT = PACKAGE.parents[1]
SOURCES = {"sla_templates": CHECKOUT / "sla_templates", "pyinfra": CHECKOUT / "deploy" / "pyinfra"}


def folder(name: str) -> Path:
    """The installed copy of ``name`` when there is one, else the checkout's."""
    installed = PACKAGE / name
    return installed if installed.is_dir() else SOURCES[name]
