"""One drift-monitoring pass of a category: the prediction log's window against the model's reference.

:func:`monitor_category` reads the last ``monitor.window`` ok records of the category that
the watched model scored (same model file digest; of the last ``monitor.window_hours`` only,
where set) from the prediction log (``monitor.log``), judges them with
:func:`bridgenet.monitor.drift.assess` against the model's validation goods
(:mod:`bridgenet.monitor.reference`), writes ``drift.json`` and ``drift.png`` under
``<eval.reports_dir>/monitor/<category>/`` and logs the same as a monitoring run
(:mod:`bridgenet.monitor.runs`). The watched model is the category's registered champion
unless another model file or MLflow URI is given. :func:`exit_code` gives the command's
exit status; the event on drift is :mod:`bridgenet.monitor.events`'s.
"""

from __future__ import annotations

import datetime as dt
import logging
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from bridgenet.config import MonitorConfig, Params
from bridgenet.files import json_safe, sha256_file, write_json
from bridgenet.monitor import log
from bridgenet.monitor.drift import DRIFT, NOT_ENOUGH_DATA, OK, Assessment, Window, assess, limits
from bridgenet.monitor.reference import monitor_dir, reference

LOGGER = logging.getLogger(__name__)
EXIT_CODES = {OK: 0, DRIFT: 3, NOT_ENOUGH_DATA: 4}  # 1 and 2 are click's (an error, a usage error)


def exit_code(status: str) -> int:
    """``bridgenet monitor``'s exit status for a pass's status: 0 ok, 3 drift, 4 not enough data."""
    return EXIT_CODES[status]


def champion_ref(params: Params, category: str) -> str:
    """The model a pass watches by default: ``models:/<registry.prefix>-<category>@<champion alias>``."""
    return f"models:/{params.registry.prefix}-{category}@{params.registry.champion_alias}"


def category_dir(params: Params, category: str) -> Path:
    """``<eval.reports_dir>/monitor/<category>``: the last pass's ``drift.json`` and ``drift.png``."""
    return monitor_dir(params) / category


def _read_log(path: Path, category: str) -> pd.DataFrame:
    """The prediction log's records of ``category``, oldest first; none when there is no log yet."""
    if not path.is_file():
        LOGGER.warning("no prediction log at %s (monitor.log) yet: no records", path)
        return pd.DataFrame(columns=list(log.COLUMNS))
    return log.read(path, category=category)


def select_window(records: pd.DataFrame, model_digest: str, cfg: MonitorConfig,
                  now: dt.datetime) -> tuple[Window, dict[str, Any]]:
    """The window of ``records`` (one category's, oldest first) a pass judges, and where it lies.

    The records of the model with file digest ``model_digest`` (of the last
    ``cfg.window_hours``, where above 0); of them the last ``cfg.window`` ok ones, and the
    no_object and error records from the first of those on.
    """
    mine = records[records["model_digest"] == model_digest]
    other_models = int(len(records) - len(mine))
    if cfg.window_hours > 0 and len(mine):
        times = pd.to_datetime(mine["time"], utc=True, format="ISO8601")
        mine = mine[times >= pd.Timestamp(now) - pd.Timedelta(hours=cfg.window_hours)]
    ok = mine[mine["status"] == "ok"].tail(cfg.window)
    stretch = mine[mine["id"] >= ok["id"].iloc[0]] if len(ok) else mine.tail(cfg.window)
    light, holes = (ok[c].to_numpy(dtype=np.float64) if c in ok else np.zeros(0)
                    for c in ("brightness", "missing_points"))
    window = Window(scores=ok["score"].to_numpy(dtype=np.float64),
                    flagged=(ok["verdict"] == "defect").to_numpy(),
                    no_object=int((stretch["status"] == "no_object").sum()),
                    errors=int((stretch["status"] == "error").sum()),
                    brightness=light[np.isfinite(light)],  # records logged before these were carry none
                    missing=holes[np.isfinite(holes)])
    where = {"first": str(stretch["time"].iloc[0]) if len(stretch) else None,
             "last": str(stretch["time"].iloc[-1]) if len(stretch) else None,
             "records_of_other_models": other_models}
    return window, where




