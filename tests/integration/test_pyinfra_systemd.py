"""The pyinfra deploys as users run them: Debian 12 hosts with systemd, reached over SSH, packages from apt.

Four containers with systemd as PID 1 (tests/systemd_hosts.py), each at its own address: `mlops` gets every
role (inventories/single_host.py), `db`, `ftp` and `mlflow` one role each (inventories/three_hosts.py). Both
inventories use the defaults of group_data/all.py (flops_init systemd, paths from /, MariaDB, vsftpd and
python3-venv from apt), with two ways to get the tracking servers' venv: `mlops` has the managed venv, whose pip
installs from a wheelhouse mounted into it (flops_pip_args; the containers cannot verify the package index's
certificate here) into a Docker volume kept between runs (see venv_volume); `mlflow` uses an existing venv
(flops_manage_venv false): this checkout's, mounted read-only at its own path. The two inventories are
applied at the same time. The stacks have tracking.tls on, as configs/native.yaml: every tracking server speaks
HTTPS only, and every client here (the deploy's probe, the servers' own user setup, MLflow's client) verifies it
against the deployment's CA.

Checked: first apply, second apply with 0 changes, a model logged through each tenant's tracking server (over
HTTPS) and found on FTP and in MySQL as that tenant, HTTPS with a certificate for the host verified against the
CA and plain HTTP refused, the key private to the tenant's account, a served model's reader made by its server
through HTTPS, tracking units ordered after the stores on their host, a changed tenant setting restarting
exactly that tenant's server, `systemctl restart` of a host's units and a reboot of hosts, after which the stack
serves again.
"""

from __future__ import annotations

import hashlib
import shutil
import socket
import ssl
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from urllib.parse import quote

import pytest
import requests
import yaml
from conftest import ROOT, missing_service
from pyinfra_hosts import changed_operations, check_tenant_end_to_end, provision, write_stack
from systemd_hosts import systemd_hosts

pytestmark = [pytest.mark.docker, pytest.mark.services, pytest.mark.timeout(1800)]

TENANTS = ["acme", "globex"]
ROLES = {"mlops": ["backend_store", "artifact_store", "tracking_server"], "db": ["backend_store"],
         "ftp": ["artifact_store"], "mlflow": ["tracking_server"]}
TOPOLOGIES = {"single_host": {"backend": "mlops", "artifacts": "mlops", "tracking": "mlops"},
              "three_hosts": {"backend": "db", "artifacts": "ftp", "tracking": "mlflow"}}
PACKAGES = {"backend": ["mariadb-server", "mariadb-client"], "artifacts": ["vsftpd", "libpam-pwdfile"],
            "tracking": ["python3-venv"]}  # what the deploys install with apt (python3-venv: for a managed venv)
WHEELS = "/srv/wheels"  # where the tracking hosts see the wheelhouse (read-only)
PIP_ARGS = ["--no-index", "--find-links", WHEELS]


def wheelhouse(folder: Path) -> Path:
    """The wheels the tracking hosts' venv installs from: the lock's wheelhouse (scripts/compose-ci.sh
    build_wheelhouse) plus setuptools, which builds flops-mlops from the sources the deploy copies."""
    built = sorted((ROOT / "deploy" / "images" / "wheelhouse").glob("*.whl"))
    if not any(path.name.startswith("mlflow-") for path in built):
        missing_service("deploy/images/wheelhouse has no wheels (scripts/compose-ci.sh build_wheelhouse)")
    wheels = folder / "wheels"
    wheels.mkdir()
    for path in built:
        shutil.copy(path, wheels / path.name)
    requirement = (ROOT / "pyproject.toml").read_text().split('requires = ["', 1)[1].split('"', 1)[0]
    subprocess.run([sys.executable, "-m", "pip", "download", "--quiet", "--no-deps", "--only-binary", ":all:",
                    "--dest", str(wheels), requirement], check=True, timeout=300)
    wheels.chmod(0o755)
    return wheels


