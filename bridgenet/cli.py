"""Command-line interface: ``bridgenet <verb> [--params FILE] [--set key=value ...]``."""

from __future__ import annotations

import json
import logging
import os
import sys
from pathlib import Path
from typing import Any

import click
import yaml

from bridgenet import __version__, paths
from bridgenet.cli_options import fail_cleanly, setup_logging, with_params
from bridgenet.config import DEFAULT_PARAMS, Params

LOGGER = logging.getLogger("bridgenet")


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, prog_name="bridgenet")
@click.option("-v", "--verbose", is_flag=True, help="Debug logging.")
def main(verbose: bool) -> None:
    """BridgeNet: multimodal (RGB + 3D) industrial anomaly detection."""
    setup_logging(verbose)


@main.command("params")
@with_params
def show_params(params: Params) -> None:
    """Print the resolved parameters as YAML."""
    click.echo(yaml.safe_dump(params.to_dict(), sort_keys=False))


@main.command("synth")
@click.option("--out", type=click.Path(file_okay=False, path_type=Path), default=None,
              help="Output root (default: synth.out).")
@click.option("--preview", "preview_path", type=click.Path(dir_okay=False, path_type=Path),
              default=None, help="Also write a preview sheet PNG here.")
@with_params
@fail_cleanly
def synth(params: Params, out: Path | None, preview_path: Path | None) -> None:
    """Render the synthetic MVTec 3D-AD data set."""
    from bridgenet.data.synth.dataset import synthesize

    out_dir = out if out is not None else Path(params.synth.out)
    summary = synthesize(params.synth, out_dir, preview_path=preview_path)
    click.echo(json.dumps(summary, indent=2, default=str))


@main.command("preprocess")
@with_params
@fail_cleanly
def preprocess(params: Params) -> None:
    """Turn data.root into cached, network-ready arrays under data.cache_dir."""
    from bridgenet import stages

    click.echo(json.dumps(stages.preprocess(params), indent=2, default=str))


def _runs(params: Params, category: tuple[str, ...]) -> list[Any]:
    """Each requested category (default: all) with its resolved params; an unknown one is a usage error."""
    from bridgenet import stages

    try:
        names = stages.categories(params, category)
    except stages.UnknownCategoryError as err:
        raise click.BadParameter(str(err), param_hint="--category") from None
    return [stages.resolve(params, name) for name in names]


@main.command("train")
@click.option("--category", "-c", multiple=True, help="Category to train (repeatable; default: all).")
@click.option("--resume", is_flag=True, help="Continue from the category's last checkpoint.")
@with_params
@fail_cleanly
def train(params: Params, category: tuple[str, ...], resume: bool) -> None:
    """Train one model per category on its good samples."""
    from bridgenet import stages

    for run in _runs(params, category):
        summary = stages.train(run, resume=resume).to_dict()
        summary.pop("history")  # it stays in train_summary.json
        click.echo(json.dumps(summary, indent=2, default=str))


@main.command("evaluate")
@click.option("--category", "-c", multiple=True, help="Category to evaluate (repeatable; default: all).")
@with_params
@fail_cleanly
def evaluate(params: Params, category: tuple[str, ...]) -> None:
    """Score the test split of each category and write reports (metrics.json, curves, heatmaps).

    The trained model.pt is scored as it was trained: a --set of one of its training or scoring
    settings (model.*, anomalies.*, train.* but device and models_dir) to another value is refused.
    """
    from bridgenet import stages
    from bridgenet.evaluate import overrides_not_applied

    runs = _runs(params, category)
    overrides = click.get_current_context().params.get("overrides", ())
    for run in runs:
        refused = overrides_not_applied(run.params, run.category, overrides)
        if refused:
            path = paths.model_file(run.params, run.category)
            lines = [f"--set {key}: {mine} cannot apply, {path} was trained with {key}={theirs}"
                     for key, (mine, theirs) in refused.items()]
            raise click.UsageError(
                "; ".join(lines) + ". evaluate scores the model file as it was trained and calibrated; "
                f"train it with the new setting first (bridgenet train -c {run.category} --set ...)")
    for run in runs:
        stages.evaluate(run)
    doc = stages.report(params, [run.category for run in runs])
    click.echo(paths.metrics_table(params).read_text())
    click.echo(json.dumps(doc["mean"], indent=2))


@main.command("predict")
@click.option("--model", "model_ref", required=True, help="model.pt path or MLflow URI (models:/NAME@ALIAS).")
@click.option("--rgb", "rgb_path", type=click.Path(path_type=Path), default=None, help="RGB image (PNG).")
@click.option("--xyz", "xyz_path", type=click.Path(path_type=Path), default=None,
              help="Point cloud (TIFF, H x W x 3).")
