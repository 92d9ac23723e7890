"""Serving benchmark: one-sample CLI predict (start-up included), folder predict, REST.

    python -m bench.serving [--model models/bagel/model.pt] [--repeats 5] [--out bench/results]

Renders a small synthetic category at the default size (400 x 400, as params.yaml's
``synth`` draws it) under ``bench/work/serving`` and, without ``--model``, trains a
2-epoch model on it (speed does not depend on how well a model is trained). Then:

- ``bridgenet predict --rgb --xyz`` of one sample, as a fresh process each time
  (``--repeats``): wall seconds, median and range, start-up and model load included,
  with ``model.pt`` and with its TorchScript export (which loads without timm);
- folder predict over ``--folder-samples`` pairs (160: the test split's 40 four times),
  CSV only and with heatmaps and masks, each ``--folder-repeats`` times in turn (median):
  samples per second as a fresh ``bridgenet predict --folder`` (start-up and model load
  included) and once started (``predict_folder`` in this process); ``--workers`` sets
  ``predict.workers``;

- REST: the model saved as the pyfunc that registration logs, served by ``mlflow models
  serve --workers 1`` on 127.0.0.1, loaded by ``--requests`` requests (default 200) from
  ``--clients`` (default 4) concurrent clients, each one sample of 400 x 400 sent as its
  files (base64 PNG and TIFF); latency p50/p95/max, errors, request size against the files'
  size; before that 50 requests from one client (a request's own latency); and one
  request in the tensor form for comparison;

and writes ``--out/serving-cpu.json``. ``--log on`` (default) measures with the prediction
log written (``monitor.log`` under the work folder, as the product runs), ``off`` without it,
``both`` the folder rate and the REST latency each way (keys ``log_on`` / ``log_off``).
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time
from datetime import date
from pathlib import Path
from typing import Any

# Before bench.common, which imports torch: torch reads it once, as `bridgenet predict` sets it
# (bridgenet.predict.predict_threads).
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

from bench.common import PARAMS, REPO, RESULTS, portable_command, portable_path
from bench.results import write_results

WORK = REPO / "bench" / "work" / "serving"
CATEGORY = "bagel"


def data_overrides(work: Path) -> list[str]:
    return [f"synth.out={work / 'data'}", f"data.root={work / 'data'}", f"data.cache_dir={work / 'cache'}",
            f"synth.categories=[{CATEGORY}]", f"data.categories=[{CATEGORY}]", "synth.preview=false",
            f"train.models_dir={work / 'models'}", "train.epochs=2", "train.device=cpu"]


def prepare(work: Path, model: Path | None) -> Path:
    """The rendered category and a model file (``model``, or one trained here)."""
    from bridgenet.config import load_params
    from bridgenet.data.synth.dataset import synthesize
    from bridgenet.preprocess import run_preprocess
    from bridgenet.train import train_category

    params = load_params(PARAMS, data_overrides(work))
    if not (work / "data" / CATEGORY / "test").is_dir():
        synthesize(params.synth, Path(params.synth.out))
    if model is not None:
        return model
    trained = work / "models" / CATEGORY / "model.pt"
    if not trained.is_file():
        run_preprocess(params)
        train_category(params, CATEGORY)
    return trained


def bridgenet(*args: str) -> tuple[float, subprocess.CompletedProcess[str]]:
    """Run the installed CLI as a fresh process; wall seconds and the result."""
    command = [str(Path(sys.executable).parent / "bridgenet"), *args]
    start = time.perf_counter()
    done = subprocess.run(command, capture_output=True, text=True, check=False)
    wall = time.perf_counter() - start
    if done.returncode != 0:
        raise SystemExit(f"{' '.join(command)} failed ({done.returncode}):\n{done.stderr[-2000:]}")
    return wall, done


def summary(values: list[float]) -> dict[str, float]:
    return {"median": statistics.median(values), "min": min(values), "max": max(values), "n": len(values)}


LOG_MODES = {"on": ("on",), "off": ("off",), "both": ("on", "off")}


def log_args(mode: str, work: Path) -> list[str]:
    """predict's arguments for the prediction log on (a file under ``work``) or off."""
    return ["--set", f"monitor.log={work / 'predictions.sqlite'}"] if mode == "on" else ["--no-log"]


