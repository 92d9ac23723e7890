"""Register stage: log a category's trained model to MLflow and register it as challenger.

Register reads what the stages before it left on disk (:func:`read_stage_outputs`):

- the train stage's ``<train.models_dir>/<cat>/``: ``model.pt`` (its stored category and
  params; the network is not rebuilt), ``train_summary.json`` and ``anomaly_preview.png``;
- the evaluate stage's ``<eval.reports_dir>/categories/<cat>/``: ``evaluation.json`` (the
  results of this model file on the current test split) and its figures (heatmap sheet,
  per-defect AUROC chart).

What no stage before it leaves on disk is made in one place, :func:`made_at_registration`.
From both, one :class:`~bridgenet.tracking.runs.TrainingRunRecord` is built
(:func:`training_run_record`) and logged in one pass as an MLflow run with the pyfunc model
and the data it read as inputs; then the run's model is registered as a new version of
``<registry.prefix>-<cat>`` with the challenger alias and a few tags, the registered model
is described, and a model card (:mod:`bridgenet.tracking.model_card`) says what the gate
would decide against the current champion on the same data (:func:`gate_preview`). When a
step after the run fails (registration, alias, card), the run is marked FAILED with the
reason, so a finished run always means a registered version; a version already created is
kept.
"""

from __future__ import annotations

import logging
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from bridgenet import paths
from bridgenet.config import Params
from bridgenet.evaluate import CategoryEvaluation, stored_evaluation

if TYPE_CHECKING:
    from bridgenet.data.cache import CachedSplit
    from bridgenet.model.summary import TrainSummary
    from bridgenet.tracking.pyfunc import PyfuncSpec
    from bridgenet.tracking.runs import LoggedTrainingRun, TrainingRunRecord

LOGGER = logging.getLogger(__name__)


@dataclass(frozen=True)
class StageOutputs:
    """What the stages before register left on disk for one category.

    ``evaluation`` is None when the evaluate stage left none of this model file on
    ``test_split`` (or its figures are missing).
    """

    model_file: Path
    trained_params: Params  # the params stored in the model file: what it was trained with
    summary: TrainSummary
    preview: Path | None  # the generated anomalies training selected on; None: not drawn
    evaluation: CategoryEvaluation | None
    evaluation_file: Path
    figures: dict[str, Path]  # the evaluate stage's: heatmaps, defect_auroc
    test_split: CachedSplit  # the preprocess stage's current test split


@dataclass(frozen=True)
class MadeAtRegistration:
    """What register needs but no stage before it left on disk (:func:`made_at_registration`)."""

    evaluation: CategoryEvaluation  # the evaluate stage's; made now only when it left none
    figures: dict[str, Path]  # training_curves, roc, pro, anomaly_preview (when there is one)
    pyfunc: PyfuncSpec
    train_digest: str


def read_stage_outputs(params: Params, category: str) -> StageOutputs:
    """The train and evaluate stages' files of ``category`` (see the module docstring)."""
    from bridgenet.config import params_from_dict, upgrade_stored_params
    from bridgenet.evaluate import load_test_split
    from bridgenet.files import sha256_file
    from bridgenet.model.io import read_checkpoint
    from bridgenet.model.summary import load_train_summary

    path = paths.model_file(params, category)
    if not path.is_file():
        raise FileNotFoundError(f"model file {path} does not exist; run `bridgenet train -c {category}`")
    stored = read_checkpoint(path)
    if stored["category"] != category:
        raise ValueError(f"{path}: holds a model of category {stored['category']!r}, expected {category!r}")
    trained = params_from_dict(upgrade_stored_params(stored["params"]), source=f"{path} (stored params)")
    if trained.data != params.data:
        LOGGER.warning("%s was trained with other data settings than the current params; it is "
                       "evaluated on the current test split", path)
    split = load_test_split(params, category)
    figures = paths.category_figures(params, category)
    evaluation = stored_evaluation(params, category, sha256_file(path), split.fingerprint())
    if evaluation is not None and not all(p.is_file() for p in figures.values()):
        evaluation = None
    preview = path.parent / paths.PREVIEW_FILE
    return StageOutputs(
        model_file=path,
        trained_params=trained,
        summary=load_train_summary(path.parent),
        preview=preview if preview.is_file() else None,
        evaluation=evaluation,
        evaluation_file=paths.evaluation_file(params, category),
        figures=figures,
        test_split=split,
    )


