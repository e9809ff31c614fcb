"""Oakestra: SLA documents rendered from sla_templates/ (sla.py) and pushed to a root orchestrator (client.py,
push.py)."""
