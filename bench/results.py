"""One results schema for the bench scripts: records on disk as JSON, rows in a pandas DataFrame.

A *record* is what a bench writes as soon as a run exists (``--work/results``), and
what a summary keeps under ``runs`` (and ``peers``). Four kinds are read, the shapes the
benches have always written:

- synthetic run (``bench.accuracy``): ``config``, ``seed``, ``category``, ``train_seconds``,
  ``scores[preset][scorer] = {"metrics", "families", ...}``;
- synthetic peer (``bench.accuracy``): ``preset``, ``category``, ``fit_seconds[modality]``,
  ``modalities[rgb|depth|fused] = {"metrics", "families"}``;
- real run (``bench.real``): ``config``, ``seed``, ``category``, ``train_seconds``,
  ``scores[scorer] = {"metrics", "per_defect", "at_threshold", ...}``;
- real peer (``bench.real``): ``peer``, ``seed``, ``category``, ``fit_seconds[modality]``,
  ``modalities[rgb|depth|fused] = {"metrics", "per_defect"}``.

A *row* is what every summary is built from: one variant (``<config> / <scorer>`` or
``PatchCore <modality>``) of one seed and category on one data set, and its values.
As a DataFrame (:func:`rows_frame`, :func:`read_results`): the columns :data:`ROW_KEYS`
(``preset``: ``default`` or ``hard`` for the synthetic data, :data:`REAL` for a real root),
then one float column per value key (NaN where a row has none):

- every metric of the record (``image_auroc``, ``pixel_auroc``, ...);
- ``image_auroc_<family>`` per defect family (synthetic), ``defect:<type>`` per defect
  type and ``worst_defect``, the lowest of them (real);
- ``fpr`` and ``recall`` at the validation threshold (real runs);
- ``train_seconds`` (a peer's fit seconds).

:func:`summarize` turns the rows into mean ± std over seeds per variant and category, and
over seeds of the mean over categories. :func:`write_results` writes any record or summary.
"""

from __future__ import annotations

import json
import logging
import math
import os
import re
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from bench.common import PEER, SCORERS

LOGGER = logging.getLogger(__name__)

ROW_KEYS = ("preset", "variant", "seed", "category")
REAL = "real"  # the ``preset`` of a real data set's rows
DEFECT = "defect:"  # prefix of the per-defect-type image AUROC values of a real row
FAMILY = "image_auroc_"  # prefix of the per-family image AUROC values of a synthetic row
# the synthetic peer's modalities and the variant each is summarised as
SYNTH_PEER_VARIANTS = {"rgb": f"{PEER} rgb", "depth": f"{PEER} depth", "fused": f"{PEER} rgb+depth"}

Row = dict[str, Any]  # ROW_KEYS and "values": {value key: float | None}


