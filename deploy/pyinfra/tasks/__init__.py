"""Reusable pyinfra deploys, one module per role: backend_store, artifact_store, tracking_server, docker_host."""
