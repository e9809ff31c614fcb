"""FLOps MLOps hosts: which roles a host gets is decided by its host data (flops_roles), nothing else.

    pyinfra inventories/<env>.py deploy.py --data flops_config=/abs/stack.yaml --dry   # plan
    pyinfra inventories/<env>.py deploy.py --data flops_config=/abs/stack.yaml -y      # apply
or `flops-mlops --config FILE provision --inventory FILE [--dry]`. Each role lives in tasks/<role>.py.
"""

from tasks import settings
from tasks.artifact_store import artifact_store
from tasks.backend_store import backend_store
from tasks.docker_host import docker_host
from tasks.tracking_server import tracking_server

# Stores first: a tracking server on the same host starts against them.
for role_deploy in (backend_store, artifact_store, tracking_server, docker_host):
    if role_deploy.__name__ in settings.roles():
        role_deploy()
