"""Model registry: register a challenger, read and move aliases, tag versions, fetch what they hold.

Each category has one registered model ``<registry.prefix>-<category>``. A newly
registered version gets the alias ``registry.challenger_alias``; the promotion gate
(:mod:`bridgenet.promote`) decides whether ``registry.champion_alias`` moves to it and
calls :func:`set_alias`. This module only records and queries: it knows nothing of how
a model is trained or evaluated.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import mlflow
from mlflow.entities.model_registry import ModelVersion
from mlflow.exceptions import MlflowException

from bridgenet.config import Params
from bridgenet.tracking.retry import call_tracking
from bridgenet.tracking.runs import registered_name
from bridgenet.tracking.store import configure_tracking, tracking_client

LOGGER = logging.getLogger(__name__)
_MISSING_CODES = {"RESOURCE_DOES_NOT_EXIST", "INVALID_PARAMETER_VALUE", "NOT_FOUND"}


def model_name(params: Params, category: str) -> str:
    """Registered model name of ``category``: ``<registry.prefix>-<category>`` (its logged models' too)."""
    return registered_name(params, category)


def alias_version(params: Params, category: str, alias: str) -> ModelVersion | None:
    """The version holding ``alias``, or None when the model or the alias does not exist."""
    client = tracking_client(params)
    try:
        return call_tracking(
            params.tracking, client.get_model_version_by_alias, model_name(params, category), alias
        )
    except MlflowException as exc:
        if exc.error_code in _MISSING_CODES:
            return None
        raise


def metric_text(value: Any) -> str:
    """A metric as a tag value: 4 decimals, ``undefined`` when it is (nan or None)."""
    return (
        "undefined"
        if value is None or (isinstance(value, float) and math.isnan(value))
        else f"{float(value):.4f}"
    )


def set_version_tags(params: Params, name: str, version: str, tags: Mapping[str, Any]) -> None:
    """Set each of ``tags`` on version ``version`` of ``name`` (values as text, at most 5000 chars)."""
    client = tracking_client(params)
    for key, value in tags.items():
        call_tracking(
            params.tracking, client.set_model_version_tag, name, version, key, str(value)[:5000]
        )


def log_run_metrics(params: Params, run_id: str | None, metrics: Mapping[str, float]) -> None:
    """Log ``metrics`` to run ``run_id`` (an ended run too); undefined (nan) ones are left out."""
    if not run_id:
        return
    client = tracking_client(params)
    for key, value in metrics.items():
        if not math.isnan(value):
            call_tracking(params.tracking, client.log_metric, run_id, key, float(value))


DESCRIPTION_LIMIT = 5000  # characters MLflow's store keeps of a version's description


def set_version_description(params: Params, name: str, version: str, text: str) -> None:
    """The version's description (the registry page's text): ``text``, cut to what the store keeps."""
    if len(text) > DESCRIPTION_LIMIT:
        note = "\n\n(cut here: the whole model card is the run's model_card.md artifact)"
        text = text[: DESCRIPTION_LIMIT - len(note)] + note
    call_tracking(params.tracking, tracking_client(params).update_model_version, name, version, text)


def version_description(params: Params, name: str, version: str) -> str:
    return call_tracking(params.tracking, tracking_client(params).get_model_version, name, version).description or ""


VERSION_LINEAGE_TAGS = ("git.commit", "dvc.data_root.md5", "dvc.cache_dir.md5")
VERSION_METRIC_TAGS = ("image_auroc", "aupro_30", "fpr_at_threshold", "recall_at_threshold")


def version_tags(category: str, metrics: Mapping[str, float], lineage: Mapping[str, str]) -> dict[str, str]:
    """What a reviewer filters versions on (the rest is in the model card): the category, the
    commit and DVC md5s of the data, and the headline test metrics (``test.<metric>``)."""
    tags = {"category": category, **{k: lineage[k] for k in VERSION_LINEAGE_TAGS if k in lineage}}
    if not any(k.startswith("dvc.") for k in tags) and "dvc.lock" in lineage:
        tags["dvc.lock"] = lineage["dvc.lock"]  # says why the data hashes are unknown
    tags.update({f"test.{k}": metric_text(metrics[k]) for k in VERSION_METRIC_TAGS if k in metrics})
    return tags


def register_challenger(
    params: Params,
    category: str,
    model_uri: str,
    run_id: str,
    test_metrics: Mapping[str, float],
    lineage: Mapping[str, str],
    extra_tags: Mapping[str, Any] | None = None,
) -> ModelVersion:
    """Register ``model_uri`` as a new version of ``<prefix>-<category>`` with the challenger alias.

    The version is tagged with :func:`version_tags` of ``test_metrics`` (the gate's metrics,
    :func:`bridgenet.promote.gate_metrics`) and ``lineage``, and with ``extra_tags``.
    """
    configure_tracking(params)
    cfg, name = params.tracking, model_name(params, category)
    tags = {**version_tags(category, test_metrics, lineage), **(extra_tags or {})}
    version = call_tracking(
        cfg,
        mlflow.register_model,
        model_uri,
        name,
        tags={k: str(v)[:5000] for k, v in tags.items()},
    )
    client = tracking_client(params)
    call_tracking(
        cfg,
        client.set_registered_model_alias,
        name,
        params.registry.challenger_alias,
        version.version,
    )
    LOGGER.info(
        "registered %s version %s (%s) as %r",
        name,
        version.version,
        model_uri,
        params.registry.challenger_alias,
    )
    return version


def describe_registered_model(params: Params, category: str, description: str,
                              tags: Mapping[str, Any]) -> None:
    """The registered model's description and tags (what the models list and the model page show)."""
    client, name = tracking_client(params), model_name(params, category)
    call_tracking(params.tracking, client.update_registered_model, name, description)
    for key, value in tags.items():
        call_tracking(params.tracking, client.set_registered_model_tag, name, key, str(value)[:5000])


def set_alias(params: Params, category: str, alias: str, version: str) -> None:
    """Point ``alias`` of ``<prefix>-<category>`` at ``version``."""
    call_tracking(params.tracking, tracking_client(params).set_registered_model_alias,
                  model_name(params, category), alias, str(version))


def get_version(params: Params, category: str, version: str) -> ModelVersion:
    """Version ``version`` of ``<prefix>-<category>`` (its tags and run id)."""
    return call_tracking(params.tracking, tracking_client(params).get_model_version,
                         model_name(params, category), str(version))


def download_version_model(params: Params, category: str, version: str) -> Path:
    """Local path of version ``version``'s ``model.pt`` (the stored file itself for local stores)."""
    from bridgenet.tracking.pyfunc import download_model_file

    uri = f"models:/{model_name(params, category)}/{version}"
    return call_tracking(params.tracking, download_model_file, uri, params.tracking.uri)


def run_artifact(params: Params, run_id: str | None, path: str) -> Path | None:
    """Local copy of artifact ``path`` of ``run_id``; None when the run has none by that name."""
    if not run_id:
        return None
    try:
        local = call_tracking(params.tracking, mlflow.artifacts.download_artifacts, run_id=run_id,
                              artifact_path=path, tracking_uri=params.tracking.uri)
    except (MlflowException, OSError) as exc:
        LOGGER.debug("run %s has no artifact %s (%s)", run_id, path, exc)
        return None
    return Path(local) if Path(local).is_file() else None