def with_log(model: Path, mode: str, work: Path) -> Path:
    """A copy of ``model`` whose stored ``monitor.log`` (what the served model writes) is on or off."""
    from bridgenet.config import apply_overrides, params_from_dict
    from bridgenet.model.io import load_model, save_model

    loaded = load_model(model)
    target = "" if mode == "off" else str(work / "served-predictions.sqlite")
    params = params_from_dict(apply_overrides(loaded.params.to_dict(), [f"monitor.log={target!r}"]))
    path = work / f"model-log-{mode}.pt"
    save_model(loaded.with_meta(params=params), path)
    return path


def measure_cli(model: Path, test: Path, repeats: int, work: Path, log: str = "on") -> dict[str, Any]:
    """One-sample predict as a fresh process: with model.pt (which carries its traced graph), with
    its TorchScript export, and with a copy of model.pt without the graph (the network is built:
    timm and torchvision imported)."""
    from bridgenet.model.io import GRAPH_KEY, atomic_save, read_checkpoint

    rgb = min((test / "good" / "rgb").glob("*.png"))
    xyz = test / "good" / "xyz" / f"{rgb.stem}.tiff"
    scripted = work / "model.ts"
    bridgenet("export", "--model", str(model), "--format", "torchscript", "--out", str(scripted))
    payload = read_checkpoint(model)
    payload.pop(GRAPH_KEY, None)
    without_graph = work / "model-without-graph.pt"
    atomic_save(payload, without_graph)
    out: dict[str, Any] = {"sample": str(rgb.relative_to(test)),
                           "files_bytes": rgb.stat().st_size + xyz.stat().st_size,
                           "model_pt_bytes": model.stat().st_size}
    for label, path in (("model_pt", model), ("torchscript", scripted), ("model_pt_built_network", without_graph)):
        runs = [bridgenet("predict", "--model", str(path), "--rgb", str(rgb), "--xyz", str(xyz), *log_args(log, work))
                for _ in range(repeats)]
        out[f"one_sample_wall_s_{label}"] = summary([wall for wall, _ in runs])
        out[f"score_{label}"] = json.loads(runs[0][1].stdout.strip().splitlines()[-1])["score"]
    return out


def line_folder(test: Path, work: Path, samples: int) -> Path:
    """A folder of ``samples`` pairs, the test split's over and over (hard links where the file
    system allows, else copies): long enough that a folder's rate is not its start-up's."""
    import shutil

    line = work / f"line-{samples}"
    pairs = sorted(test.glob("*/rgb/*.png"))
    if len(list(line.glob("*/*/rgb/*.png"))) == samples:
        return line
    shutil.rmtree(line, ignore_errors=True)
    for i in range(samples):
        rgb = pairs[i % len(pairs)]
        xyz = rgb.parent.parent / "xyz" / f"{rgb.stem}.tiff"
        copy = line / f"round{i // len(pairs):03d}" / rgb.parent.parent.name
        for source, target in ((rgb, copy / "rgb" / rgb.name), (xyz, copy / "xyz" / xyz.name)):
            target.parent.mkdir(parents=True, exist_ok=True)
            try:
                os.link(source, target)
            except OSError:
                shutil.copyfile(source, target)
    return line


FOLDER_MODES = (("csv_only", ["--no-heatmaps"]), ("with_pictures", []))


