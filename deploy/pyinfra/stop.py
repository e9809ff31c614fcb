"""Stop what deploy.py started (data stays): tracking servers first, then the stores.

Services are stopped through systemd, or by their recorded pid files where there is no systemd (never by
name); the artifact store's PAM service file is removed. `flops-mlops provision --stop` runs this file.
"""

from tasks import settings
from tasks.artifact_store import stop_artifact_store
from tasks.backend_store import stop_backend_store
from tasks.docker_host import stop_docker_host
from tasks.tracking_server import stop_tracking_server

for role, stop in (("tracking_server", stop_tracking_server), ("artifact_store", stop_artifact_store),
                   ("backend_store", stop_backend_store), ("docker_host", stop_docker_host)):
    if role in settings.roles():
        stop()
