"""What the compose tests share: the compose CLI, a throw-away stack per test module, its logins.

The images must exist: scripts/compose-ci.sh builds them on a machine without a registry and the tests then
use its override (FLOPS_COMPOSE_OVERRIDE=compose.ci.yaml); elsewhere `docker compose build` / `pull` first.
Without a Docker engine, Compose v2 or the images the tests skip, or fail with FLOPS_REQUIRE_SERVICES=1.
Every stack uses its own compose project name and free ports, and removes its containers and volumes.

A test module gets its own stack by importing the fixture: ``from compose_stack import stack``.
"""

from __future__ import annotations

import ftplib
import json
import os
import shutil
import subprocess
import uuid
from dataclasses import dataclass
from pathlib import Path

import pytest
import requests
import yaml
from conftest import ROOT, free_port, free_port_range, missing_service, run_cli
from tracking_checks import ftp_client

TENANT = "default"
SERVICES = ("backend-store", "artifact-store", "tracking-server")
FL_SERVICES = ("fl-aggregator", "fl-learner-0", "fl-learner-1")
ONE_SHOT = ("tracking-volumes",)  # runs before the tracking servers and exits
VOLUMES = ("backend-store", "artifact-store", "tracking-auth")
# The project compose.yaml gives the FL user when FLOPS_FL_PROJECT is not set.
DEFAULT_FL_PROJECT = "composedemo"
QUIET = {"MLFLOW_HTTP_REQUEST_MAX_RETRIES": "2", "MLFLOW_HTTP_REQUEST_TIMEOUT": "30"}
# The deep-learning project the compose tests run: the PyTorch example, in the image scripts/compose-ci.sh builds
# for it (step build_example_image: `flops-mlops build-fl-image --project digitstorch --ml-repo examples/pytorch`).
TORCH_EXAMPLE = ROOT / "examples" / "pytorch"
TORCH_IMAGE_PROJECT = "digitstorch"


def torch_example_image() -> str:
    """flops-mlops/fl-digitstorch:<tag of examples/pytorch as it is now>; skips (or fails) when not built."""
    from flops_mlops.fl.ml_repo import resolve
    from flops_mlops.fl.project_image import image_name

    image = image_name(TORCH_IMAGE_PROJECT, resolve(str(TORCH_EXAMPLE), None, Path("/nonexistent")).tag)
    if subprocess.run(["docker", "image", "inspect", image], capture_output=True).returncode != 0:
        missing_service(f"image {image} not built (scripts/compose-ci.sh build_example_image)")
    return image


def compose_files(main: Path = ROOT / "compose.yaml") -> list[str]:
    files = ["-f", str(main)]
    override = os.environ.get("FLOPS_COMPOSE_OVERRIDE", "").strip()
    if override:
        files += ["-f", str(ROOT / override)]
    return files


def need_compose() -> None:
    if shutil.which("docker") is None:
        missing_service("docker CLI is not installed (scripts/compose-ci.sh installs it)")
    version = subprocess.run(["docker", "compose", "version"], capture_output=True, text=True)
    if version.returncode != 0 or "v2." not in version.stdout:
        missing_service("Docker Compose v2 plugin is not installed (scripts/compose-ci.sh installs it)")


def need_engine() -> None:
    need_compose()
    if subprocess.run(["docker", "info"], capture_output=True).returncode != 0:
        missing_service("no Docker engine answers (scripts/compose-ci.sh starts dockerd)")


def compose_config(env_file: Path, *extra: str, files: list[str] | None = None) -> dict:
    files = compose_files() if files is None else files
    result = subprocess.run(["docker", "compose", *files, "--env-file", str(env_file), *extra,
                             "config", "--format", "json"],
                            capture_output=True, text=True, cwd=ROOT,
                            env={**os.environ, "FLOPS_SECRETS_FILE": str(env_file)})
    assert result.returncode == 0, result.stderr
    return json.loads(result.stdout)


