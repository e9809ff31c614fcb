"""Stop what deploy.py started (data stays): tracking servers first, then the artifact store.

Units are stopped and disabled through systemd; the artifact store's PAM service file is removed. The backend
store is the Debian package's MariaDB, which may serve others too: it keeps running. `flops-mlops provision
--stop` runs this file.
"""

from tasks import settings
from tasks.artifact_store import stop_artifact_store
from tasks.docker_host import stop_docker_host
from tasks.tracking_server import stop_tracking_server

for role, stop in (("tracking_server", stop_tracking_server), ("artifact_store", stop_artifact_store),
                   ("docker_host", stop_docker_host)):
    if role in settings.roles():
        stop()