def made_at_registration(params: Params, category: str, left: StageOutputs,
                         out_dir: Path) -> MadeAtRegistration:
    """What the run needs and no stage before register left on disk, made now (figures in ``out_dir``).

    - the evaluation, only when the evaluate stage left none for this model file and test
      split: evaluated now into the evaluate stage's folder, as ``bridgenet evaluate`` would;
    - the training curves (the evaluate and train stages draw none);
    - the category's ROC and PRO figures (the evaluate stage writes their CSV files, and
      draws them only for all categories together);
    - the anomaly preview under the run's file name: copied from the train stage's, drawn
      now only when training left none (a model trained outside ``bridgenet train``);
    - the logged model's input example, from the category's raw data (:func:`pyfunc_spec`);
    - the training data's digest (:func:`training_data_digest`).
    """
    from bridgenet import reports
    from bridgenet.evaluate import evaluate_to_folder
    from bridgenet.serving.spec import pyfunc_spec

    evaluation = left.evaluation
    if evaluation is None:
        LOGGER.info("%s: no evaluation of %s on the current test split in %s; evaluating it now",
                    category, left.model_file, paths.category_reports_dir(params, category))
        evaluation = evaluate_to_folder(params, category, left.test_split)
    summary = left.summary
    figures = {"training_curves": reports.write_training_curves(
        out_dir / f"training_curves_{category}.png", summary.history,
        f"{category}: training", summary.best_epoch,
    )}
    for curve, y_name, title, limit in (("roc", "tpr", "image ROC", None), ("pro", "pro", "PRO curve", 0.3)):
        figures[curve] = out_dir / f"{curve}_{category}.png"
        reports.plot_curves(figures[curve], {category: getattr(evaluation, curve)}, y_name,
                            f"{category}: {title} (test)", limit=limit)
    preview = out_dir / f"anomaly_preview_{category}.png"
    if left.preview is not None:
        figures["anomaly_preview"] = Path(shutil.copyfile(left.preview, preview))
    else:
        from bridgenet.training.validation import write_anomaly_preview

        drawn = write_anomaly_preview(left.trained_params, category, preview)
        if drawn is not None:
            figures["anomaly_preview"] = drawn
    return MadeAtRegistration(evaluation, figures, pyfunc_spec(params.data, category),
                              training_data_digest(params, category))


def training_run_record(params: Params, category: str, left: StageOutputs, lineage: dict[str, str],
                        out_dir: Path) -> TrainingRunRecord:
    """The one record of ``category``'s training run: what the stages ``left``, and what is made now."""
    from bridgenet.tracking.runs import TrainingRunRecord

    made = made_at_registration(params, category, left, out_dir)
    return TrainingRunRecord(
        category=category,
        trained_params=left.trained_params,
        model_file=left.model_file,
        pyfunc=made.pyfunc,
        summary=left.summary,
        evaluation=made.evaluation,
        lineage=lineage,
        figures={**left.figures, **made.figures},
        records=(left.evaluation_file,),
        datasets=tuple(input_datasets(params, category, made.train_digest, made.evaluation)),
    )


def register_category(
    params: Params, category: str, repo_root: Path | str = ".", lineage: dict[str, str] | None = None
) -> dict[str, Any]:
    """Log, register and document ``category``'s model; returns what was created (JSON-able).

    ``params`` are the category's resolved params (:func:`bridgenet.stages.resolve`).
    """
    from bridgenet.tracking.lineage import lineage_tags
    from bridgenet.tracking.runs import end_run_as, log_training_run

    left = read_stage_outputs(params, category)
    lineage = lineage if lineage is not None else lineage_tags(repo_root, params)
    with tempfile.TemporaryDirectory(prefix=f"bridgenet-register-{category}-") as tmp:
        record = training_run_record(params, category, left, lineage, Path(tmp))
        logged = log_training_run(params, record)
    try:
        return _register_logged(params, record, logged, left.test_split)
    except BaseException as exc:
        end_run_as(params, logged.run_id, "FAILED",
                   f"registration failed after the run was logged: {type(exc).__name__}: {exc}")
        raise