@dataclass
class ComposeStack:
    project: str
    env_file: Path
    env: dict[str, str]
    ports: dict[str, int]
    secrets: dict[str, str]
    files: list[str]  # -f arguments: compose.yaml (the root's, or one rendered for more tenants), the override

    def compose(self, *args: str, timeout: float = 900, check: bool = True,
                extra_env: dict[str, str] | None = None) -> subprocess.CompletedProcess:
        argv = ["docker", "compose", *self.files, "--env-file", str(self.env_file), "-p", self.project, *args]
        result = subprocess.run(argv, capture_output=True, text=True, cwd=ROOT, timeout=timeout,
                                env={**self.env, **(extra_env or {})})
        if check and result.returncode != 0:
            raise AssertionError(f"docker compose {' '.join(args)} exited {result.returncode}\n"
                                 f"{result.stdout[-3000:]}\n{result.stderr[-3000:]}\n{self.logs()}")
        return result

    @property
    def ca(self) -> Path:
        """The deployment's CA certificate, beside the secrets file (`secrets init`; artifact_store.tls)."""
        return self.env_file.with_name(self.env_file.name + ".ca.crt")

    def ftp(self) -> ftplib.FTP:
        """A client connected to the published FTP port, not logged in: FTPS verified against the deployment's CA
        (configs/compose.yaml turns artifact_store.tls on), data connections encrypted after the login."""
        return ftp_client("127.0.0.1", self.ports["FLOPS_FTP_PORT"], self.ca)

    def logs(self) -> str:
        argv = ["docker", "compose", *self.files, "--env-file", str(self.env_file), "-p", self.project,
                "--profile", "*", "logs", "--no-color", "--tail", "40"]
        result = subprocess.run(argv, capture_output=True, text=True, cwd=ROOT, env=self.env, timeout=120)
        return result.stdout[-8000:]

    def up(self) -> None:
        # --pull never / --no-build: run exactly the images built beforehand (scripts/compose-ci.sh).
        self.compose("up", "--detach", "--wait", "--wait-timeout", "420", "--pull", "never", "--no-build")

    def exec(self, service: str, *command: str) -> subprocess.CompletedProcess:
        return self.compose("exec", "-T", service, *command, timeout=120)

    @property
    def tracking_uri(self) -> str:
        return self.tenant_uri(TENANT)

    def tenant_uri(self, tenant: str) -> str:
        variable = "FLOPS_TRACKING_PORT" if tenant == TENANT else f"FLOPS_TENANT_{tenant.upper()}_TRACKING_PORT"
        return f"https://127.0.0.1:{self.ports[variable]}"  # tracking.tls, on in configs/compose.yaml

    @property
    def admin(self) -> tuple[str, str]:
        """The tracking server's admin login (user admin, password from .env)."""
        return self.tenant_admin(TENANT)

    def tenant_admin(self, tenant: str) -> tuple[str, str]:
        return "admin", self.secrets[f"FLOPS_TENANT_{tenant.upper()}_ADMIN_PASSWORD"]

    def fl_login(self, project: str = DEFAULT_FL_PROJECT) -> tuple[str, str]:
        """The login compose.yaml gives the fl profile's aggregator for ``project``."""
        return f"fl-{project}", self.secrets[f"FLOPS_TENANT_{TENANT.upper()}_FL_PASSWORD"]

    def api(self, method: str, path: str, login: tuple[str, str] | None = None, **kwargs) -> requests.Response:
        """One request to the published tracking port (``login`` None: anonymous)."""
        return requests.request(method, f"{self.tracking_uri}{path}", auth=login, timeout=30, **kwargs)

    def container_ids(self) -> dict[str, str]:
        """Service name -> container id, of the containers that run now."""
        ids = {}
        for line in self.compose("ps", "--format", "json").stdout.splitlines():
            if line.strip():
                state = json.loads(line)
                ids[state["Service"]] = state["ID"]
        return ids

    def volumes(self) -> list[str]:
        result = subprocess.run(["docker", "volume", "ls", "--quiet", "--filter",
                                 f"label=com.docker.compose.project={self.project}"],
                                capture_output=True, text=True, check=True)
        return result.stdout.split()


