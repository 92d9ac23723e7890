"""The training summary next to ``model.pt``: :class:`TrainSummary`, saved as ``train_summary.json``.

The train stage (:func:`bridgenet.stages.train`) saves the summary that
:func:`bridgenet.train.train_category` returns with :func:`save_train_summary`; the
register stage, the flows and the benches read it back with :func:`load_train_summary`,
which falls back to the parts that ``model.pt`` itself stores when the JSON is absent.
"""

from __future__ import annotations

import dataclasses
import json
import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from bridgenet.files import write_json
from bridgenet.model.io import read_checkpoint
from bridgenet.paths import MODEL_FILE, SUMMARY_FILE

LOGGER = logging.getLogger(__name__)


@dataclass(frozen=True)
class TrainSummary:
    """One training run: where its model is, the selected epoch and what it measured.

    ``validation``: the selected epoch's validation metrics with the model's scorer;
    ``history``: one record per epoch (losses, validation metrics, seconds); ``memory``: the
    memory bank's size and build time; ``calibration``: each score component's (loc, scale,
    weight). Fields a summary rebuilt from ``model.pt`` cannot know are None or empty.
    """

    category: str
    model_path: str
    best_epoch: int
    threshold: float
    validation: dict[str, Any] = field(default_factory=dict)
    history: list[dict[str, Any]] = field(default_factory=list)
    epochs: int | None = None
    pixel_threshold: float | None = None
    setup_seconds: float | None = None
    seconds_per_epoch: float | None = None
    train_samples: int | None = None
    device: str | None = None
    scorer: str | None = None
    memory: dict[str, Any] = field(default_factory=dict)
    calibration: dict[str, float] = field(default_factory=dict)

    @property
    def n_epochs(self) -> int:
        """Epochs run (as configured, or as recorded where the summary does not say)."""
        return self.epochs if self.epochs is not None else len(self.history)

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, record: dict[str, Any], source: str) -> TrainSummary:
        """Read :meth:`to_dict`'s output (unknown keys are ignored; ``source`` names it in errors)."""
        names = {f.name for f in dataclasses.fields(cls)}
        if not isinstance(record.get("history", []), list):
            raise ValueError(f"{source}: expected a training summary object with a 'history' list")  # noqa: TRY004
        try:
            return cls(**{k: v for k, v in record.items() if k in names})
        except TypeError as exc:
            raise ValueError(f"{source}: incomplete training summary ({exc})") from None


def save_train_summary(summary: TrainSummary, model_dir: Path | str) -> Path:
    """Write ``summary`` (history included; nan as null) to ``model_dir/train_summary.json`` atomically."""
    return write_json(Path(model_dir) / SUMMARY_FILE, summary.to_dict(), indent=1)


def load_train_summary(model_dir: Path | str) -> TrainSummary:
    """The summary saved beside ``model.pt``; without one, the parts ``model.pt`` itself stores
    (category, model path, selected epoch, threshold, validation metrics and history)."""
    model_dir = Path(model_dir)
    path = model_dir / SUMMARY_FILE
    if path.is_file():
        try:
            record = json.loads(path.read_text())
        except json.JSONDecodeError as exc:
            raise ValueError(f"{path}: not valid JSON ({exc})") from None
        if not isinstance(record, dict):
            raise ValueError(f"{path}: expected a training summary object with a 'history' list")
        return TrainSummary.from_dict(record, str(path))
    model_path = model_dir / MODEL_FILE
    payload = read_checkpoint(model_path)
    LOGGER.info("no %s in %s; using the history stored in %s", SUMMARY_FILE, model_dir, model_path)
    return TrainSummary(
        category=payload["category"],
        model_path=str(model_path),
        best_epoch=int(payload.get("epoch", -1)),
        threshold=float(payload["threshold"]),
        validation=dict(payload.get("metrics") or {}),
        history=list(payload.get("history") or []),
        pixel_threshold=payload.get("pixel_threshold"),
    )
