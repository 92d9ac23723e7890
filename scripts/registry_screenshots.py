"""Screenshots of what a reviewer sees in the MLflow registry: a version's page and its model's page.

Starts ``mlflow server`` on a tracking store (a free port on 127.0.0.1), opens the pages in
headless Chromium and writes PNGs (palette-reduced, so that they stay small enough for the
README), and says how many images each page shows and which did not load. With ``--demo DIR`` it first makes a small registry in DIR, as the tests do: a tiny
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
                            "install one: apt-get install -y chromium (make screenshots-deps)")


class Page:
    """One headless Chromium tab driven over the DevTools protocol (``websockets``, a Prefect dependency)."""

    def __init__(self, width: int, height: int, profile: Path) -> None:
        self.process = subprocess.Popen(
            [browser(), "--headless=new", "--no-sandbox", "--disable-gpu", "--hide-scrollbars",
             "--remote-debugging-port=0", f"--user-data-dir={profile}", "about:blank"],
            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True, start_new_session=True)
        endpoint = None
        for line in self.process.stderr:  # "DevTools listening on ws://127.0.0.1:PORT/devtools/browser/ID"
            if line.startswith("DevTools listening on "):
                endpoint = line.split()[-1]
                break
        if endpoint is None:
            raise RuntimeError(f"chromium exited ({self.process.wait()}) without a DevTools endpoint")
        port = endpoint.split(":")[2].split("/")[0]
        tab = next(t for t in requests.get(f"http://{HOST}:{port}/json/list", timeout=10).json()
                   if t["type"] == "page")
        from websockets.sync.client import connect

        self.socket = connect(tab["webSocketDebuggerUrl"], max_size=None)
        self.calls = 0
        self.call("Emulation.setDeviceMetricsOverride",
                  {"width": width, "height": height, "deviceScaleFactor": 1, "mobile": False})

    def call(self, method: str, params: dict | None = None) -> dict:
        import json

        self.calls += 1
        self.socket.send(json.dumps({"id": self.calls, "method": method, "params": params or {}}))
        while True:  # events come in between; the answer carries our id
            message = json.loads(self.socket.recv(timeout=120))
            if message.get("id") == self.calls:
                if "error" in message:
                    raise RuntimeError(f"{method}: {message['error']}")
                return message.get("result", {})

    def evaluate(self, expression: str) -> object:
        return self.call("Runtime.evaluate", {"expression": expression, "returnByValue": True})["result"].get("value")

    def wait_for(self, expression: str, timeout: float) -> bool:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.evaluate(expression):
                return True
            time.sleep(0.5)
        return False

    def close(self) -> None:
        self.socket.close()
        try:
            os.killpg(self.process.pid, signal.SIGTERM)
            self.process.wait(timeout=20)
        except (ProcessLookupError, subprocess.TimeoutExpired):
            os.killpg(self.process.pid, signal.SIGKILL)


# The UI opens its assistant panel beside every page on a local server; a reviewer closes it.
CLOSE_ASSISTANT = ("document.querySelector('[data-component-id=\"mlflow.assistant.chat_panel.close\"]')"
                   "?.click() ?? 'no panel'")
IMAGES_LOADED = "Array.from(document.images).every(i => i.complete)"
BROKEN_IMAGES = ("Array.from(document.images).filter(i => i.complete && i.naturalWidth === 0)"
                 ".map(i => i.getAttribute('src'))")


def screenshot(url: str, out: Path, width: int, height: int, ready_text: str, timeout: float) -> dict:
    """``url`` in headless Chromium (``width`` x ``height``) once ``ready_text`` shows and its images
    loaded, saved as a palette PNG at ``out``; returns what was checked (images, broken ones)."""
    import base64
    import io

    from PIL import Image

    with tempfile.TemporaryDirectory(prefix="registry-shot-") as tmp:
        page = Page(width, height, Path(tmp) / "profile")
        try:
            page.call("Page.enable")
            page.call("Page.navigate", {"url": url})
            if not page.wait_for(f"document.body && document.body.innerText.includes({ready_text!r})", timeout):
                raise TimeoutError(f"{url}: {ready_text!r} did not show within {timeout} s")
            page.evaluate(CLOSE_ASSISTANT)
            page.wait_for(IMAGES_LOADED, timeout)
            time.sleep(1.0)  # layout settles once the panel is gone
            checked = {"images": page.evaluate("document.images.length"), "broken": page.evaluate(BROKEN_IMAGES)}
            data = page.call("Page.captureScreenshot", {"format": "png"})["data"]
        finally:
            page.close()
    image = Image.open(io.BytesIO(base64.b64decode(data))).convert("RGB")
    out.parent.mkdir(parents=True, exist_ok=True)
    colours = 256
    while True:
        image.quantize(colours, method=Image.Quantize.MEDIANCUT).save(out, optimize=True)
        if out.stat().st_size <= MAX_BYTES or colours <= 32:
            return checked
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
    parser.add_argument("--height", type=int, default=2300, help="version page height (the model page: 1300)")
    parser.add_argument("--timeout", type=float, default=120, help="seconds a page gets to load")
    parser.add_argument("--port", type=int, default=0,
                        help="server port (default: a free one; tracking.ui_port, 5000, makes the "
                             "absolute image links of model_card.md resolve too)")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")

    store = args.store or make_demo_registry(args.demo.resolve())
    port = args.port or free_port()
    log = Path(tempfile.gettempdir()) / f"registry-screenshots-server-{port}.log"
    server = start_server(store, port, log)
    try:
        base = f"http://{HOST}:{port}"
        pages = {
            f"registry_version_{args.model}_v{args.version}.png":
                (f"{base}/#/models/{args.model}/versions/{args.version}", args.height, "Model card"),
            f"registry_model_{args.model}.png": (f"{base}/#/models/{args.model}", 1300, "Version 1"),
        }
        for name, (url, height, ready) in pages.items():
            path = args.out / name
            checked = screenshot(url, path, args.width, height, ready, args.timeout)
            print(f"{path} ({path.stat().st_size // 1000} kB) <- {url}: {checked['images']} images, "
                  f"broken: {checked['broken'] or 'none'}")
    finally:
        stop_server(server)


if __name__ == "__main__":
    main()