# How each tracking host gets its venv (see the module's docstring), and what it mounts for that.
VENVS = {"mlops": {"flops_pip_args": PIP_ARGS},
         "mlflow": {"flops_manage_venv": False, "flops_venv": sys.prefix}}
# A model the three-host inventory says is served (by a model server not deployed here): acme's tracking server
# creates its reader, serve-mnist, through its own HTTPS address (FLOPS_LOCAL_URI, verified against the CA).
SERVED = {"mlflow": {"flops_served_models": ["acme/mnist"]}}


def venv_volume() -> str:
    """A Docker volume for mlops' managed venv, kept from run to run while the lock is the same: a cold run
    installs MLflow and its dependencies there (about 4 minutes on 2 busy cores), a warm one finds them (the
    deploy's pip steps then change nothing but flops-mlops itself when its sources changed). Older ones go."""
    digest = hashlib.sha256((ROOT / "deploy" / "images" / "constraints.txt").read_bytes()).hexdigest()[:12]
    name = f"flops-pyinfra-venv-{digest}"
    for old in subprocess.run(["docker", "volume", "ls", "-q", "--filter", "name=flops-pyinfra-venv-"],
                              capture_output=True, text=True).stdout.split():
        if old != name:
            subprocess.run(["docker", "volume", "rm", old], capture_output=True)
    return name


def mounts(wheels: Path) -> dict[str, list[str]]:
    return {"mlops": [f"{wheels}:{WHEELS}:ro", f"{venv_volume()}:/opt/flops-mlops/venv"],
            "mlflow": [f"{ROOT}:{ROOT}:ro"]}


def write_inventory(path: Path, hosts: dict, ssh: dict, names: list[str]) -> None:
    lines = [f'"""Written by {Path(__file__).name}: systemd hosts in containers, group_data defaults."""\n']
    for name in names:
        data = {**ssh, "ssh_hostname": hosts[name].address, "flops_roles": ROLES[name], **VENVS.get(name, {}),
                **SERVED.get(name, {})}
        lines.append(f"{name} = [({name!r}, {data!r})]\n")
    path.write_text("".join(lines), encoding="utf-8")


def write_topology_stack(folder: Path, ftp_address: str, tracking_address: str) -> Path:
    """Stores and servers listen on every address of their host; FTP's passive answers name the FTP host. HTTPS on
    the tracking servers, as configs/native.yaml (their certificates are made by the deploy, for the host too)."""
    folder.mkdir()
    config = write_stack(folder, TENANTS)
    data = yaml.safe_load(config.read_text())
    data["backend_store"]["host"] = data["artifact_store"]["host"] = data["tracking"]["host"] = "0.0.0.0"
    data["artifact_store"]["pasv_address"] = ftp_address
    data["tracking"]["public_host"] = tracking_address
    data["tracking"]["tls"] = True
    config.write_text(yaml.safe_dump(data))
    return config


def apply_all(lab: dict, *flags: str) -> dict[str, dict]:
    """Both inventories at once (pyinfra applies the hosts of one inventory in parallel too)."""
    with ThreadPoolExecutor(len(TOPOLOGIES)) as pool:
        futures = {name: pool.submit(provision, lab[name]["config"], lab[name]["inventory"], *flags)
                   for name in TOPOLOGIES}
        return {name: future.result() for name, future in futures.items()}


@pytest.fixture(scope="module")
def lab(tmp_path_factory):
    folder = tmp_path_factory.mktemp("pyinfra-systemd")
    folder.chmod(0o755)
    with systemd_hosts(list(ROLES), folder, mounts(wheelhouse(folder))) as (hosts, ssh):
        lab = {"hosts": hosts}
        for name, where in TOPOLOGIES.items():
            inventory = folder / f"{name}.py"
            write_inventory(inventory, hosts, ssh, sorted(set(where.values())))
            config = write_topology_stack(folder / name, hosts[where["artifacts"]].address,
                                          hosts[where["tracking"]].address)
            lab[name] = {"config": config, "inventory": inventory,
                         **{role: hosts[host_name] for role, host_name in where.items()}}
        lab["first"] = apply_all(lab)
        lab["second"] = apply_all(lab)
        yield lab


