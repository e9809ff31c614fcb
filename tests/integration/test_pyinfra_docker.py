"""docker mode applied on this machine (@local sandbox): compose.yaml rendered for two tenants, the image sources and .env copied under a private
root folder, `docker compose up -d --wait` under a project name of its own, a second apply with 0 changes,
the tenant end to end (as its admin) through the published ports, then stop; the test removes its project's containers and
volumes at the end. Needs the Docker engine, Compose v2 and the stack's images (scripts/compose-ci.sh builds
them; FLOPS_COMPOSE_OVERRIDE=compose.ci.yaml names the override that uses them).
"""

from __future__ import annotations

import contextlib
import os
import shutil
import subprocess
import uuid

import pytest
import yaml
from conftest import ROOT, missing_service
from pyinfra_hosts import (
    PYINFRA_DIR,
    changed_operations,
    check_tenant_end_to_end,
    provision,
    sandbox_root,
    write_stack,
)

pytestmark = [pytest.mark.docker, pytest.mark.services, pytest.mark.timeout(1200)]

INVENTORY = PYINFRA_DIR / "inventories" / "sandbox.py"


def compose_files() -> list[str]:
    override = os.environ.get("FLOPS_COMPOSE_OVERRIDE", "").strip()
    return ["compose.yaml", *([override] if override else [])]


def need_engine_and_images(secrets_file) -> None:
    if shutil.which("docker") is None or subprocess.run(["docker", "info"], capture_output=True).returncode != 0:
        missing_service("no Docker engine answers (scripts/compose-ci.sh starts dockerd)")
    if subprocess.run(["docker", "compose", "version"], capture_output=True).returncode != 0:
        missing_service("Docker Compose v2 plugin is not installed (scripts/compose-ci.sh installs it)")
    files = [arg for name in compose_files() for arg in ("-f", str(ROOT / name))]
    result = subprocess.run(["docker", "compose", *files, "--env-file", str(secrets_file), "config", "--images"],
                            capture_output=True, text=True, cwd=ROOT,
                            env={**os.environ, "FLOPS_SECRETS_FILE": str(secrets_file)})
    # The engine and Compose are there: a failing `config` is a broken compose.yaml or override, not a missing
    # service, so it fails the test even where services may be missing.
    assert result.returncode == 0, f"docker compose config failed: {result.stderr.strip()}"
    missing = [image for image in result.stdout.split()
               if subprocess.run(["docker", "image", "inspect", image], capture_output=True).returncode != 0]
    if missing:
        missing_service(f"images not built: {', '.join(missing)} (run scripts/compose-ci.sh and set "
                        "FLOPS_COMPOSE_OVERRIDE=compose.ci.yaml)")


@contextlib.contextmanager
def new_bytecode_folder():
    """A folder in a nested __pycache__ of the package the deploy copies, there only while the block runs."""
    folder = ROOT / "deploy" / "flops_mlops" / "tracking" / "__pycache__" / f"probe-{uuid.uuid4().hex[:8]}"
    folder.mkdir(parents=True)
    try:
        yield
    finally:
        folder.rmdir()


@pytest.fixture(scope="module")
def docker_sandbox(tmp_path_factory):
    folder = tmp_path_factory.mktemp("pyinfra-docker")
    config = write_stack(folder, ["default", "acme"])  # the compose project is rendered for both
    data = yaml.safe_load(config.read_text())
    data["tracking"]["tls"] = True  # HTTPS, as configs/native.yaml and compose.yaml: the deploy copies the certificates
    config.write_text(yaml.safe_dump(data))
    need_engine_and_images(folder / "secrets.env")
    with sandbox_root() as root_parent:
        root = root_parent / "root"
        env = {"FLOPS_SANDBOX_ROOT": str(root)}
        state = {"config": config, "root": root, "env": env}
        project = None
        try:
            state["first"] = provision(config, INVENTORY, env=env)
            # Between two applies another process may import a module of ours for the first time, and Python
            # makes a nested __pycache__ folder in the checkout: a copy of the source must not count it.
            with new_bytecode_folder():
                state["second"] = provision(config, INVENTORY, env=env)
            project = _project(root)
            state["project"] = project
            yield state
        finally:
            provision(config, INVENTORY, "--stop", env=env, check=False)
            project = project or _project(root)
            if project:  # this test's own compose project: its containers, networks and volumes
                subprocess.run(["docker", "compose", "-p", project, "down", "--volumes", "--remove-orphans",
                                "--timeout", "20"], capture_output=True, timeout=300)


