"""This machine as a docker-mode test host (@local): the compose stack under one root folder, no packages installed.

Read from the environment (set by tests/integration/test_pyinfra_docker.py): FLOPS_SANDBOX_ROOT (required, an
absolute folder) and FLOPS_COMPOSE_OVERRIDE (an extra compose file, such as compose.ci.yaml: images built here,
no registry). Ports and tenants come from the stack configuration as always. The native roles need systemd:
tests/integration/test_pyinfra_systemd.py applies them to systemd hosts in containers.
"""

import os

_root = os.environ.get("FLOPS_SANDBOX_ROOT")
if not _root or not os.path.isabs(_root):
    raise SystemExit("inventories/sandbox.py: set FLOPS_SANDBOX_ROOT to an absolute folder for the sandbox")

sandbox = [
    ("@local", {
        "flops_mode": "docker",
        "flops_roles": ["docker_host"],
        "flops_root": _root,
        "flops_install_packages": False,
        "flops_compose_files": ["compose.yaml", *filter(None, [os.environ.get("FLOPS_COMPOSE_OVERRIDE")])],
    }),
]
