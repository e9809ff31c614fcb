"""Check an inventory's host data without contacting any host (`flops-mlops provision` runs this first).

    python check_inventory.py INVENTORY STACK_CONFIG      # from deploy/pyinfra

The inventory is loaded as the pyinfra CLI loads it (group_data defaults included) and checked by
tasks.settings.check_inventory. A problem is printed as one line naming the host and the key; exit code 2.
"""

import sys
import warnings
from pathlib import Path

warnings.simplefilter("ignore")  # pyinfra_cli's gevent import warns about modules imported before it
from pyinfra.api import State  # noqa: E402
from pyinfra.context import ctx_state  # noqa: E402
from pyinfra_cli.exceptions import CliError  # noqa: E402
from pyinfra_cli.inventory import make_inventory_from_files  # noqa: E402

from tasks.settings import HostDataError, check_inventory  # noqa: E402


def main(inventory: str, config: str) -> int:
    try:
        with ctx_state.use(State()):  # pyinfra reads inventory files inside a state
            hosts = make_inventory_from_files(inventory, {"flops_config": config}, cwd=str(Path(__file__).parent))
        check_inventory(hosts)
    except HostDataError as exc:
        print(f"{inventory}: {exc}", file=sys.stderr)
        return 2
    except (CliError, SystemExit) as exc:  # a broken inventory file, or one that refuses the environment
        print(f"{inventory}: cannot be loaded: {exc}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main(*sys.argv[1:3]))