def stack(config: Path):
    from flops_mlops.configuration import loading as config_module

    return config_module.load(config)


def units(topology: dict) -> dict[str, list[str]]:
    """The stack's systemd units by role (the tracking servers' and vsftpd's names carry the stack name)."""
    name = stack(topology["config"]).name
    return {"backend": ["mariadb.service"], "artifacts": [f"flops-mlops-{name}-vsftpd.service"],
            "tracking": [f"flops-mlops-{name}-tracking-{tenant}.service" for tenant in TENANTS]}


def tracking_uri(topology: dict, tenant) -> str:
    config = stack(topology["config"])
    return f"{config.tracking_scheme}://{topology['tracking'].address}:{config.tracking_port(tenant)}"


def ca_file(topology: dict) -> str:
    """The deployment's CA certificate, beside the secrets file on this machine."""
    from flops_mlops.configuration import certificates

    return str(certificates.tracking_ca(stack(topology["config"])))


def wait_serving(topology: dict, timeout: float = 240) -> None:
    config = stack(topology["config"])
    deadline = time.monotonic() + timeout
    for tenant in config.tenants:
        url = f"{tracking_uri(topology, tenant)}/health"
        while True:
            try:
                if requests.get(url, timeout=3, verify=ca_file(topology)).status_code == 200:
                    break
            except requests.RequestException:
                pass
            if time.monotonic() > deadline:
                raise AssertionError(f"{url} does not answer after {timeout} s")
            time.sleep(1)


def check_every_tenant(topology: dict) -> None:
    for tenant in TENANTS:
        check_tenant_end_to_end(topology["config"], topology["tracking"].address, topology["backend"].address,
                                topology["artifacts"].address, tenant)


def invocations(host, unit_names: list[str]) -> dict[str, str]:
    """systemd's id of each unit's current run: a new id means the unit was (re)started."""
    return {unit: host.unit_property(unit, "InvocationID") for unit in unit_names}


@pytest.mark.parametrize("topology", list(TOPOLOGIES))
def test_first_apply_installs_from_apt_and_leaves_units_running_and_enabled(lab, topology):
    report = lab["first"][topology]["results"]
    assert report["totals"]["error"] == 0 and report["failed_hosts"] == [], report["totals"]
    for role, unit_names in units(lab[topology]).items():
        host = lab[topology][role]
        managed_venv = VENVS.get(host.name, {}).get("flops_manage_venv", True)
        for package in [p for p in PACKAGES[role] if p != "python3-venv" or managed_venv]:
            assert host.run(f"dpkg-query -W -f '${{db:Status-Status}}' {package}") == "installed", (host.name, package)
        for unit in unit_names:
            assert host.unit_property(unit, "ActiveState") == "active", (host.name, unit)
            assert host.unit_property(unit, "UnitFileState") == "enabled", (host.name, unit)
    # The packaged vsftpd (local accounts, port 21) is stopped and disabled; ours serves the tenants.
    ftp = lab[topology]["artifacts"]
    assert ftp.unit_property("vsftpd.service", "ActiveState") == "inactive"
    assert ftp.unit_property("vsftpd.service", "UnitFileState") == "disabled"


@pytest.mark.parametrize("topology", list(TOPOLOGIES))
def test_second_apply_reports_no_changes(lab, topology):
    report = lab["second"][topology]
    assert report["results"]["totals"]["error"] == 0
    assert report["results"]["totals"]["success"] == 0, changed_operations(report)


@pytest.mark.parametrize("topology", list(TOPOLOGIES))
def test_each_tenant_logs_a_model_found_on_ftp_and_in_mysql_as_that_tenant(lab, topology):
    check_every_tenant(lab[topology])