@click.option("--heatmap", "heatmap_path", type=click.Path(dir_okay=False, path_type=Path), default=None,
              help="Write the anomaly map overlaid on the image here (colour bar, pixel-threshold contour).")
@click.option("--mask", "mask_path", type=click.Path(dir_okay=False, path_type=Path), default=None,
              help="Write the predicted mask (map above the model's pixel threshold) here as a PNG.")
@click.option("--folder", type=click.Path(file_okay=False, path_type=Path), default=None,
              help="Score every rgb/<stem>.png + xyz/<stem>.tiff pair under this folder.")
@click.option("--list", "list_path", type=click.Path(dir_okay=False, path_type=Path), default=None,
              help="Score the pairs of this CSV (columns rgb, xyz; paths relative to the CSV).")
@click.option("--out", "out_dir", type=click.Path(file_okay=False, path_type=Path), default=None,
              help="With --folder/--list: where predictions.csv and heatmaps/ go.")
@click.option("--no-heatmaps", is_flag=True, help="With --folder/--list: the CSV only (no heatmaps, no masks).")
@click.option("--no-log", is_flag=True, help="Do not append the samples to the prediction log (monitor.log).")
@with_params
@fail_cleanly
def predict(params: Params, model_ref: str, rgb_path: Path | None, xyz_path: Path | None,
            heatmap_path: Path | None, mask_path: Path | None, folder: Path | None, list_path: Path | None, out_dir: Path | None,
            no_heatmaps: bool, no_log: bool) -> None:
    """Score one RGB + point cloud sample (prints JSON), or many with the model loaded once.

    "status" is "ok", or "no_object" for an input without an object, which
    predict.on_empty_foreground flags as anomalous (default) or refuses (exit 1).
    With --folder or --list, one CSV row per sample; samples that cannot be scored
    get status "error" and the command exits 1 after scoring the others.
    Every sample, a refused one too, gets a record in the prediction log (monitor.log).
    """
    single, many = rgb_path is not None or xyz_path is not None, folder is not None or list_path is not None
    if single == many or (single and (rgb_path is None or xyz_path is None)) or (folder and list_path):
        raise click.UsageError("give --rgb and --xyz for one sample, or one of --folder / --list")
    if many and out_dir is None:
        raise click.UsageError("--folder / --list need --out (where predictions.csv goes)")
    log = None if no_log else paths.prediction_log(params)
    if "torch" not in sys.modules:  # read once, when torch's threads start: idle threads sleep, not
        os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")  # spin (bridgenet.predict.predict_threads)
    if single:
        from bridgenet.predict import predict_files

        result = predict_files(model_ref, rgb_path, xyz_path, heatmap_path, params.tracking.uri,
                               params.predict.on_empty_foreground, mask_path, log, params.predict.threads)
        click.echo(json.dumps(result))
        return
    from bridgenet.batch_predict import predict_folder, read_pair_list
    from bridgenet.predict import find_pairs

    pairs = find_pairs(folder) if folder else read_pair_list(list_path)
    csv_path, errors = predict_folder(model_ref, pairs, out_dir, params.tracking.uri,
                                      params.predict.on_empty_foreground, heatmaps=not no_heatmaps, log=log,
                                      workers=params.predict.workers, batch_size=params.predict.batch_size,
                                      threads=params.predict.threads,
                                      compile_backbone=params.predict.compile_backbone)
    click.echo(json.dumps({"predictions": str(csv_path), "samples": len(pairs), "errors": errors}))
    if errors:
        raise SystemExit(1)


@main.command("export")
@click.option("--model", "model_ref", required=True, help="model.pt path or MLflow URI (models:/NAME@ALIAS).")
@click.option("--format", "fmt", type=click.Choice(["onnx", "torchscript"]), default="onnx", show_default=True)
@click.option("--out", type=click.Path(dir_okay=False, path_type=Path), required=True,
              help="File to write (model.onnx, model.ts).")
@with_params
@fail_cleanly
def export(params: Params, model_ref: str, fmt: str, out: Path) -> None:
    """Export a model with its scorer: rgb (B, 3, S, S) and depth (B, 1, S, S) in [0, 1] in,
    score (B,) and anomaly_map (B, S, S) out; threshold and scorer in the file's metadata."""
    from bridgenet.export import export_model
    from bridgenet.predict import resolve_model

    model = resolve_model(model_ref, params.tracking.uri)
    path = export_model(model, out, fmt)
    click.echo(json.dumps({"path": str(path), "format": fmt, "scorer": model.scorer.name,
                           "threshold": model.threshold, "image_size": model.params.data.image_size}))


