"""Promote stage: run the promotion gate of each category (see :func:`bridgenet.tracking.registry.promote`)."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

from bridgenet.config import Params

LOGGER = logging.getLogger(__name__)


def run_promote(
    params: Params, categories: list[str] | None = None, reports_dir: Path | str | None = None
) -> dict[str, dict[str, Any]]:
    """Gate every category (default: all of ``data.root``); category -> promotion report.

    A rejected challenger is a normal outcome (``decision == "rejected"``), not an error.
    """
    from bridgenet.data.readers import discover_categories
    from bridgenet.tracking.registry import promote

    results = {}
    for category in list(categories or discover_categories(params.data)):
        results[category] = promote(params, category, reports_dir)
    return results
