"""One Debian host runs the compose stack (mode docker): Docker Engine, the Compose plugin, compose.yaml, .env.

    flops-mlops --config configs/compose.yaml provision --inventory deploy/pyinfra/inventories/docker_host.py
"""

docker = [("docker.example.org", {"ssh_user": "root", "flops_mode": "docker", "flops_roles": ["docker_host"]})]