@main.command("register")
@click.option("--category", "-c", multiple=True, help="Category to register (repeatable; default: all).")
@with_params
@fail_cleanly
def register(params: Params, category: tuple[str, ...]) -> None:
    """Log each trained model to MLflow and register it as the challenger (with a model card)."""
    from bridgenet import stages

    results = {run.category: stages.register(run) for run in _runs(params, category)}
    click.echo(json.dumps(results, indent=2, default=str))


@main.command("promote")
@click.option("--category", "-c", multiple=True, help="Category to gate (repeatable; default: all).")
@with_params
@fail_cleanly
def promote(params: Params, category: tuple[str, ...]) -> None:
    """Promote each challenger to champion if it is no worse on the current test split."""
    from bridgenet import stages

    results = {run.category: stages.promote(run) for run in _runs(params, category)}
    click.echo(json.dumps(results, indent=2, default=str))


@main.command("bank")
@click.argument("action", type=click.Choice(["add"]))
@click.option("--category", "-c", required=True, help="Category whose model takes the new good parts.")
@click.option("--from", "folder", required=True, type=click.Path(path_type=Path),
              help="Folder of good parts: rgb/<stem>.png + xyz/<stem>.tiff pairs (an MVTec good/ folder too).")
@click.option("--model", "model_ref", default=None,
              help="model.pt path or MLflow URI (default: the champion if registered, else models/<cat>/model.pt).")
@click.option("--no-register", is_flag=True, help="Write the new model file only; do not register it.")
@with_params
@fail_cleanly
def bank(params: Params, action: str, category: str, folder: Path, model_ref: str | None, no_register: bool) -> None:
    """`bank add`: new good parts join the model's memory bank without retraining.

    Writes a new model (recalibrated, new thresholds) under <train.models_dir>/bank_updates/<cat>/
    and registers it as the challenger; `bridgenet promote` decides.
    """
    from bridgenet.bank import add_to_bank, tracking_absent

    run = _runs(params, (category,))[0]
    update = add_to_bank(run.params, run.category, folder, model_ref)
    result: dict[str, Any] = {"model": update.model_path, "parent": update.parent, "samples": update.samples,
                              "threshold": [update.threshold_before, update.threshold],
                              "seconds": round(update.seconds, 2), "memory": update.memory}
    absent = tracking_absent(run.params)
    if no_register or absent:
        result["registered"] = f"no: {absent or '--no-register'}; the model file is left at {update.model_path}"
    else:
        from bridgenet.register import register_bank_update
        from bridgenet.tracking.retry import TrackingUnavailableError

        try:
            result["registered"] = register_bank_update(run.params, update)
        except (TrackingUnavailableError, ValueError, OSError) as exc:
            LOGGER.warning("not registered (%s); the model file is %s", exc, update.model_path)
            result["registered"] = f"no: {type(exc).__name__}: {exc}"
    click.echo(json.dumps(result, indent=2, default=str))


@main.command("feedback")
@click.option("--category", "-c", required=True, help="Category of the part(s).")
@click.option("--rgb", "rgb_path", type=click.Path(path_type=Path), default=None, help="RGB image (PNG).")
@click.option("--xyz", "xyz_path", type=click.Path(path_type=Path), default=None,
              help="Point cloud (TIFF, H x W x 3).")
@click.option("--verdict", type=click.Choice(["good", "defect"]), default=None, help="What the operator confirmed.")
@click.option("--mask", "mask_path", type=click.Path(path_type=Path), default=None,
              help="Defect mask (PNG, non-zero = defect), where known.")
@click.option("--kind", default=None, help="Defect type, the test folder's name (default: line_defect).")
@click.option("--note", default="", help="The operator's note, kept in feedback.csv.")
@click.option("--csv", "csv_path", type=click.Path(dir_okay=False, path_type=Path), default=None,
              help="Many parts: columns rgb, xyz, verdict (optional: mask, kind, note); paths relative to the CSV.")
@with_params
@fail_cleanly
def feedback(params: Params, category: str, rgb_path: Path | None, xyz_path: Path | None, verdict: str | None,
             mask_path: Path | None, kind: str | None, note: str, csv_path: Path | None) -> None:
    """Confirmed parts join the data: goods are trained on by the next `dvc repro`, defects gate
    the next challenger (<feedback.root>/<cat>/, MVTec 3D-AD layout). All or nothing; a part
    already recorded (same digests) is a duplicate, skipped."""
    from bridgenet.feedback import Part, add_feedback, read_parts_csv

    single = any(v is not None for v in (rgb_path, xyz_path, verdict, mask_path, kind))
    if single == (csv_path is not None) or (single and None in (rgb_path, xyz_path, verdict)):
        raise click.UsageError("give --rgb, --xyz and --verdict (--mask, --kind) for one part, or --csv for many")
    parts = read_parts_csv(csv_path) if csv_path else [Part(rgb_path, xyz_path, verdict, mask_path, kind, note)]
    result = add_feedback(params, category, parts)
    folder = paths.feedback_dir(params, category)
    click.echo(json.dumps({"category": category, "added": result.added, "duplicates": result.duplicates,
                           "record": str(result.record),
                           "next": f"dvc add {folder} && git add {folder}.dvc {folder.parent / '.gitignore'}; "
                                   "the next dvc repro trains on the goods and gates on the defects"}, indent=2))


