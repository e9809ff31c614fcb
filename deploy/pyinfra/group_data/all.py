"""Defaults for every host; inventories override them per host. Names are host data keys (flops_*)."""

# Stack configuration (tenants, ports, store kinds), path absolute or relative to deploy/pyinfra. The
# passwords come from the secrets file that configuration names, on the machine running pyinfra.
# `flops-mlops --config FILE provision` passes its --config here.
flops_config = "../../configs/native.yaml"

# What a host runs: any of backend_store, artifact_store, tracking_server (mode native), or docker_host alone
# (mode docker). Hosts with no roles are left alone.
flops_roles = []
flops_mode = "native"

# The deploys run services as systemd units (the only value). Hosts without systemd as PID 1 run the stack with
# `flops-mlops up` instead (docs/native.md).
flops_init = "systemd"

# Prefix of every path a deploy writes (etc/flops-mlops, var/lib/flops-mlops, var/log/flops-mlops, run/...).
flops_root = "/"

# How other hosts reach this one (default: its SSH host name, or its inventory name).
# flops_address = "10.0.0.5"

# Install Debian packages (mariadb-server, vsftpd, libpam-pwdfile, python3-venv, Docker) with apt.
flops_install_packages = True

# Each tenant's tracking and model servers run as <flops_service_user>-<tenant> (flops-mlops-acme), so that no
# tenant can read another's environment or files; never root (refused). Created as a system account without a
# login shell when missing; an existing account is used as it is.
flops_service_user = "flops-mlops"

# Python venv of the tracking servers. With flops_manage_venv the deploy creates it and installs
# flops_tracking_packages and flops-mlops itself (its login app, from this repository's sources, pinned by the
# lock); set it to False to use an existing venv that already has MLflow and flops-mlops.
flops_venv = "/opt/flops-mlops/venv"
flops_manage_venv = True


def __pinned(*names: str) -> list[str]:
    """name==version from the project's lock (deploy/images/constraints.txt), the versions tested together."""
    from pathlib import Path

    lock = Path(__file__).resolve().parents[2] / "images" / "constraints.txt"
    versions = {}
    for line in lock.read_text(encoding="utf-8").splitlines():
        if "==" in line and not line.startswith("#"):
            name, version = line.split("==", 1)
            versions[name.lower()] = f"{name}=={version}"
    return [versions[name.lower()] for name in names]


flops_tracking_packages = __pinned("mlflow", "Flask-WTF", "PyMySQL", "cryptography", "psutil")
# Extra arguments of every pip install into that venv: an internal index (["--index-url", URL]) or, on hosts
# without internet access, a folder of wheels on the host (["--no-index", "--find-links", "/srv/wheels"]; it
# needs the packages above, their dependencies and setuptools, which builds flops-mlops from its sources).
flops_pip_args = []

# docker mode: Docker's apt repository suite and packages; compose.yaml (with the backend store's init script)
# is rendered from the configuration, the other compose files and what the images build from are copied (paths
# relative to the repository; wheels are left out, so the images install from the package index there).
flops_debian_suite = "bookworm"
flops_docker_packages = ["docker-ce", "docker-ce-cli", "containerd.io", "docker-compose-plugin"]
flops_compose_files = ["compose.yaml"]
flops_compose_paths = [".dockerignore", "pyproject.toml", "README.md", "deploy/flops_mlops", "deploy/images"]

# Role model_server: what a host serves ("<tenant>/<project>": that project's champion), where (item i on
# flops_serve_base_port + i), and what the models need in the venv beyond MLflow (pinned by the lock).
flops_served_models = []
flops_serve_host = "127.0.0.1"
flops_serve_base_port = 8080
flops_model_packages = __pinned("scikit-learn", "skops")
