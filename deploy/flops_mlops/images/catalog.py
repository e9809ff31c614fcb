"""Our images as recipes (images.recipe), each what its Dockerfile target holds (deploy/images/): the same Debian
packages, accounts, venv contents, files, user, environment and entry point. A unit test checks that the venvs
leave out what the Dockerfile's `pip uninstall` lines remove, so the two builds do not drift apart.

`flops-mlops build-image NAME --out PATH` builds one of them; `build-model-image --out` builds the model server's
with the model's files on top (serving/image.py)."""

from __future__ import annotations

from .recipe import PATH, QUIET_PYTHON, Account, Recipe

# What each venv leaves out: MLflow declares these, but the process never imports them (deploy/images/python/
# Dockerfile, stages venv-server, venv-fl and venv-serve).
NOT_FOR_TRACKING = frozenset({
    "scipy", "pyarrow", "scikit-learn", "joblib", "threadpoolctl", "skops", "matplotlib", "contourpy", "cycler",
    "fonttools", "kiwisolver", "pillow", "pyparsing", "gunicorn"})
NOT_FOR_FL = frozenset({
    "pyarrow", "matplotlib", "contourpy", "cycler", "fonttools", "kiwisolver", "pillow", "pyparsing", "gunicorn",
    "flask", "flask-wtf", "wtforms", "flask-cors", "graphene", "graphql-core", "graphql-relay", "pymysql",
    "pyftpdlib", "huey", "uvloop", "uv"})
NOT_FOR_SERVING = NOT_FOR_FL | {"flwr", "grpcio-health-checking"}

ARTIFACT_STORE_FILES = "/usr/local/lib/flops-artifact-store"

RECIPES = {recipe.name: recipe for recipe in (
    Recipe(
        name="tracking-server",
        packages=("curl",),  # the healthcheck is a shell script with curl
        accounts=(Account("mlflow", 10001, "/srv/mlflow", private=("auth",)),),
        requirement="flops-mlops", leave_out=NOT_FOR_TRACKING,
        compile_for=("flops_mlops.tracking.container", "flops_mlops.tracking.runner", "flops_mlops.tracking.app",
                     "mlflow.server.handlers", "mlflow.server.auth", "mlflow.server.fastapi_app", "mlflow.db"),
        files=(("deploy/images/python/tracking-healthcheck.sh", "/usr/local/bin/flops-tracking-healthcheck", 0o755),),
        config={"Env": [PATH, *QUIET_PYTHON], "User": "mlflow", "WorkingDir": "/srv/mlflow",
                "ExposedPorts": {"5000/tcp": {}},
                "Entrypoint": ["python", "-m", "flops_mlops.tracking.container", "tracking-server"]}),
    Recipe(
        name="fl-actor",
        packages=(),
        accounts=(Account("fl", 10002, "/srv/fl"),),
        requirement="flops-mlops[fl]", leave_out=NOT_FOR_FL,
        config={"Env": [PATH, *QUIET_PYTHON], "User": "fl", "WorkingDir": "/srv/fl",
                "Cmd": ["python", "-c", "print('choose a role: python -m flops_mlops.fl.aggregator or "
                        "flops_mlops.fl.learner')"]}),
    Recipe(
        name="model-server",
        packages=(),
        accounts=(Account("model", 10003, "/srv/model"),),
        requirement="flops-mlops[fl]", leave_out=NOT_FOR_SERVING,
        compile_for=("flops_mlops.serving.server", "mlflow.pyfunc.scoring_server", "mlflow.sklearn", "sklearn",
                     "skops.io", "uvicorn", "fastapi"),
        config={"Env": [PATH, *QUIET_PYTHON, "FLOPS_SERVE_HOST=0.0.0.0", "FLOPS_SERVE_PORT=8080",
                        "FLOPS_SERVE_CACHE=/srv/model/cache"],
                "User": "model", "WorkingDir": "/srv/model", "ExposedPorts": {"8080/tcp": {}},
                "Entrypoint": ["python", "-m", "flops_mlops.serving.server"]}),
    Recipe(
        name="artifact-store",
        packages=("vsftpd", "libpam-pwdfile", "openssl", "curl", "python3-jinja2", "tini"),
        accounts=(Account("ftpcheck", 10004),),
        files=(("deploy/flops_mlops/stores/templates/vsftpd.conf.j2",
                "/usr/local/share/flops-artifact-store/vsftpd.conf.j2", 0o644),
               ("deploy/flops_mlops/stores/templates/vsftpd.pam.j2",
                "/usr/local/share/flops-artifact-store/vsftpd.pam.j2", 0o644),
               ("deploy/images/artifact-store/render.py", f"{ARTIFACT_STORE_FILES}/render.py", 0o644),
               ("deploy/images/artifact-store/entrypoint.sh", f"{ARTIFACT_STORE_FILES}/entrypoint.sh", 0o755),
               ("deploy/images/artifact-store/healthcheck.sh", f"{ARTIFACT_STORE_FILES}/healthcheck.sh", 0o755),
               ("deploy/flops_mlops/stores/ftp_users.py", f"{ARTIFACT_STORE_FILES}/ftp_users.py", 0o644),
               ("deploy/flops_mlops/configuration/pem_env.py", f"{ARTIFACT_STORE_FILES}/pem_env.py", 0o644)),
        config={"Env": ["PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"],
                "ExposedPorts": {"21/tcp": {}}, "Volumes": {"/srv/ftp": {}},
                "Entrypoint": ["/usr/bin/tini", "--", f"{ARTIFACT_STORE_FILES}/entrypoint.sh"]}),
)}