def training_data_digest(params: Params, category: str) -> str:
    """sha256 of ``<data.root>/<category>`` (:func:`bridgenet.tracking.lineage.folder_digest`),
    or ``unknown (...)`` saying why when the folder is not there (a registry fed from the cache)."""
    from bridgenet.tracking.lineage import folder_digest

    try:
        return folder_digest(Path(params.data.root) / category)
    except FileNotFoundError as exc:
        LOGGER.warning("%s: training data digest unknown: %s", category, exc)
        return f"unknown ({exc})"


def input_datasets(params: Params, category: str, train_digest: str,
                   evaluation: CategoryEvaluation) -> list[dict[str, str]]:
    """The data the model was trained and tested on, as the run's inputs: the category's folder
    under ``data.root`` with its digest (:func:`training_data_digest`), and the test split
    with its fingerprint (the preprocessed test samples the evaluation scored)."""
    folder = Path(params.data.root) / category
    return [
        {"name": f"{category}/train", "source": str(folder), "digest": train_digest, "context": "training"},
        {"name": f"{category}/test", "source": str(folder / "test"),
         "digest": evaluation.data_fingerprint or "unknown", "context": "test"},
    ]


@dataclass(frozen=True)
class GatePreview:
    """What the promotion gate would decide now for a new version (the card's first line)."""

    decision: dict[str, Any]
    champion_version: str | None  # the version holding the champion alias; None: no champion
    champion_metrics: dict[str, float] | None  # its gate metrics on the same split; None: not compared


def gate_preview(params: Params, category: str, evaluation: CategoryEvaluation, version: str,
                 split: CachedSplit) -> GatePreview:
    """The gate's decision for ``version`` against the current champion on ``split``
    (:func:`bridgenet.promote.decide`); the champion's evaluation is read where it was stored,
    scored only when it was made on other data (:func:`bridgenet.promote.evaluation_of_version`)."""
    from bridgenet.promote import decide, evaluation_of_version, gate_metrics
    from bridgenet.tracking import registry

    champion = registry.alias_version(params, category, params.registry.champion_alias)
    compared = None
    if champion is not None and champion.version != version:
        compared = evaluation_of_version(params, category, champion, split)
    decision = decide(evaluation, compared.evaluation if compared else None, params.promotion)
    return GatePreview(decision, None if champion is None else str(champion.version),
                       None if compared is None else gate_metrics(compared.evaluation))


def _register_logged(params: Params, record: TrainingRunRecord, logged: LoggedTrainingRun,
                     split: CachedSplit) -> dict[str, Any]:
    """Register the logged run's model as challenger, describe the registered model, log the model card."""
    from bridgenet.promote import MODEL_FINGERPRINT_TAG, gate_metrics
    from bridgenet.tracking import registry
    from bridgenet.tracking.model_card import (
        log_model_card,
        model_card_markdown,
        registered_model_description,
        ui_url,
    )

    category, evaluation = record.category, record.evaluation
    version = registry.register_challenger(
        params, category, logged.model_uri, logged.run_id, gate_metrics(evaluation), record.lineage,
        extra_tags={"threshold": registry.metric_text(evaluation.threshold),
                    MODEL_FINGERPRINT_TAG: evaluation.model_fingerprint},
    )
    promotion = params.promotion
    registry.describe_registered_model(params, category, registered_model_description(params, category), {
        "category": category,
        "data": str(Path(params.data.root) / category),
        "modalities": "+".join(record.trained_params.model.modalities),
        "gate": f"FPR <= {promotion.max_fpr_at_threshold:g}, recall >= {promotion.min_recall_at_threshold:g}, "
                f"image AUROC >= {promotion.min_image_auroc:g}",
    })
    gate = gate_preview(params, category, evaluation, version.version, split)
    champion = (None if gate.champion_metrics is None
                else (gate.champion_version, gate.champion_metrics))

    def card(figure_base: str) -> str:
        return model_card_markdown(params, record, logged, version, gate.decision, champion, figure_base)

    card_uri = log_model_card(params, category, version, logged.run_id, card(ui_url(params)))
    registry.set_version_description(params, version.name, version.version, card(""))
    return {
        "category": category,
        "run_id": logged.run_id,
        "run_name": logged.name,
        "model_uri": logged.model_uri,
        "model_name": version.name,
        "version": str(version.version),
        "alias": params.registry.challenger_alias,
        "model_card": card_uri,
        "metrics": {k: float(v) for k, v in evaluation.metrics.items()},
        "champion_version": gate.champion_version,
        "would_promote": None if champion is None else bool(gate.decision["promote"]),
    }