def _project(root) -> str | None:
    """The project name the deploy used, read from the containers' labels by the compose folder it wrote."""
    folders = list(root.glob("var/lib/flops-mlops/*/compose"))
    if not folders:
        return None
    result = subprocess.run(["docker", "ps", "-a", "--filter",
                             f"label=com.docker.compose.project.working_dir={folders[0]}",
                             "--format", '{{.Label "com.docker.compose.project"}}'], capture_output=True, text=True)
    names = set(result.stdout.split())
    return names.pop() if len(names) == 1 else None


def test_apply_starts_the_compose_stack_and_second_apply_changes_nothing(docker_sandbox):
    first = docker_sandbox["first"]["results"]["totals"]
    assert first["error"] == 0 and first["success"] > 0, first
    assert docker_sandbox["project"], "no containers carry the compose folder the deploy wrote"
    second = docker_sandbox["second"]["results"]
    assert second["totals"]["error"] == 0
    assert second["totals"]["success"] == 0, changed_operations(docker_sandbox["second"])


@pytest.mark.parametrize("tenant", ["default", "acme"])
def test_each_tenant_end_to_end_through_published_ports(docker_sandbox, tenant):
    # backend_store.tls (the default): compose's MySQL too; the tenant's user is refused without TLS.
    check_tenant_end_to_end(docker_sandbox["config"], "127.0.0.1", "127.0.0.1", "127.0.0.1", tenant)


def test_compose_file_is_the_render_of_the_configuration_with_its_ports(docker_sandbox):
    from flops_mlops.compose import render as compose
    from flops_mlops.configuration import loading as config_module
    from flops_mlops.rendered import differences

    folder = next(docker_sandbox["root"].glob("var/lib/flops-mlops/*/compose"))
    config = config_module.load(docker_sandbox["config"])
    rendered = compose.render(config, folder, checkout=folder)
    assert differences(rendered, folder) == []
    text = (folder / "compose.yaml").read_text()
    assert f"${{FLOPS_MYSQL_PORT:-{config.backend_store.port}}}:3306" in text
    for tenant in config.tenants:
        assert f":-{config.tracking_port(tenant)}}}:5000" in text


def test_env_file_is_private_and_carries_exactly_the_secrets_compose_reads(docker_sandbox):
    from flops_mlops.configuration import loading as config_module
    from flops_mlops.configuration.secrets import Secrets, required_keys

    config = config_module.load(docker_sandbox["config"])
    secrets = Secrets.load(config)
    env_file = next(docker_sandbox["root"].glob("var/lib/flops-mlops/*/compose/.env"))
    assert oct(env_file.stat().st_mode & 0o777) == "0o600"
    text = env_file.read_text()
    written = {line.split("=", 1)[0] for line in text.splitlines() if "=" in line and not line.startswith("#")}
    # Every tenant's store and login secrets; the FL and serving passwords only of the fl and serve profiles'
    # tenant (the first).
    expected = set(required_keys(config)) - {"FLOPS_TENANT_ACME_FL_PASSWORD", "FLOPS_TENANT_ACME_SERVE_PASSWORD"}
    assert written == expected | {"FLOPS_BIND_ADDRESS", "FLOPS_SECRETS_FILE"}
    for key in expected:
        assert f"\n{key}={secrets.values[key]}\n" in text, key
    # artifact_store.tls and backend_store.tls: compose.yaml's secrets find the certificates beside this .env;
    # only the CA is public.
    assert f"\nFLOPS_SECRETS_FILE={env_file}\n" in text
    suffixes = ("ca.crt", "ftp-tls.crt", "ftp-tls.key", "mysql-tls.crt", "mysql-tls.key")
    modes = {suffix: oct(env_file.with_name(f".env.{suffix}").stat().st_mode & 0o777) for suffix in suffixes}
    assert modes == {suffix: "0o644" if suffix == "ca.crt" else "0o600" for suffix in suffixes}