def images_missing(env_file: Path) -> list[str]:
    config = compose_config(env_file, "--profile", "fl", "--profile", "serve")
    images = {service["image"] for service in config["services"].values()}
    return sorted(image for image in images
                  if subprocess.run(["docker", "image", "inspect", image], capture_output=True).returncode != 0)


def start_stack(tmp_path_factory, more_tenants: tuple[str, ...] = (), fl: dict | None = None):
    """A stack of configs/compose.yaml: compose.yaml at the root, or with ``more_tenants`` after tenant default
    or another FL project (``fl``: compose.fl), the compose project `flops-mlops render --target compose` writes
    for that configuration."""
    need_engine()
    folder = tmp_path_factory.mktemp("compose")
    data = yaml.safe_load((ROOT / "configs" / "compose.yaml").read_text(encoding="utf-8"))
    data.update(state_dir=str(folder / "state"), secrets_file=str(folder / ".env"))
    data["tenants"] += [{"id": tenant} for tenant in more_tenants]
    if fl is not None:
        data["compose"]["fl"] = fl
    config_path = folder / "compose-stack.yaml"
    config_path.write_text(yaml.safe_dump(data), encoding="utf-8")
    run_cli("secrets", "init", config=config_path, check=True)
    files = compose_files()
    if more_tenants or fl is not None:
        run_cli("render", "--target", "compose", "--out", str(folder), config=config_path, check=True)
        files = compose_files(folder / "compose.yaml")
    missing = images_missing(folder / ".env")
    if missing:
        missing_service(f"images not built: {', '.join(missing)} (run scripts/compose-ci.sh and set "
                        "FLOPS_COMPOSE_OVERRIDE=compose.ci.yaml, or docker compose build/pull)")
    pasv_min, pasv_max = free_port_range(5)
    ports = {"FLOPS_TRACKING_PORT": free_port(), "FLOPS_MYSQL_PORT": free_port(), "FLOPS_FTP_PORT": free_port(),
             "FLOPS_FTP_PASV_MIN_PORT": pasv_min, "FLOPS_FTP_PASV_MAX_PORT": pasv_max,
             **{f"FLOPS_TENANT_{tenant.upper()}_TRACKING_PORT": free_port() for tenant in more_tenants}}
    env = {k: v for k, v in os.environ.items() if not k.startswith("FLOPS_") or k == "FLOPS_COMPOSE_OVERRIDE"}
    env = {k: v for k, v in env.items() if not k.startswith("MLFLOW_TRACKING_")}
    env.update({k: str(v) for k, v in ports.items()})
    # The certificates `secrets init` made beside this stack's secrets file (compose.yaml's secrets section).
    env["FLOPS_SECRETS_FILE"] = str(folder / ".env")
    from flops_mlops.configuration.secrets import read_env

    project = f"flopstest-{uuid.uuid4().hex[:8]}"
    stack = ComposeStack(project, folder / ".env", env, ports, read_env(folder / ".env"), files)
    try:
        # tracking.tls: the tests' clients verify the servers against the deployment's CA, as a user's would
        # (MLflow's client setting; requests' own for the tests' direct requests), never without verification.
        with pytest.MonkeyPatch.context() as patch:
            patch.setenv("MLFLOW_TRACKING_SERVER_CERT_PATH", str(stack.ca))
            patch.setenv("REQUESTS_CA_BUNDLE", str(stack.ca))
            stack.up()
            yield stack
    finally:
        stack.compose("--profile", "*", "down", "--volumes", "--remove-orphans", "--timeout", "20",
                      check=False, timeout=300)


@pytest.fixture(scope="module")
def stack(tmp_path_factory):
    """The root compose.yaml, one tenant."""
    yield from start_stack(tmp_path_factory)


def db_password(stack: ComposeStack) -> str:
    return stack.secrets["FLOPS_TENANT_DEFAULT_DB_PASSWORD"]


def ftp_password(stack: ComposeStack) -> str:
    return stack.secrets["FLOPS_TENANT_DEFAULT_FTP_PASSWORD"]
