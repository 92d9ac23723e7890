"""The Prefect event a monitoring pass emits when a limit is crossed, which triggers retraining.

Event ``bridgenet.drift.detected`` on resource ``bridgenet.category.<category>``, with the
pass's numbers, limits and crossed limits as payload. The retraining deployment
(``flows/deploy.py``) holds a trigger on it. Prefect is imported only to emit.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

DRIFT_EVENT = "bridgenet.drift.detected"
RESOURCE_PREFIX = "bridgenet.category."
_PAYLOAD_KEYS = ("status", "crossed", "time", "n_ok", "n_no_object", "n_error", "n_reference", "flag_rate",
                 "expected_flag_rate", "flag_rate_limit", "flag_rate_ratio", "psi", "psi_bins", "ks_statistic",
                 "ks_pvalue", "no_object_rate", "score_median", "reference_median", "n_brightness",
                 "brightness_median", "reference_brightness_median", "brightness_shift", "brightness_ks_pvalue",
                 "n_missing_points", "missing_points_median", "reference_missing_points_median",
                 "missing_points_increase", "missing_points_ks_pvalue", "limits", "model",
                 "window", "mlflow_run_id")


def drift_event(summary: Mapping[str, Any]) -> dict[str, Any]:
    """The keyword arguments of :func:`prefect.events.emit_event` for a pass's ``summary``."""
    category = summary["category"]
    return {"event": DRIFT_EVENT,
            "resource": {"prefect.resource.id": f"{RESOURCE_PREFIX}{category}",
                         "prefect.resource.name": category},
            "payload": {key: summary[key] for key in _PAYLOAD_KEYS if key in summary}}


def emit_drift_event(summary: Mapping[str, Any]) -> Any:
    """Emit :func:`drift_event` to the Prefect API in use (``PREFECT_API_URL``); Prefect's event or None."""
    from prefect.events import emit_event

    return emit_event(**drift_event(summary))
