"""This machine as a test host (@local): no systemd, no packages installed, everything under one root folder.

Read from the environment (set by the tests): FLOPS_SANDBOX_ROOT (required, an absolute folder),
FLOPS_SANDBOX_VENV (a venv that already has MLflow and flops-mlops; default: the venv running pyinfra),
FLOPS_SANDBOX_MODE (native or docker) and FLOPS_COMPOSE_OVERRIDE (docker mode: an extra compose file). Ports and
tenants come from the stack configuration as always. The tracking servers run as the account flops-mlops
(created when missing), which must be able to read that venv, its Python and the flops-mlops sources.
"""

import os
import sys

_root = os.environ.get("FLOPS_SANDBOX_ROOT")
if not _root or not os.path.isabs(_root):
    raise SystemExit("inventories/sandbox.py: set FLOPS_SANDBOX_ROOT to an absolute folder for the sandbox")
_mode = os.environ.get("FLOPS_SANDBOX_MODE", "native")

sandbox = [
    ("@local", {
        "flops_mode": _mode,
        "flops_roles": ["docker_host"] if _mode == "docker" else ["backend_store", "artifact_store",
                                                                  "tracking_server"],
        "flops_init": "start-stop-daemon",
        "flops_root": _root,
        "flops_install_packages": False,
        "flops_service_user": "flops-mlops",
        "flops_venv": os.environ.get("FLOPS_SANDBOX_VENV", sys.prefix),
        "flops_manage_venv": False,
        # docker mode: compose.yaml plus an override such as compose.ci.yaml (images built here, no registry).
        "flops_compose_files": ["compose.yaml", *filter(None, [os.environ.get("FLOPS_COMPOSE_OVERRIDE")])],
    }),
]
