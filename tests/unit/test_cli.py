"""The `flops-mlops` command line itself: `--help` of every command, `config keys`, `secrets init --force`.

(The commands' work is tested where it happens: the stack, rounds, serving and users in tests/integration.)
"""

from __future__ import annotations

import argparse
import stat

import pytest
import yaml
from conftest import run_cli
from flops_mlops.cli import build_parser, main
from flops_mlops.configuration import keys
from flops_mlops.configuration.secrets import read_env


def commands(parser: argparse.ArgumentParser, path: tuple[str, ...] = ()):
    """Every command and sub-command of ``parser``, with its own parser."""
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for name, sub in action.choices.items():
                yield (*path, name), sub
                yield from commands(sub, (*path, name))


COMMANDS = dict(commands(build_parser()))


def test_every_verb_of_the_readme_is_a_command():
    assert {path[0] for path in COMMANDS} == {"secrets", "up", "restart", "status", "down", "config", "round",
                                              "render", "push", "undeploy", "user", "serve", "build-model-image",
                                              "build-image", "push-image", "build-fl-image", "provision", "backup", "restore", "gc"}


@pytest.mark.parametrize("path", sorted(COMMANDS), ids=" ".join)
def test_help_of_every_command_exits_0_and_names_its_options(path, capsys):
    with pytest.raises(SystemExit) as done:
        main([*path, "--help"])
    assert done.value.code == 0
    shown = capsys.readouterr().out
    assert shown.startswith(f"usage: flops-mlops {' '.join(path)}")
    parser = COMMANDS[path]
    assert parser.description and "".join(parser.description.split()) in "".join(shown.split()), path
    for action in parser._actions:
        for option in action.option_strings:
            assert option in shown, f"{' '.join(path)} --help does not name {option}"
        if not action.option_strings and not isinstance(action, argparse._SubParsersAction):
            assert action.dest in shown or (action.metavar or "") in shown, action.dest


def test_the_program_help_lists_every_command_and_exits_0():
    done = run_cli("--help")
    assert done.returncode == 0
    for path in COMMANDS:
        if len(path) == 1:
            assert path[0] in done.stdout


def test_config_keys_lists_every_key_with_its_default_and_explanation():
    done = run_cli("config", "keys")
    assert done.returncode == 0, done.stderr
    for key, default, text in keys.describe():
        block = f"{key}\n    {text}" + (f"\n    default: {default}" if default else "")
        assert block in done.stdout, key
    assert "\nimages.mysql\n" in done.stdout and "default: 'flops-mlops/backend-store:0.1.0'" in done.stdout


def test_secrets_init_force_regenerates_every_value_after_a_private_backup(tmp_path):
    config = tmp_path / "stack.yaml"
    config.write_text(yaml.safe_dump({"name": "t", "state_dir": "state", "secrets_file": ".env",
                                      "tenants": [{"id": "acme"}]}))
    first = run_cli("secrets", "init", config=config)
    before = read_env(tmp_path / ".env")
    assert first.returncode == 0 and f"{len(before)} new, 0 kept" in first.stdout, first
    again = run_cli("secrets", "init", config=config)
    assert f"already holds all {len(before)} secrets; nothing changed" in again.stdout
    forced = run_cli("secrets", "init", "--force", config=config)
    assert forced.returncode == 0, forced.stderr
    backups = list(tmp_path.glob(".env.bak-*"))
    assert len(backups) == 1 and f"backed up the old secrets to {backups[0]}" in forced.stdout
    assert read_env(backups[0]) == before and stat.S_IMODE(backups[0].stat().st_mode) == 0o600
    after = read_env(tmp_path / ".env")
    assert set(after) == set(before) and all(after[key] != before[key] for key in before)
    assert stat.S_IMODE((tmp_path / ".env").stat().st_mode) == 0o600
