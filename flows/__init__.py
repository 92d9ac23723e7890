"""Prefect 3 flows: thin wrappers over the ``bridgenet`` package.

Each module runs as ``python -m flows.<name>`` (what the DVC stages call) and
exposes its flow for deployments. Log records of the package are forwarded to
Prefect's run logs.
"""

import os

os.environ.setdefault("PREFECT_LOGGING_EXTRA_LOGGERS", "bridgenet")
# No internet here and no reason to phone home from a factory floor.
os.environ.setdefault("PREFECT_SERVER_ANALYTICS_ENABLED", "false")