@main.command("pipeline")
@click.option("--category", "-c", multiple=True, help="Category (repeatable; default: all).")
@click.option("--no-register", is_flag=True, help="Skip MLflow registration and promotion.")
@with_params
@fail_cleanly
def pipeline(params: Params, category: tuple[str, ...], no_register: bool) -> None:
    """Run the Prefect `retrain` flow: preprocess, train, evaluate, register, promote.

    Categories run in parallel on a Dask cluster when dask.n_workers > 1 (a temporary
    local one) or dask.address names one; --set dask.n_workers=1 runs them in turn.
    """
    from flows.retrain import run_retrain

    ctx = click.get_current_context()

    result = run_retrain(
        params_file=str(ctx.params.get("params_file", DEFAULT_PARAMS)),
        overrides=list(ctx.params.get("overrides", ())),
        categories=list(category) or None,
        with_registry=not no_register,
    )
    click.echo(json.dumps(result, indent=2, default=str))


@main.command("schedule")
@click.option("--repo", type=click.Path(file_okay=False, path_type=Path), default=Path("."), show_default=True,
              help="The checkout whose DVC pipeline the schedule runs.")
@click.option("--name", default="scheduled-retrain", show_default=True, help="Deployment name.")
@with_params
def schedule(params: Params, repo: Path, name: str) -> None:
    """Serve the scheduled retraining (schedule.cron): `dvc repro` in --repo, one run at a time.

    Needs a Prefect server (PREFECT_API_URL); runs until stopped. Same as
    `python -m flows.deploy`. The params file must be the checkout's own (dvc repro
    reads it): --set overrides are refused.
    """
    given = click.get_current_context().params
    if given.get("overrides"):
        raise click.UsageError("--set is not used by the schedule: dvc repro reads the checkout's params.yaml")
    from flows.deploy import main as serve

    serve(["--repo", str(repo), "--params", str(given["params_file"]), "--name", name])


@main.command("monitor")
@click.option("--category", "-c", required=True, help="Category whose predictions to watch.")
@click.option("--model", "model_ref", default=None,
              help="Model file or MLflow URI the log's records must come from (default: the category's champion).")
@click.option("--no-event", is_flag=True, help="Do not emit the Prefect drift event.")
@with_params
@fail_cleanly
def monitor(params: Params, category: str, model_ref: str | None, no_event: bool) -> None:
    """One drift-monitoring pass over the prediction log (monitor.log): prints a JSON summary.

    Exit 0 within the limits (monitor.*), 3 on drift (and the event bridgenet.drift.detected
    is emitted to the Prefect API), 4 when the window holds too few records to judge.
    """
    from bridgenet.monitor.drift import DRIFT
    from bridgenet.monitor.watch import exit_code, monitor_category

    summary = monitor_category(params, category, model_ref)
    if summary["status"] == DRIFT and not no_event:
        from bridgenet.monitor.events import emit_drift_event

        event = emit_drift_event(summary)
        summary["event_id"] = None if event is None else str(event.id)
    click.echo(json.dumps(summary, indent=2))
    sys.exit(exit_code(summary["status"]))


@main.command("summary")
@with_params
def summary(params: Params) -> None:
    """Print the per-category metrics table and where to look next."""
    reports_dir = paths.reports_dir(params)
    table = paths.metrics_table(params)
    if not table.is_file():
        raise click.ClickException(f"{table} does not exist yet: run `make run` (or `dvc repro`) first")
    click.echo(table.read_text())
    t = params.tracking
    click.echo(f"Reports, curves and heatmap sheets: {reports_dir}/ (categories/<name>/heatmaps_<name>.png)")
    click.echo(f"MLflow UI: mlflow ui --backend-store-uri {t.uri} --host {t.host} --port {t.ui_port}")
    click.echo(f"Registered models: {params.registry.prefix}-<category>, aliases "
               f"@{params.registry.champion_alias} and @{params.registry.challenger_alias}")
    click.echo("Score a sample: bridgenet predict --model models:/"
               f"{params.registry.prefix}-<category>@{params.registry.champion_alias} --rgb A.png --xyz A.tiff")


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