def test_servers_ask_for_a_login_run_as_their_account_and_keep_secrets_private(lab):
    """On the three hosts: every tenant's server answers 401 without a login and runs as its own account,
    flops-mlops-<tenant> (never root, never another tenant's); files holding passwords are root's, mode 0600; no
    password in process arguments, journals or the output of any apply."""
    from flops_mlops.configuration.secrets import Secrets

    three = lab["three_hosts"]
    config = stack(three["config"])
    secrets = [value for value in Secrets.load(config).values.values() if value]
    leaked = lambda text: [value for value in secrets if value in text or quote(value, safe="") in text]  # noqa: E731
    tracking = three["tracking"]
    accounts = {t.id: tracking.run(f"id -u flops-mlops-{t.id}").strip() for t in config.tenants}
    assert "0" not in accounts.values() and len(set(accounts.values())) == len(accounts), accounts
    for tenant, unit in zip(config.tenants, units(three)["tracking"]):
        account = accounts[tenant.id]
        uri = tracking_uri(three, tenant)
        anonymous = requests.get(f"{uri}/api/2.0/mlflow/experiments/search", params={"max_results": 1}, timeout=10,
                                 verify=ca_file(three))
        assert anonymous.status_code == 401, (anonymous.status_code, anonymous.text[:300])
        pid = tracking.unit_property(unit, "MainPID")
        uids = tracking.run(f"grep '^Uid:' /proc/{pid}/status").split()[1:]
        assert uids == [account] * 4, (unit, uids)  # real, effective, saved, filesystem
        assert leaked(tracking.run(f"tr '\\0' ' ' < /proc/{pid}/cmdline")) == [], unit
        assert leaked(tracking.run(f"journalctl -u {unit} --no-pager")) == [], unit
        work = f"/var/lib/flops-mlops/{config.name}/tracking/{tenant.id}"
        assert tracking.run(f"stat -c '%a %U' {work} {work}/auth").split("\n")[:2] == [
            f"700 flops-mlops-{tenant.id}", f"700 flops-mlops-{tenant.id}"]
        # Users and grants are in the backend store's mlflow_<tenant>_auth: no SQLite file beside the server.
        assert tracking.run(f"ls -A {work}/auth").split() == []
    # As each tenant's account, another tenant's server environment (its passwords), working folder and env file
    # are closed; its own server's environment is not (the reads work).
    pids = {t.id: tracking.unit_property(unit, "MainPID") for t, unit in zip(config.tenants, units(three)["tracking"])}

    def reads(account: str, command: str) -> bool:
        return tracking.run(f"runuser -u {account} -- {command} >/dev/null 2>&1 && echo READ || echo REFUSED",
                            check=False).strip() == "READ"

    for reader in config.tenants:
        assert reads(f"flops-mlops-{reader.id}", f"cat /proc/{pids[reader.id]}/environ"), reader.id
        for owner in (t for t in config.tenants if t.id != reader.id):
            for command in (f"cat /proc/{pids[owner.id]}/environ",
                            f"ls /var/lib/flops-mlops/{config.name}/tracking/{owner.id}",
                            f"cat /etc/flops-mlops/{config.name}/tracking/{owner.id}.env"):
                assert not reads(f"flops-mlops-{reader.id}", command), (reader.id, command)
    private = {tracking: [f"/etc/flops-mlops/{config.name}/tracking/{t.id}.env" for t in config.tenants],
               three["backend"]: [f"/etc/flops-mlops/{config.name}/tenants.sql"],
               three["artifacts"]: [f"/etc/flops-mlops/{config.name}/vsftpd/passwd"]}
    for host, paths in private.items():
        for path in paths:
            assert host.run(f"stat -c '%a %U' {path}").strip() == "600 root", (host.name, path)
    for run in ("first", "second"):
        assert leaked(lab[run]["three_hosts"]["output"]) == [], run


