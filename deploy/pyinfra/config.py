"""pyinfra settings for the FLOps MLOps deploys (read by the pyinfra CLI from the folder it runs in)."""

from pyinfra import config

config.REQUIRE_PYINFRA_VERSION = ">=3.10,<4"
