"""The two stores behind the tracking servers: the backend store (metadata) and the artifact store (files)."""
