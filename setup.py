"""Build hook: the wheel carries sla_templates/, deploy/pyinfra/ (with the lock its group data reads) and examples/
inside the package, beside the code that uses them (flops_mlops/oakestra/sla_templates, flops_mlops/pyinfra/deploys,
flops_mlops/fl/examples), so an installed flops-mlops renders, pushes, provisions and runs `round` with the default
example without a checkout (flops_mlops/bundled.py finds them).
Everything else is in pyproject.toml."""

import shutil
from pathlib import Path

from setuptools import setup
from setuptools.command.build_py import build_py

# package folder <- source in the repository (group_data/all.py reads ../../images/constraints.txt)
BUNDLED = {"oakestra/sla_templates": "sla_templates", "pyinfra/deploys": "deploy/pyinfra", "fl/examples": "examples",
           "fl/fl-project-image": "deploy/images/fl-project",
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
