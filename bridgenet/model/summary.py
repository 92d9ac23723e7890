"""The training summary next to ``model.pt``: ``train_summary.json``.

The train stage (:func:`bridgenet.stages.train`) saves the summary that
:func:`bridgenet.train.train_category` returns with :func:`save_train_summary`; the
register stage reads it back with :func:`load_train_summary`, which falls back to the
history stored inside ``model.pt`` when the JSON is absent.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from bridgenet.files import write_json
from bridgenet.model.io import read_checkpoint

LOGGER = logging.getLogger(__name__)
SUMMARY_FILE = "train_summary.json"


def save_train_summary(summary: Mapping[str, Any], model_dir: Path | str) -> Path:
    """Write ``summary`` (history included; nan as null) to ``model_dir/train_summary.json`` atomically."""
    return write_json(Path(model_dir) / SUMMARY_FILE, summary, indent=1)


def load_train_summary(model_dir: Path | str) -> dict[str, Any]:
    """The summary saved beside ``model.pt``; without one, the parts ``model.pt`` itself stores.

    The fallback holds ``category``, ``model_path``, ``best_epoch``,
    ``threshold``, ``validation`` and ``history``.
    """
    model_dir = Path(model_dir)
    path = model_dir / SUMMARY_FILE
    if path.is_file():
        try:
            summary = json.loads(path.read_text())
        except json.JSONDecodeError as exc:
            raise ValueError(f"{path}: not valid JSON ({exc})") from None
        if not isinstance(summary, dict) or not isinstance(summary.get("history", []), list):
            raise ValueError(f"{path}: expected a training summary object with a 'history' list")
        return summary
    model_path = model_dir / "model.pt"
    payload = read_checkpoint(model_path)
    LOGGER.info("no %s in %s; using the history stored in %s", SUMMARY_FILE, model_dir, model_path)
    return {
        "category": payload["category"],
        "model_path": str(model_path),
        "best_epoch": int(payload.get("epoch", -1)),
        "threshold": float(payload["threshold"]),
        "validation": dict(payload.get("metrics") or {}),
        "history": list(payload.get("history") or []),
    }