def presented(address: str, port: int, ca: str) -> bytes:
    """The DER certificate the server at ``address``:``port`` presents, verified against ``ca`` for that address."""
    context = ssl.create_default_context(cafile=ca)
    with socket.create_connection((address, port), timeout=10) as raw:
        with context.wrap_socket(raw, server_hostname=address) as tls:
            return tls.getpeercert(binary_form=True)


@pytest.mark.parametrize("topology", list(TOPOLOGIES))
def test_tracking_servers_speak_https_only_with_their_certificate_and_a_key_only_their_account_reads(lab, topology):
    """tracking.tls: each server presents its tenant's certificate, for the address the host is reached at (the
    inventory's), verified against the deployment's CA; plain HTTP gets no answer, nor does a client trusting only
    the system's store; on the host the certificate is public (0644) and the key its tenant account's (0600)."""
    from flops_mlops.configuration import certificates
    from flops_mlops.configuration.secrets import Secrets

    where = lab[topology]
    config, tracking, ca = stack(where["config"]), where["tracking"], ca_file(where)
    secrets = Secrets.load(config)
    etc = f"/etc/flops-mlops/{config.name}"
    assert tracking.run(f"stat -c '%a %U' {etc}/tracking-ca.crt").strip() == "644 root"
    for tenant in config.tenants:
        port, uri = config.tracking_port(tenant), tracking_uri(where, tenant)
        crt, key = certificates.tracking_files(config, tenant.id)
        assert presented(tracking.address, port, ca) == ssl.PEM_cert_to_DER_cert(crt.read_text())
        assert {f"IP:{tracking.address}", f"DNS:{tracking.name}"} <= certificates.certificate_names(crt)
        admin = ("admin", secrets.admin_password(tenant.id))
        found = requests.get(f"{uri}/api/2.0/mlflow/experiments/search", params={"max_results": 1}, auth=admin,
                             timeout=10, verify=ca)
        assert found.status_code == 200, found.text[:300]
        plain = f"http://{tracking.address}:{port}"
        for path in ("/health", "/api/2.0/mlflow/experiments/search"):  # no answer, nor a login over plain HTTP
            with pytest.raises(requests.ConnectionError):
                requests.get(f"{plain}{path}", auth=admin, timeout=10)
        with pytest.raises(requests.exceptions.SSLError, match="CERTIFICATE_VERIFY_FAILED"):
            requests.get(f"{uri}/health", timeout=10, verify=True)  # the system's store only
        account = f"flops-mlops-{tenant.id}"
        on_host = f"{etc}/tracking/{tenant.id}.https"
        assert tracking.run(f"stat -c '%a %U' {on_host}.crt {on_host}.key").split("\n")[:2] == [
            "644 root", f"600 {account}"]
        assert tracking.run(f"sha256sum < {on_host}.key").split()[0] == hashlib.sha256(key.read_bytes()).hexdigest()
        for other in (t for t in config.tenants if t.id != tenant.id):
            refused = tracking.run(f"runuser -u flops-mlops-{other.id} -- cat {on_host}.key >/dev/null 2>&1 "
                                   "&& echo READ || echo REFUSED", check=False).strip()
            assert refused == "REFUSED", (other.id, tenant.id)
        # The key's path is in the server's arguments, never the key.
        pid = tracking.unit_property(f"flops-mlops-{config.name}-tracking-{tenant.id}.service", "MainPID")
        argv = tracking.run(f"tr '\\0' ' ' < /proc/{pid}/cmdline")
        assert f"--ssl-keyfile {on_host}.key" in argv and "PRIVATE KEY" not in argv


def test_the_tracking_server_creates_a_served_models_reader_through_its_own_https_address(lab):
    """acme's server on the three hosts makes serve-mnist (READ on model mnist) through https://127.0.0.1,
    verified against the CA on its host: the reader then reads that model over HTTPS."""
    from flops_mlops.configuration.secrets import Secrets, serve_password_key

    three = lab["three_hosts"]
    config = stack(three["config"])
    acme = config.tenant("acme")
    uri, ca = tracking_uri(three, acme), ca_file(three)
    reader = ("serve-mnist", Secrets.load(config).values[serve_password_key("acme")])
    deadline = time.monotonic() + 120
    while True:
        model = requests.get(f"{uri}/api/2.0/mlflow/registered-models/get", params={"name": "mnist"}, auth=reader,
                             timeout=10, verify=ca)
        if model.status_code == 200 or time.monotonic() > deadline:
            break
        time.sleep(2)
    assert model.status_code == 200, model.text[:300]