# ----------------------------------------------------------------------------- files
def _finite(value: Any) -> Any:
    """``value`` with every non-finite float replaced by None (strict JSON)."""
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if isinstance(value, dict):
        return {k: _finite(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_finite(v) for v in value]
    return value


_FLAT_LIST = re.compile(r"\[\s+([^\[\]{}]*?)\s+\]")


def results_json(payload: Any) -> str:
    """Strict JSON (NaN and infinities as null), indented by two, each list of plain values
    (per-sample scores) on one line."""
    text = json.dumps(_finite(payload), indent=2, allow_nan=False)
    return _FLAT_LIST.sub(lambda m: "[" + ", ".join(v.strip() for v in m.group(1).split(",\n")) + "]", text)


def write_results(path: Path, payload: Any) -> Path:
    """Write a record or summary to ``path`` atomically (:func:`results_json`); returns ``path``."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(results_json(payload) + "\n")
    os.replace(tmp, path)
    return path


def read_json(path: Path) -> dict[str, Any] | None:
    """The JSON object stored at ``path``; None (and a warning naming the file) when it is
    missing, not valid JSON or not an object."""
    path = Path(path)
    if not path.is_file():
        return None
    try:
        record = json.loads(path.read_text())
    except json.JSONDecodeError as err:
        LOGGER.warning("%s: not valid JSON (%s); left out", path, err)
        return None
    if not isinstance(record, dict):
        LOGGER.warning("%s: a JSON %s, not an object; left out", path, type(record).__name__)
        return None
    return record


def current_record(path: Path, expected_digest: str) -> dict[str, Any] | None:
    """The record stored at ``path`` if it was made under ``expected_digest`` (its
    ``params_digest``), else None."""
    record = read_json(path)
    if record is None or record.get("params_digest") != expected_digest:
        return None
    return record


def read_records(source: Path, pattern: str = "**/*.json") -> list[dict[str, Any]]:
    """The records of ``source``: a folder of per-run files (those matching ``pattern``, sorted
    by path; by default every JSON file under it), one per-run file, or a summary (its
    ``runs`` and ``peers``)."""
    source = Path(source)
    if source.is_dir():
        found = (read_json(p) for p in sorted(source.glob(pattern)))
        return [r for r in found if r is not None]
    document = read_json(source)
    if document is None:
        raise FileNotFoundError(f"{source}: no results file (a JSON object) there")
    if "runs" in document or "peers" in document:
        return [*document.get("runs", []), *document.get("peers", [])]
    return [document]


# ----------------------------------------------------------------------------- rows
def record_kind(record: Mapping[str, Any]) -> str:
    """``synthetic run``, ``synthetic peer``, ``real run`` or ``real peer``; ValueError otherwise."""
    if "peer" in record and "modalities" in record:
        return "real peer"
    if "preset" in record and "modalities" in record:
        return "synthetic peer"
    if "config" in record and "scores" in record:
        return "real run" if set(record["scores"]) <= set(SCORERS) else "synthetic run"
    raise ValueError(f"not a bench record: keys {sorted(record)}; expected a run (config, scores) "
                     "or a peer (peer or preset, modalities)")


def _families(families: Mapping[str, float]) -> dict[str, float]:
    return {f"{FAMILY}{f}": v for f, v in families.items()}


def _defects(per_defect: Mapping[str, Any]) -> dict[str, Any]:
    finite = [v for v in per_defect.values() if v is not None and math.isfinite(v)]
    return {**{f"{DEFECT}{d}": v for d, v in per_defect.items()}, "worst_defect": min(finite) if finite else None}


def record_rows(record: Mapping[str, Any]) -> list[Row]:
    """One row per scorer (and data set) of a run, per modality of a peer."""
    kind = record_kind(record)
    if kind == "synthetic run":
        return [{"preset": preset, "variant": f"{record['config']} / {scorer}", "seed": record["seed"],
                 "category": record["category"],
                 "values": {**cell["metrics"], **_families(cell["families"]), "train_seconds": record["train_seconds"]}}
                for preset, cells in record["scores"].items() for scorer, cell in cells.items()]
    if kind == "synthetic peer":
        return [{"preset": record["preset"], "variant": variant, "seed": 0, "category": record["category"],
                 "values": {**record["modalities"][key]["metrics"], **_families(record["modalities"][key]["families"]),
                            "train_seconds": record["fit_seconds"][key]}}
                for key, variant in SYNTH_PEER_VARIANTS.items()]
    if kind == "real run":
        rows = []
        for scorer, cell in record["scores"].items():
            at = cell.get("at_threshold", {})
            values = {**cell["metrics"], **_defects(cell["per_defect"]), "fpr": at.get("fpr"),
                      "recall": at.get("recall"), "train_seconds": record["train_seconds"]}
            rows.append({"preset": REAL, "variant": f"{record['config']} / {scorer}", "seed": record["seed"],
                         "category": record["category"], "values": values})
        return rows
    return [{"preset": REAL, "variant": f"{PEER} {m}", "seed": record["seed"], "category": record["category"],
             "values": {**cell["metrics"], **_defects(cell["per_defect"]), "train_seconds": record["fit_seconds"][m]}}
            for m, cell in record["modalities"].items()]


def rows_frame(rows: Iterable[Row]) -> pd.DataFrame:
    """The rows as a DataFrame: :data:`ROW_KEYS`, then one float column per value key (first seen first)."""
    flat = [{**{k: row[k] for k in ROW_KEYS}, **row["values"]} for row in rows]
    frame = pd.DataFrame.from_records(flat, columns=_columns(flat))
    values = [c for c in frame.columns if c not in ROW_KEYS]
    if values:
        frame[values] = frame[values].astype(float)
    return frame


def _columns(flat: list[dict[str, Any]]) -> list[str]:
    seen = dict.fromkeys(ROW_KEYS)
    for row in flat:
        seen.update(dict.fromkeys(row))
    return list(seen)


def read_results(source: Path, pattern: str = "**/*.json") -> pd.DataFrame:
    """The rows (:func:`rows_frame`) of every record in ``source`` (:func:`read_records`)."""
    return rows_frame(row for record in read_records(source, pattern) for row in record_rows(record))


# ----------------------------------------------------------------------------- summary
def mean_std(values: Iterable[Any]) -> dict[str, float] | None:
    """Mean, population std and count of the finite ``values``; None when there is none."""
    finite = [float(v) for v in values if v is not None and math.isfinite(v)]
    if not finite:
        return None
    return {"mean": float(np.mean(finite)), "std": float(np.std(finite)), "n": len(finite)}


def summarize(frame: pd.DataFrame, variants: Sequence[str], categories: Sequence[str],
              overall_keys: Sequence[str], keys: Sequence[str] | None = None) -> dict[str, Any]:
    """Per variant: mean ± std over seeds per category, and over seeds of the mean over categories.

    ``frame``: rows of one data set (:func:`rows_frame`). Per category, a cell per value key
    (``keys`` in that order, else every key sorted) that some row holds. The mean category
    uses only the seeds done for every category, and only ``overall_keys``. Variants
    without a row are left out.
    """
    value_keys = [c for c in frame.columns if c not in ROW_KEYS]
    table: dict[str, Any] = {}
    for name in variants:
        mine = frame[(frame["variant"] == name) & frame["category"].isin(list(categories))]
        if mine.empty:
            continue
        seeds = sorted({int(s) for s in mine["seed"]})
        complete = [s for s in seeds if set(mine.loc[mine["seed"] == s, "category"]) >= set(categories)]
        per_category = {}
        for category in categories:
            rows = mine[mine["category"] == category]
            if rows.empty:
                continue
            cells = {k: mean_std(rows[k]) for k in (sorted(value_keys) if keys is None else keys) if k in rows}
            per_category[category] = {k: v for k, v in cells.items() if v is not None}
        overall = {}
        for key in (k for k in overall_keys if k in mine):
            per_seed = [mean_std(mine.loc[mine["seed"] == s, key]) for s in complete]
            cell = mean_std([c["mean"] for c in per_seed if c is not None])
            if cell is not None:
                overall[key] = cell
        table[name] = {"seeds": seeds, "seeds_complete": complete, "categories": per_category, "mean": overall}
    return table
