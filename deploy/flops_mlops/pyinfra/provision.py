"""`flops-mlops provision`: run the pyinfra deploys in deploy/pyinfra against an inventory, never interactively.

The stack configuration given by --config is handed to the deploys as host data ``flops_config``; its secrets
file and the inventory's host data (deploy/pyinfra/check_inventory.py) are checked here
first, so a missing password or a wrong role name stops before any host is touched (exit 2).
"""

from __future__ import annotations

import argparse
import subprocess
import sys
from pathlib import Path

from .. import bundled
from ..configuration.schema import ConfigError
from ..configuration.secrets import Secrets
from ..configuration.stack import StackConfig
from ..processes import StackError

PYINFRA_DIR = bundled.folder("pyinfra")


def add_provision_parser(commands) -> argparse.ArgumentParser:
    parser = commands.add_parser(
        "provision", help="install the stack on hosts with pyinfra (deploy/pyinfra)",
        description="Run deploy/pyinfra/deploy.py (or stop.py with --stop) with pyinfra against an inventory. "
                    "Applies without asking (-y); --dry only plans. Host roles, paths and modes come from the "
                    "inventory's host data; tenants and ports from --config; passwords from its secrets file.")
    parser.add_argument("--inventory", required=True, metavar="FILE|NAME",
                        help="pyinfra inventory file, or the name of one shipped with flops-mlops: "
                             + ", ".join(shipped_inventories()))
    parser.add_argument("--dry", action="store_true", help="plan only: show what would change, change nothing")
    parser.add_argument("--stop", action="store_true",
                        help="stop and disable the units the deploy started (MariaDB keeps running); data stays")
    parser.add_argument("--json", action="store_true", help="print pyinfra's JSON results (counts of changes)")
    return parser


def shipped_inventories() -> list[str]:
    return sorted(path.stem for path in (PYINFRA_DIR / "inventories").glob("*.py"))


def pyinfra_argv(config: StackConfig, inventory: Path, dry: bool, stop: bool, json_output: bool) -> list[str]:
    argv = [sys.executable, "-m", "pyinfra", str(inventory), "stop.py" if stop else "deploy.py",
            "--data", f"flops_config={config.source.resolve()}", "--dry" if dry else "-y"]
    if json_output:
        argv.append("--json")
    return argv


def check_host_data(config: StackConfig, inventory: Path) -> None:
    """deploy/pyinfra/check_inventory.py: every host's data, with no host contacted; its one-line message names
    the host and the key."""
    result = subprocess.run([sys.executable, "check_inventory.py", str(inventory), str(config.source.resolve())],
                            cwd=PYINFRA_DIR, stdin=subprocess.DEVNULL, capture_output=True, text=True)
    if result.returncode == 2:
        raise ConfigError(result.stderr.strip())
    if result.returncode != 0:
        raise StackError(f"checking {inventory} failed (exit {result.returncode}): {result.stderr.strip()[-2000:]}")


def provision_command(config: StackConfig, args: argparse.Namespace) -> int:
    Secrets.load(config)  # every password the deploys need is there, and the file is private
    if not (PYINFRA_DIR / "deploy.py").is_file():
        raise ConfigError(f"{PYINFRA_DIR}: the pyinfra deploys are missing (reinstall flops-mlops)")
    inventory = Path(args.inventory).resolve()
    if not inventory.is_file() and args.inventory in shipped_inventories():
        inventory = PYINFRA_DIR / "inventories" / f"{args.inventory}.py"
    if not inventory.is_file():
        raise ConfigError(f"--inventory: {args.inventory}: no such file, nor an inventory shipped with flops-mlops "
                          f"({', '.join(shipped_inventories())})")
    check_host_data(config, inventory)
    argv = pyinfra_argv(config, inventory, args.dry, args.stop, args.json)
    result = subprocess.run(argv, cwd=PYINFRA_DIR, stdin=subprocess.DEVNULL)
    if result.returncode != 0:
        raise StackError(f"pyinfra exited {result.returncode} ({'stop' if args.stop else 'deploy'} on "
                         f"{args.inventory}); its output above says which host and operation failed")
    return 0
