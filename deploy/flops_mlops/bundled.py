"""Folders shipped beside the code: the SLA templates, the pyinfra deploys and the example ML repositories.

A wheel carries them inside the package, next to the code of their target (flops_mlops/oakestra/sla_templates,
flops_mlops/pyinfra/deploys, flops_mlops/fl/examples, copied there at build time by setup.py); a checkout or an
editable install reads them where they are edited: sla_templates/, deploy/pyinfra/ and examples/ at the top of the
repository.
"""

from __future__ import annotations

from pathlib import Path

PACKAGE = Path(__file__).resolve().parent
CHECKOUT = PACKAGE.parents[1]
# name: (where a wheel has it, inside the package; where a checkout has it)
FOLDERS = {"sla_templates": ("oakestra/sla_templates", CHECKOUT / "sla_templates"),
           "pyinfra": ("pyinfra/deploys", CHECKOUT / "deploy" / "pyinfra"),
           "examples": ("fl/examples", CHECKOUT / "examples"),
           "fl_project_image": ("fl/fl-project-image", CHECKOUT / "deploy" / "images" / "fl-project")}


def folder(name: str) -> Path:
    """The installed copy of ``name`` when there is one, else the checkout's."""
    installed, checkout = FOLDERS[name]
    return PACKAGE / installed if (PACKAGE / installed).is_dir() else checkout