def monitor_category(params: Params, category: str, model_ref: str | None = None,
                     now: dt.datetime | None = None, track: bool = True) -> dict[str, Any]:
    """One pass over ``category``'s window of the log; returns its summary (status, crossed limits,
    numbers, limits, model, window, files, MLflow run). ``model_ref``: a model file or MLflow URI
    (default :func:`champion_ref`); ``track``: log the monitoring run to MLflow."""
    from bridgenet.model.io import load_model
    from bridgenet.monitor.records import local_model_file

    cfg = params.monitor
    now = now or dt.datetime.now(dt.timezone.utc)
    ref = model_ref or champion_ref(params, category)
    path = local_model_file(ref, params.tracking.uri)
    digest = sha256_file(path)
    model = load_model(path)
    if model.category != category:
        raise ValueError(f"{ref} is a model of {model.category!r}, not of {category!r}")
    goods = reference(params, category, model, digest)
    window, where = select_window(_read_log(Path(cfg.log), category), digest, cfg, now)
    result = assess(window, goods.scores, model.params.train.threshold_quantile, cfg, goods.brightness, goods.missing)
    folder = category_dir(params, category)
    summary = {"category": category, "status": result.status, "crossed": list(result.crossed),
               "time": now.isoformat(), **result.numbers, "limits": limits(cfg),
               "model": {"ref": ref, "digest": digest, "threshold": model.threshold,
                         "threshold_quantile": model.params.train.threshold_quantile},
               "window": where, "log": str(cfg.log),
               "files": {"summary": str(folder / "drift.json"), "figure": str(folder / "drift.png")}}
    write_figure(Path(summary["files"]["figure"]), goods.scores, window, result, category, goods.brightness,
                 cfg.max_brightness_shift, goods.missing, cfg.max_missing_points_increase)
    if track:
        from bridgenet.monitor.runs import log_monitoring_run

        summary["mlflow_run_id"] = log_monitoring_run(params, summary)
    write_json(summary["files"]["summary"], summary)
    LOGGER.info("%s: %s%s", category, result.status, f" ({', '.join(result.crossed)})" if result.crossed else "")
    return json_safe(summary)


def write_figure(path: Path, reference: np.ndarray, window: Window, result: Assessment, category: str,
                 reference_light: np.ndarray | None = None, max_shift: float | None = None,
                 reference_missing: np.ndarray | None = None, max_increase: float | None = None) -> Path:
    """The two score distributions (validation goods, the window), the two brightness distributions
    with the limits around the reference's median, the two distributions of missing 3D points with
    the limit above the reference's median, and the flagged rate against its limit."""
    from matplotlib.figure import Figure

    from bridgenet.reports import save_figure

    n = result.numbers
    fig = Figure(figsize=(18, 4))
    left, middle, holes, right = fig.subplots(1, 4, gridspec_kw={"width_ratios": [3, 2, 2, 1]})
    _two_histograms(left, reference, window.scores)
    stats = (f"PSI {n['psi']:.3f}, KS p {n['ks_pvalue']:.2g}" if n["psi"] is not None else "no ok record")
    left.set(xlabel="image score", ylabel="density", title=f"{category}: scores ({stats})")
    _legend(left)
    # the input checks compare the window's median with the validation goods' median
    _input_panel(middle, reference_light, window.brightness, None if max_shift is None else
                 lambda base: [base * (1 - max_shift), base * (1 + max_shift)], "limits for the window's median")
    shift = n.get("brightness_shift")
    middle.set(xlabel="part brightness (0-1)", ylabel="density",
               title="brightness " + (f"{shift:+.1%} vs validation goods" if shift is not None else "not recorded"))
    _input_panel(holes, reference_missing, window.missing, None if max_increase is None else
                 lambda base: [base + max_increase], "limit for the window's median", scale=100.0)
    rise = n.get("missing_points_increase")
    holes.set(xlabel="part without a 3D point (%)", ylabel="density",
              title="missing points " + (f"{100 * rise:+.1f} points vs validation goods" if rise is not None
                                         else "not recorded"))
    rates = [n["flag_rate"] or 0.0, n["expected_flag_rate"], n["no_object_rate"] or 0.0]
    right.bar(["flagged", "promised", "no\nobject"], rates, color=["tab:red", "tab:green", "tab:grey"])
    right.axhline(n["flag_rate_limit"], color="tab:red", linestyle="--", label="flagged limit")
    right.set(ylabel="share of records", title=result.status.replace("_", " "))
    right.legend(loc="upper right")
    fig.tight_layout()
    return save_figure(fig, path)


def _input_panel(ax: Any, reference: np.ndarray | None, window: np.ndarray,
                 limits: Callable[[float], list[float]] | None, limit_label: str, scale: float = 1.0) -> None:
    """One input check's panel: both distributions times ``scale``, both medians and the limits
    that ``limits`` places around the reference's median (none without a reference or limits), legend."""
    ref = np.zeros(0) if reference is None else np.asarray(reference, dtype=np.float64)
    _two_histograms(ax, scale * ref, scale * window)
    if ref.size and limits is not None:
        base = float(np.median(ref))
        ax.axvline(scale * base, color="tab:blue", label="medians")
        if window.size:
            ax.axvline(scale * float(np.median(window)), color="tab:orange")
        for i, at in enumerate(limits(base)):
            ax.axvline(scale * at, color="tab:red", linestyle="--", label=limit_label if i == 0 else None)
    _legend(ax)


def _legend(ax: Any) -> None:
    if ax.get_legend_handles_labels()[0]:
        ax.legend(loc="best", fontsize="small")


def _two_histograms(ax: Any, reference: np.ndarray, window: np.ndarray) -> None:
    values = np.concatenate([reference, window])
    bins = np.histogram_bin_edges(values, bins=30) if values.size else 10
    if reference.size:
        ax.hist(reference, bins=bins, density=True, alpha=0.55, label=f"validation goods (n={reference.size})")
    if window.size:
        ax.hist(window, bins=bins, density=True, alpha=0.55, label=f"window (n={window.size})")
