"""Build hook: the wheel carries sla_templates/ and deploy/pyinfra/ (with the lock its group data reads) inside
the package, beside the code of their targets (flops_mlops/oakestra/sla_templates, flops_mlops/pyinfra/deploys),
so an installed flops-mlops renders, pushes and provisions without a checkout (flops_mlops/bundled.py finds them).
Everything else is in pyproject.toml."""

import shutil
from pathlib import Path

from setuptools import setup
from setuptools.command.build_py import build_py

# package folder <- source in the repository (group_data/all.py reads ../../images/constraints.txt)
BUNDLED = {"oakestra/sla_templates": "sla_templates", "pyinfra/deploys": "deploy/pyinfra",
           "pyinfra/images/constraints.txt": "deploy/images/constraints.txt"}


class BuildWithBundledFiles(build_py):
    def run(self):
        super().run()
        if getattr(self, "editable_mode", False):
            return  # an editable install reads them from the checkout
        for target, source in BUNDLED.items():
            destination = Path(self.build_lib) / "flops_mlops" / target
            if Path(source).is_dir():
                shutil.copytree(source, destination, dirs_exist_ok=True,
                                ignore=shutil.ignore_patterns("__pycache__", "*.pyc"))
            else:
                destination.parent.mkdir(parents=True, exist_ok=True)
                shutil.copy2(source, destination)


setup(cmdclass={"build_py": BuildWithBundledFiles})
