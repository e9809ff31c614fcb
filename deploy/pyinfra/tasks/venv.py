"""flops-mlops in the Python services' venv (tracking servers, model servers), from this checkout's sources."""

from __future__ import annotations

import shlex

from pyinfra import host
from pyinfra.api.operation import OperationMeta
from pyinfra.facts.server import Command
from pyinfra.operations import files, server

from .settings import PYINFRA_DIR, SOURCE_EXCLUDE_DIRS, HostDataError, HostSettings

REPOSITORY = PYINFRA_DIR.parent.parent
# What building flops-mlops needs (pyproject.toml names README.md), and the lock it is installed with.
PACKAGE_FILES = ("pyproject.toml", "README.md", "deploy/images/constraints.txt")


def install_flops_mlops(s: HostSettings) -> list[OperationMeta]:
    """flops-mlops itself in the managed venv: its `flops-basic-auth` app (the login) is what the servers run.

    Its sources are copied to <venv>/src/flops-mlops and installed with the lock as constraints when they
    changed or the venv lacks the package. Returns the copies: when one of them changes, the servers restart.
    """
    if not (REPOSITORY / "pyproject.toml").is_file():
        raise HostDataError(f"host {host.name}: flops_manage_venv: installing flops-mlops on a host copies its "
                            f"sources from a repository checkout, and {REPOSITORY} is none (flops-mlops was "
                            "installed from a wheel); run provision from a checkout, or set flops_manage_venv: "
                            "False with a venv that has flops-mlops")
    src = f"{s.venv}/src/flops-mlops"
    for path in (f"{s.venv}/src", src, f"{src}/deploy", f"{src}/deploy/images"):
        files.directory(name=f"Folder {path}", path=path, user="root", group="root", mode="755")
    copied = [files.put(name=f"Copy {relative}", src=str(REPOSITORY / relative), dest=f"{src}/{relative}",
                        user="root", group="root", mode="644") for relative in PACKAGE_FILES]
    copied.append(files.sync(name="Copy deploy/flops_mlops", src=str(REPOSITORY / "deploy" / "flops_mlops"),
                             dest=f"{src}/deploy/flops_mlops", delete=True, exclude=["*.pyc"],
                             exclude_dir=SOURCE_EXCLUDE_DIRS))
    pip_cmd = shlex.join([f"{s.venv}/bin/pip", "install", "--quiet", *s.pip_args, "--constraint",
                          f"{src}/deploy/images/constraints.txt"])
    check = shlex.join([f"{s.venv}/bin/python", "-c", "import importlib.metadata as m; m.version('flops-mlops')"])

    def needed() -> bool:
        if any(op.did_change() for op in copied):
            return True
        return host.get_fact(Command, f"if {check} 2>/dev/null; then echo yes; else echo no; fi") != "yes"

    # The same version number on changed sources: reinstall the package itself, then add what it needs.
    server.shell(name="flops-mlops in the venv (pinned by the lock)",
                        commands=[f"{pip_cmd} --force-reinstall --no-deps {shlex.quote(src)}",
                                  f"{pip_cmd} {shlex.quote(src)}"],
                        _if=needed)
    return copied