def test_tracking_units_start_after_the_stores_on_their_host(lab):
    single, three = lab["single_host"], lab["three_hosts"]
    stores = units(single)["backend"] + units(single)["artifacts"]
    for unit in units(single)["tracking"]:
        after = single["tracking"].unit_property(unit, "After").split()
        assert set(stores) <= set(after), after
    for unit in units(three)["tracking"]:  # no store on that host: nothing local to wait for
        after = three["tracking"].unit_property(unit, "After").split()
        assert "mariadb.service" not in after and not any("vsftpd" in name for name in after), after


def test_a_changed_tenant_setting_restarts_only_that_tenants_server(lab):
    """globex's port changes: its unit file changes, so pyinfra reloads systemd and restarts that unit only."""
    single = lab["single_host"]
    host = single["tracking"]
    every_unit = [unit for names in units(single).values() for unit in names]
    before = invocations(host, every_unit)
    data = yaml.safe_load(single["config"].read_text())
    old_port = stack(single["config"]).tracking_port(stack(single["config"]).tenant("globex"))
    new_port = next(port for port in range(old_port + 1, old_port + 200)
                    if port not in {stack(single["config"]).tracking_port(t) for t in stack(single["config"]).tenants})
    next(t for t in data["tenants"] if t["id"] == "globex")["port"] = new_port
    single["config"].write_text(yaml.safe_dump(data))

    report = provision(single["config"], single["inventory"])
    assert report["results"]["totals"]["error"] == 0
    after = invocations(host, every_unit)
    restarted = sorted(unit for unit in every_unit if after[unit] != before[unit])
    assert restarted == [f"flops-mlops-{stack(single['config']).name}-tracking-globex.service"], restarted
    changed = changed_operations(report)
    assert any("Render unit" in op and "tracking-globex" in op for op in changed), changed
    assert not any("tracking-acme" in op for op in changed), changed
    assert f" {new_port} " in host.unit_property(restarted[0], "ExecStart")
    check_tenant_end_to_end(single["config"], host.address, host.address, host.address, "globex")


def test_systemctl_restart_of_a_hosts_units_then_the_stack_serves_again(lab):
    single = lab["single_host"]
    every_unit = [unit for names in units(single).values() for unit in names]
    before = invocations(single["tracking"], every_unit)
    single["tracking"].run(f"systemctl restart {' '.join(every_unit)}", timeout=300)
    after = invocations(single["tracking"], every_unit)
    assert all(after[unit] != before[unit] for unit in every_unit), (before, after)
    wait_serving(single)
    check_every_tenant(single)


def test_after_a_reboot_the_services_come_back_on_their_own(lab):
    """The host with every role reboots; nothing is started by hand: the units are enabled, and the tracking
    servers start after the database they upgrade their schema in."""
    single = lab["single_host"]
    host = single["tracking"]
    host.reboot()
    wait_serving(single)
    for unit_names in units(single).values():
        for unit in unit_names:
            assert host.unit_property(unit, "ActiveState") == "active", unit
    started = {unit: int(host.unit_property(unit, "ExecMainStartTimestampMonotonic"))
               for names in units(single).values() for unit in names}
    database_ready = int(host.unit_property("mariadb.service", "ActiveEnterTimestampMonotonic"))
    for unit in units(single)["tracking"]:
        assert started[unit] > database_ready, (unit, started[unit], database_ready)
        assert host.unit_property(unit, "NRestarts") == "0", unit  # no failed start before the database was up
    check_every_tenant(single)
