"""`flops-mlops user`: an operator gives a data scientist access to one project, and takes it back."""

from __future__ import annotations

import pytest
import requests
from flops_mlops.configuration.secrets import read_env
from tracking_checks import log_example

pytestmark = pytest.mark.services


def status(uri: str, path: str, login, method: str = "GET", **kwargs) -> int:
    return requests.request(method, uri + path, auth=login, timeout=30, **kwargs).status_code


def started(make_stack):
    """A running embedded stack with tenant acme, and that tenant's tracking URI."""
    stack = make_stack("local")
    stack.up()
    config = stack.load()
    return stack, config.tracking_uri(config.tenant("acme"))


def test_a_user_sees_only_what_it_was_granted_and_nothing_after_removal(make_stack, tmp_path):
    stack, uri = started(make_stack)
    logged = log_example(uri, experiment="demo", login=stack.admin())
    log_example(uri, experiment="other", login=stack.admin())
    password_file = tmp_path / "alice.pw"
    password_file.write_text("alice-has-a-long-password\n")
    alice = ("alice", "alice-has-a-long-password")
    get_demo = f"/api/2.0/mlflow/runs/get?run_id={logged.run_id}"

    added = stack.cli("user", "add", "--tenant", "acme", "--name", "alice", "--password-file", str(password_file))
    assert added.returncode == 0, added.stderr
    assert "sees nothing until granted" in added.stdout
    assert status(uri, get_demo, alice) == 403  # logged in, but nothing granted

    granted = stack.cli("user", "grant", "--tenant", "acme", "--name", "alice", "--project", "demo")
    assert granted.returncode == 0, granted.stderr
    assert status(uri, get_demo, alice) == 200
    assert status(uri, "/api/2.0/mlflow/experiments/get-by-name?experiment_name=other", alice) == 403
    # READ: no logging into the project.
    assert status(uri, "/api/2.0/mlflow/runs/create", alice, "POST",
                  json={"experiment_id": logged.experiment_id}) == 403
    listing = stack.cli("user", "list", "--tenant", "acme", check=True).stdout
    assert f"experiment {logged.experiment_id}: READ" in listing and "registered_model demo: READ" in listing

    # A new password for alice (not the admin): the old one stops working, the new one works, grants stay.
    new_password_file = tmp_path / "alice-new.pw"
    new_password_file.write_text("alice-has-another-long-password\n")
    admin = stack.admin()
    changed = stack.cli("user", "passwd", "--tenant", "acme", "--name", "alice", "--password-file",
                        str(new_password_file))
    assert changed.returncode == 0 and "password of alice changed" in changed.stdout, changed.stderr
    assert "alice-has-another-long-password" not in changed.stdout + changed.stderr
    assert status(uri, get_demo, alice) == 401
    alice = ("alice", "alice-has-another-long-password")
    assert status(uri, get_demo, alice) == 200
    assert stack.admin() == admin and status(uri, "/api/2.0/mlflow/users/list", admin) == 200  # admin untouched

    stack.cli("user", "remove", "--tenant", "acme", "--name", "alice", check=True)
    assert status(uri, get_demo, alice) == 401


def test_revoke_withdraws_one_projects_grant_and_keeps_the_others(make_stack, tmp_path):
    stack, uri = started(make_stack)
    demo = log_example(uri, experiment="demo", login=stack.admin())
    other = log_example(uri, experiment="other", login=stack.admin())
    (tmp_path / "bob.pw").write_text("bob-has-a-long-password\n")
    bob = ("bob", "bob-has-a-long-password")
    stack.cli("user", "add", "--tenant", "acme", "--name", "bob", "--password-file", str(tmp_path / "bob.pw"),
              check=True)
    for project, permission in (("demo", "EDIT"), ("other", "READ")):
        stack.cli("user", "grant", "--tenant", "acme", "--name", "bob", "--project", project, "--permission",
                  permission, check=True)
    runs = {project: f"/api/2.0/mlflow/runs/get?run_id={logged.run_id}"
            for project, logged in (("demo", demo), ("other", other))}
    assert status(uri, runs["demo"], bob) == 200 and status(uri, runs["other"], bob) == 200

    revoked = stack.cli("user", "revoke", "--tenant", "acme", "--user", "bob", "--project", "demo")
    assert revoked.returncode == 0, revoked.stderr
    assert revoked.stdout.strip() == (f"bob no longer holds EDIT on experiment {demo.experiment_id} and EDIT on "
                                      "registered model demo of tenant acme")
    assert status(uri, runs["demo"], bob) == 403 and status(uri, runs["other"], bob) == 200
    listing = stack.cli("user", "list", "--tenant", "acme", check=True).stdout
    assert "registered_model demo" not in listing and "registered_model other: READ" in listing
    again = stack.cli("user", "revoke", "--tenant", "acme", "--user", "bob", "--project", "demo", check=True)
    assert "held no grant on project demo" in again.stdout  # idempotent
    unknown = stack.cli("user", "revoke", "--tenant", "acme", "--user", "nobody", "--project", "demo")
    assert unknown.returncode != 0 and "no user 'nobody'" in unknown.stderr
    bad = stack.cli("user", "revoke", "--tenant", "acme", "--user", "bob", "--project", "not-a-name")
    assert bad.returncode == 2 and "not-a-name" in bad.stderr


def test_passwords_come_from_a_file_or_a_prompt_never_an_argument(make_stack, tmp_path):
    stack = make_stack("local")
    stack.up()
    as_argument = stack.cli("user", "add", "--tenant", "acme", "--name", "bob", "--password", "x" * 20)
    assert as_argument.returncode == 2 and "unrecognized arguments: --password" in as_argument.stderr
    short = tmp_path / "short.pw"
    short.write_text("short\n")
    refused = stack.cli("user", "add", "--tenant", "acme", "--name", "bob", "--password-file", str(short))
    assert refused.returncode == 2 and f"{short}: expected at least 12 characters" in refused.stderr
    no_terminal = stack.cli("user", "add", "--tenant", "acme", "--name", "bob")
    assert no_terminal.returncode == 2 and "no terminal to ask on" in no_terminal.stderr
    bad_name = stack.cli("user", "add", "--tenant", "acme", "--name", "bob'; --", "--password-file", str(short))
    assert bad_name.returncode == 2 and "is not a valid user name" in bad_name.stderr
    for args in (["--name", "admin", "--password-file", str(short)], ["--name", "bob", "--password-file", "/nope"]):
        result = stack.cli("user", "add", "--tenant", "acme", *args)
        assert result.returncode == 2, result.stderr


def test_rotating_the_admin_password_updates_server_and_secrets_file(make_stack):
    stack = make_stack("local")
    stack.up()
    config = stack.load()
    uri = config.tracking_uri(config.tenant("acme"))
    old = stack.admin()
    rotated = stack.cli("user", "passwd", "--tenant", "acme", "--admin")
    assert rotated.returncode == 0, rotated.stderr
    new = stack.admin()
    assert new != old and old[1] not in rotated.stdout + rotated.stderr and new[1] not in rotated.stdout
    assert status(uri, "/api/2.0/mlflow/users/list", old) == 401
    assert status(uri, "/api/2.0/mlflow/users/list", new) == 200
    backups = list(config.secrets_file.parent.glob(f"{config.secrets_file.name}.bak-*"))
    assert len(backups) == 1 and read_env(backups[0])["FLOPS_TENANT_ACME_ADMIN_PASSWORD"] == old[1]
    # The next start bootstraps nothing: the server keeps the rotated password.
    stack.down()
    stack.up()
    assert status(uri, "/api/2.0/mlflow/users/list", new) == 200