def measure_folder(model: Path, test: Path, work: Path, logs: tuple[str, ...] = ("on",), samples: int = 160,
                   repeats: int = 3, workers: int = 0) -> dict[str, Any]:
    """Folder predict's rate (samples/s, median of ``repeats`` runs of each mode in turn) with and
    without pictures over a folder of ``samples`` pairs, for each prediction-log mode in ``logs``
    (labels get a ``_log_off`` suffix without the log, as do all of them with ``--log both``):
    ``samples_per_s`` as a fresh ``bridgenet predict --folder`` (start-up and model load included)
    and ``scoring_samples_per_s``, :func:`bridgenet.batch_predict.predict_folder` in this process
    (model load included, no start-up)."""
    from bridgenet.batch_predict import predict_folder
    from bridgenet.predict import default_workers, find_pairs, predict_threads

    line = line_folder(test, work, samples)
    pairs = find_pairs(line)
    workers_set = ["--set", f"predict.workers={workers}"]
    out: dict[str, Any] = {"samples": samples, "repeats": repeats, "workers": workers or default_workers(),
                           "torch_threads": predict_threads()}
    for log in logs:
        suffix = "" if logs == ("on",) else f"_log_{log}"
        runs: dict[str, dict[str, list[float]]] = {label: {"cli": [], "in_process": []} for label, _ in FOLDER_MODES}
        for _ in range(repeats):
            for label, extra in FOLDER_MODES:
                target = work / f"folder_{label}{suffix}"
                wall, done = bridgenet("predict", "--model", str(model), "--folder", str(line), "--out", str(target),
                                       *extra, *log_args(log, work), *workers_set)
                report = json.loads(done.stdout.strip().splitlines()[-1])
                assert report["samples"] == samples and report["errors"] == 0, report
                runs[label]["cli"].append(samples / wall)
                start = time.perf_counter()
                _, errors = predict_folder(model, pairs, target, heatmaps=not extra, progress=False, workers=workers,
                                           log=work / "predictions.sqlite" if log == "on" else None)
                assert errors == 0
                runs[label]["in_process"].append(samples / (time.perf_counter() - start))
        for label, rates in runs.items():
            out[f"{label}{suffix}"] = {"samples_per_s": summary(rates["cli"]),
                                       "scoring_samples_per_s": summary(rates["in_process"])}
            print(f"folder predict, {label}{suffix}: {statistics.median(rates['cli']):.1f} samples/s as a command "
                  f"(start-up included), {statistics.median(rates['in_process']):.1f} once started; "
                  f"{samples} samples, median of {repeats}, {out['workers']} worker(s), "
                  f"{out['torch_threads']} torch thread(s)", file=sys.stderr)
    return out


def save_pyfunc(model: Path, work: Path) -> Path:
    """The model as registration logs it (code, artifact, signature, requirements), saved locally."""
    import shutil

    import mlflow

    from bridgenet.serving.spec import PYFUNC_CODE, model_signature, pip_requirements
    from bridgenet.tracking.pyfunc import MODEL_ARTIFACT

    target = work / "pyfunc"
    shutil.rmtree(target, ignore_errors=True)
    mlflow.pyfunc.save_model(str(target), python_model=str(PYFUNC_CODE), artifacts={MODEL_ARTIFACT: str(model)},
                             signature=model_signature(), pip_requirements=pip_requirements())
    return target


def percentiles(values: list[float]) -> dict[str, float]:
    import numpy as np

    return {"p50": float(np.percentile(values, 50)), "p95": float(np.percentile(values, 95)),
            "max": max(values), "n": len(values)}


