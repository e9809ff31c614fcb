"""Reusable pyinfra deploys, one module per role (backend_store, artifact_store, tracking_server, model_server,
docker_host), and what roles share: settings (host data), services (systemd units), account and venv (the Python
services' account and their venv with flops-mlops)."""
