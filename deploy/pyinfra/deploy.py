"""FLOps MLOps hosts: which roles a host gets is decided by its host data (flops_roles), nothing else.

    pyinfra inventories/<env>.py deploy.py --data flops_config=/abs/stack.yaml --dry   # plan
    pyinfra inventories/<env>.py deploy.py --data flops_config=/abs/stack.yaml -y      # apply
or `flops-mlops --config FILE provision --inventory FILE [--dry]`. Each role lives in tasks/<role>.py.
"""

from pyinfra import inventory
from pyinfra.operations import server

from tasks import settings
from tasks.artifact_store import artifact_store
from tasks.backend_store import backend_store
from tasks.docker_host import docker_host
from tasks.model_server import model_server
from tasks.tracking_server import tracking_server

settings.check_inventory(inventory)  # `flops-mlops provision` checked it already; plain pyinfra runs too
roles = settings.roles()
if "backend_store" in roles:
    backend_store()
if "artifact_store" in roles:
    artifact_store()
# pyinfra keeps each host's operations in order, not one host's against another's. Every host runs this
# no-op from this one line, so it is one shared step: each store (on whichever host) is ready before
# any tracking server starts against it.
server.shell(name="Stores ready on every host", commands=[])
if "tracking_server" in roles:
    tracking_server()
if "model_server" in roles:
    model_server()
if "docker_host" in roles:
    docker_host()