def measure_rest(model: Path, test: Path, work: Path, n_requests: int, clients: int) -> dict[str, Any]:
    import base64
    import socket
    from concurrent.futures import ThreadPoolExecutor

    import requests

    from bridgenet.data.samples import read_rgb, read_xyz

    served = save_pyfunc(model, work)
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    env = {**os.environ, "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ.get('PATH', '')}"}
    server = subprocess.Popen(
        [sys.executable, "-m", "mlflow", "models", "serve", "-m", str(served), "--env-manager", "local",
         "--host", "127.0.0.1", "--port", str(port), "--workers", "1"],
        env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.time() + 180
        while True:
            try:
                if requests.get(f"{url}/ping", timeout=2).status_code == 200:
                    break
            except requests.ConnectionError:
                pass
            if time.time() > deadline or server.poll() is not None:
                raise SystemExit("the scoring server did not come up")
            time.sleep(0.5)
        pairs = [(p, p.parent.parent / "xyz" / f"{p.stem}.tiff") for p in sorted(test.glob("*/rgb/*.png"))]
        bodies = [json.dumps({"inputs": {"rgb_png": [base64.b64encode(r.read_bytes()).decode()],
                                         "xyz_tiff": [base64.b64encode(x.read_bytes()).decode()]}})
                  for r, x in pairs]
        file_bytes = [r.stat().st_size + x.stat().st_size for r, x in pairs]

        def post(i: int) -> tuple[float, int]:
            with requests.Session() as session:
                start = time.perf_counter()
                answer = session.post(f"{url}/invocations", data=bodies[i % len(bodies)],
                                      headers={"Content-Type": "application/json"}, timeout=120)
                return time.perf_counter() - start, answer.status_code

        post(0)  # warm-up (first request loads lazily imported code)
        alone = [post(i) for i in range(50)]  # one client: a request's own latency
        start = time.perf_counter()
        with ThreadPoolExecutor(clients) as pool:
            done = list(pool.map(post, range(n_requests)))
        wall = time.perf_counter() - start
        latencies = [t for t, code in done if code == 200]
        rgb, xyz = read_rgb(pairs[0][0]), read_xyz(pairs[0][1])
        tensor_body = json.dumps({"inputs": {"rgb": rgb[None].tolist(), "xyz": xyz[None].tolist()}})
        tensor_start = time.perf_counter()
        tensor = requests.post(f"{url}/invocations", data=tensor_body,
                               headers={"Content-Type": "application/json"}, timeout=120)
        tensor_s = time.perf_counter() - tensor_start
    finally:
        os.killpg(server.pid, 15)
        server.wait(timeout=30)
    return {
        "requests": n_requests, "clients": clients, "errors": sum(code != 200 for _, code in done),
        "latency_s": percentiles(latencies), "throughput_per_s": n_requests / wall,
        "one_client": {"latency_s": percentiles([t for t, code in alone if code == 200]),
                       "errors": sum(code != 200 for _, code in alone)},
        "request_bytes_median": statistics.median(len(b) for b in bodies),
        "files_bytes_median": statistics.median(file_bytes),
        "request_to_files_ratio": statistics.median(len(b) / f for b, f in zip(bodies, file_bytes)),
        "image_side": list(rgb.shape[:2]),
        "tensor_request": {"bytes": len(tensor_body), "seconds": tensor_s, "status": tensor.status_code},
    }


def main() -> None:
    parser = argparse.ArgumentParser(prog="python -m bench.serving", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", type=Path, default=None, help="model.pt to serve (default: train one here)")
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--requests", type=int, default=200)
    parser.add_argument("--clients", type=int, default=4)
    parser.add_argument("--no-rest", action="store_true")
    parser.add_argument("--no-cli", action="store_true", help="skip the one-sample predicts")
    parser.add_argument("--folder-samples", type=int, default=160, help="pairs in the folder predict's folder")
    parser.add_argument("--folder-repeats", type=int, default=3, help="runs of each folder mode (median)")
    parser.add_argument("--workers", type=int, default=0, help="predict.workers (0: half the cores)")
    parser.add_argument("--no-folder", action="store_true", help="skip folder predict")
    parser.add_argument("--log", choices=sorted(LOG_MODES), default="on",
                        help="prediction log written (on), not (off), or each way (both)")
    parser.add_argument("--work", type=Path, default=WORK)
    parser.add_argument("--out", type=Path, default=RESULTS)
    args = parser.parse_args()
    work = args.work.resolve()
    model = prepare(work, args.model)
    test = work / "data" / CATEGORY / "test"
    result: dict[str, Any] = {
        "machine": {"cores": os.cpu_count(), "date": date.today().isoformat(),
                    "command": portable_command("serving", sys.argv[1:],
                                                {"--model": "MODEL", "--work": "WORK", "--out": "OUT"})},
        "model": portable_path(model.resolve(), {"WORK": work}),
        "log": args.log,
    }
    if not args.no_folder:
        result["folder"] = measure_folder(model, test, work, LOG_MODES[args.log], args.folder_samples,
                                          args.folder_repeats, args.workers)
    if not args.no_cli:
        result["cli"] = measure_cli(model, test, args.repeats, work, LOG_MODES[args.log][0])
    if not args.no_rest:
        rest = {log: measure_rest(with_log(model, log, work), test, work, args.requests, args.clients)
                for log in LOG_MODES[args.log]}
        result["rest"] = rest["on"] if args.log == "on" else {f"log_{k}": v for k, v in rest.items()}
    print(json.dumps(result, indent=2))
    write_results(args.out / "serving-cpu.json", result)


if __name__ == "__main__":
    main()