BANK_TAGS = ("bank.parent", "bank.parent_sha256", "bank.parent_version", "bank.source", "bank.source_sha256",
             "bank.samples_added")


def bank_update_tags(update: Any) -> dict[str, str]:
    """A bank update's lineage (a :class:`bridgenet.bank.BankUpdate`) as run and version tags."""
    tags = {"bank.parent": update.parent, "bank.parent_sha256": update.parent_sha256,
            "bank.parent_version": update.parent_version or "not registered", "bank.source": update.source,
            "bank.source_sha256": update.source_sha256, "bank.samples_added": str(update.samples)}
    return {key: tags[key] for key in BANK_TAGS}


def register_bank_update(params: Params, update: Any, repo_root: Path | str = ".") -> dict[str, Any]:
    """Register the model of a bank update (:func:`bridgenet.bank.add_to_bank`) as the challenger.

    As :func:`register_category` does for a trained model, with what differs: the new model is
    scored on the current test split here (its evaluation kept where the gate looks for it,
    :func:`bridgenet.evaluate.keep_evaluation`; the evaluate stage's folder is left alone),
    its training input is the folder of added parts, and the run and the version carry the
    update's lineage (:func:`bank_update_tags`). ``bridgenet promote`` then decides.
    """
    from bridgenet.evaluate import (
        evaluate_category,
        keep_evaluation,
        load_test_split,
        write_category_figures,
    )
    from bridgenet.files import sha256_file
    from bridgenet.model.io import load_model
    from bridgenet.model.summary import load_train_summary
    from bridgenet.serving.spec import pyfunc_spec
    from bridgenet.tracking import registry
    from bridgenet.tracking.lineage import lineage_tags
    from bridgenet.tracking.runs import TrainingRunRecord, end_run_as, log_training_run

    category, model_file = update.category, Path(update.model_path)
    model = load_model(model_file)
    split = load_test_split(params, category)
    evaluation, small_maps = evaluate_category(params, model, split, model_fingerprint=sha256_file(model_file))
    kept = keep_evaluation(params, evaluation)
    folder = model_file.parent
    figures = write_category_figures(evaluation, split, small_maps, {
        "heatmaps": folder / f"heatmaps_{category}.png", "defect_auroc": folder / f"defect_auroc_{category}.png",
    }, params.eval.heatmap_samples)
    tags = bank_update_tags(update)
    record = TrainingRunRecord(
        category=category, trained_params=model.params, model_file=model_file,
        pyfunc=pyfunc_spec(params.data, category), summary=load_train_summary(folder), evaluation=evaluation,
        lineage={**lineage_tags(repo_root, params), **tags, "bridgenet.stage": "bank_add"}, figures=figures,
        records=(kept,),
        datasets=({"name": f"{category}/bank_add", "source": update.source, "digest": update.source_sha256,
                   "context": "training"},
                  {"name": f"{category}/test", "source": str(Path(params.data.root) / category / "test"),
                   "digest": evaluation.data_fingerprint or "unknown", "context": "test"}),
    )
    logged = log_training_run(params, record)
    try:
        result = _register_logged(params, record, logged, split)
        registry.set_version_tags(params, result["model_name"], result["version"], tags)
    except BaseException as exc:
        end_run_as(params, logged.run_id, "FAILED",
                   f"registration failed after the run was logged: {type(exc).__name__}: {exc}")
        raise
    return {**result, **tags}
