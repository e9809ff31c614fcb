"""When `restore` (without --force) calls a tenant's stores "not empty" (backup/command.py: data_counts): what a
fresh deployment makes by itself is not data, everything else is."""

from __future__ import annotations

from flops_mlops.backup.command import data_counts

# What a fresh compose or Oakestra deployment with FL project "digits" holds: its users, and the project's
# experiment and registered model, both empty (tracking/users.py makes them at start).
FRESH = {"runs": [], "logged models": [], "experiments": [("digits", 0)], "registered models": [("digits", 0)],
         "users besides admin": [("fl-digits", 1), ("serve-digits", 1)]}


def test_a_fresh_deployment_holds_no_data():
    assert not any(data_counts(FRESH).values())


def test_runs_versions_other_experiments_and_users_are_data():
    trained = {**FRESH, "runs": [("r1", 1)], "experiments": [("digits", 1)], "registered models": [("digits", 2)]}
    assert data_counts(trained) == {"runs": 1, "logged models": 0, "experiments": 1, "registered models": 1,
                                    "users besides admin": 0}
    own = {**FRESH, "experiments": [("digits", 0), ("mine", 0)], "registered models": [("kept", 0)],
           "users besides admin": [*FRESH["users besides admin"], ("alice", 1), ("image-digits", 1)]}
    counts = data_counts(own)
    # an empty experiment or model of another name and the tenant's own users (build-model-image's image-<project>
    # included) all count
    assert counts["experiments"] == 1 and counts["registered models"] == 1
    assert counts["users besides admin"] == 2
