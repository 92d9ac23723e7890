"""Screenshots of what a reviewer sees in the MLflow registry: a version's page and its model's page.

Starts ``mlflow server`` on a tracking store (a free port on 127.0.0.1), opens the pages in
headless Chromium and writes PNGs (palette-reduced, so that they stay small enough for the
README). With ``--demo DIR`` it first makes a small registry in DIR, as the tests do: a tiny
synthetic bagel set, a model trained twice (two seeds), each registered and gated, so that
version 2 is compared with the champion version 1.

    python scripts/registry_screenshots.py --demo /tmp/registry-demo --out docs
    python scripts/registry_screenshots.py --store sqlite:///mlflow.db --model bridgenet-bagel --version 3 --out docs

Needs Chromium (``apt-get install chromium``; ``make screenshots-deps``); the tests do not.
"""

from __future__ import annotations

import argparse
import logging
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import requests

LOGGER = logging.getLogger("registry_screenshots")
HOST = "127.0.0.1"
BROWSERS = ("chromium", "chromium-browser", "google-chrome", "google-chrome-stable")
MAX_BYTES = 400_000  # what a README picture may weigh


def demo_overrides(root: Path) -> list[str]:
    """A registry small enough to build in minutes on a laptop CPU (the tests' sizes)."""
    return [
        f"data.root={root / 'data'}", f"data.cache_dir={root / 'cache'}", "data.categories=[bagel]",
        "data.image_size=64", "model.embed_dim=64", "model.dsc_hidden=64", "train.epochs=3", "train.device=cpu",
        "eval.aupro_thresholds=200", "eval.heatmap_samples=2", f"eval.reports_dir={root / 'reports'}",
        f"tracking.uri=sqlite:///{root / 'mlflow.db'}", "tracking.create=true",
        "synth.image_size=96", "synth.n_train=8", "synth.n_validation=4", "synth.n_test_good=4",
        "synth.n_test_per_defect=2", "synth.categories=[bagel]", "synth.preview=false",
        "promotion.min_image_auroc=0", "promotion.max_fpr_at_threshold=0.5", "promotion.min_recall_at_threshold=0",
    ]


def make_demo_registry(root: Path) -> str:
    """Build the demo registry under ``root``; its tracking URI."""
    from bridgenet import stages
    from bridgenet.config import apply_overrides, params_from_dict
    from bridgenet.data.synth.dataset import synthesize
    from bridgenet.preprocess import run_preprocess

    base = demo_overrides(root)
    params = params_from_dict(apply_overrides({}, base), source="registry_screenshots demo")
    synthesize(params.synth, root / "data", workers=1)
    run_preprocess(params)
    for seed in (42, 7):
        run = stages.resolve(params_from_dict(apply_overrides({}, [*base, f"train.seed={seed}",
                                                                   f"train.models_dir={root / f'models_{seed}'}"])),
                             "bagel")
        stages.train(run)
        stages.evaluate(run)
        stages.register(run, repo_root=Path(__file__).resolve().parents[1])
        LOGGER.info("seed %d: %s", seed, stages.promote(run)["decision"])
    return params.tracking.uri


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind((HOST, 0))
        return sock.getsockname()[1]


def start_server(store: str, port: int, log: Path) -> subprocess.Popen:
    """``mlflow server`` on ``store`` (artifacts where the store's experiments put them)."""
    command = [sys.executable, "-m", "mlflow", "server", "--backend-store-uri", store, "--host", HOST,
               "--port", str(port), "--workers", "1"]
    with log.open("wb") as out:
        process = subprocess.Popen(command, stdout=out, stderr=subprocess.STDOUT, start_new_session=True)
    deadline = time.monotonic() + 180
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(f"mlflow server exited with {process.returncode}:\n{log.read_text()[-3000:]}")
        try:
            if requests.get(f"http://{HOST}:{port}/health", timeout=2).status_code == 200:
                return process
        except requests.RequestException:
            pass
        time.sleep(0.5)
    stop_server(process)
    raise TimeoutError(f"mlflow server on port {port} did not answer within 180 s; see {log}")


def stop_server(process: subprocess.Popen) -> None:
    try:
        os.killpg(process.pid, signal.SIGTERM)
        process.wait(timeout=20)
    except ProcessLookupError:
        pass
    except subprocess.TimeoutExpired:
        os.killpg(process.pid, signal.SIGKILL)
        process.wait(timeout=20)


def browser() -> str:
    for name in BROWSERS:
        found = shutil.which(name)
        if found:
            return found
    raise FileNotFoundError(f"no headless browser found (looked for {', '.join(BROWSERS)}); "
                            "install one: apt-get install -y chromium")


def screenshot(url: str, out: Path, width: int, height: int, wait_ms: int) -> Path:
    """``url`` rendered by headless Chromium at ``width`` x ``height``, saved as a palette PNG at ``out``."""
    from PIL import Image

    with tempfile.TemporaryDirectory(prefix="registry-shot-") as tmp:
        raw = Path(tmp) / "raw.png"
        command = [browser(), "--headless=new", "--no-sandbox", "--disable-gpu", "--hide-scrollbars",
                   f"--user-data-dir={Path(tmp) / 'profile'}", f"--window-size={width},{height}",
                   f"--virtual-time-budget={wait_ms}", f"--screenshot={raw}", url]
        done = subprocess.run(command, capture_output=True, text=True, timeout=300, check=False)
        if not raw.is_file():
            raise RuntimeError(f"chromium wrote no screenshot of {url} (exit {done.returncode}): "
                               f"{done.stderr[-2000:]}")
        image = Image.open(raw).convert("RGB")
    out.parent.mkdir(parents=True, exist_ok=True)
    colours = 256
    while True:
        image.quantize(colours, method=Image.Quantize.MEDIANCUT).save(out, optimize=True)
        if out.stat().st_size <= MAX_BYTES or colours <= 32:
            return out
        colours //= 2


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    source = parser.add_mutually_exclusive_group(required=True)
    source.add_argument("--store", help="tracking store the server reads (sqlite:///mlflow.db)")
    source.add_argument("--demo", type=Path, help="build a small demo registry in this folder first")
    parser.add_argument("--model", default="bridgenet-bagel", help="registered model name")
    parser.add_argument("--version", default="2", help="version whose page is captured")
    parser.add_argument("--out", type=Path, default=Path("docs"), help="folder for the PNGs")
    parser.add_argument("--width", type=int, default=1400)
    parser.add_argument("--height", type=int, default=3000, help="version page height (the model page: 1000)")
    parser.add_argument("--wait-ms", type=int, default=20000, help="virtual time the page gets to load")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")

    store = args.store or make_demo_registry(args.demo.resolve())
    port = free_port()
    log = Path(tempfile.gettempdir()) / f"registry-screenshots-server-{port}.log"
    server = start_server(store, port, log)
    try:
        base = f"http://{HOST}:{port}"
        pages = {
            f"registry_version_{args.model}_v{args.version}.png":
                (f"{base}/#/models/{args.model}/versions/{args.version}", args.height),
            f"registry_model_{args.model}.png": (f"{base}/#/models/{args.model}", 1000),
        }
        for name, (url, height) in pages.items():
            path = screenshot(url, args.out / name, args.width, height, args.wait_ms)
            print(f"{path} ({path.stat().st_size // 1000} kB) <- {url}")
    finally:
        stop_server(server)


if __name__ == "__main__":
    main()
