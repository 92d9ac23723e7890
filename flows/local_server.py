"""Run a command against a local Prefect server started for it (``make run`` uses this).

    python -m flows.local_server -- dvc repro

Starts ``prefect server start`` on 127.0.0.1, waits until it answers, runs the
command with PREFECT_API_URL pointing at it, stops the server, and exits with
the command's exit code. One server for the whole pipeline instead of one
temporary server per DVC stage.
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path


def free_port(host: str = "127.0.0.1") -> int:
    with socket.socket() as sock:
        sock.bind((host, 0))
        return sock.getsockname()[1]


def wait_healthy(url: str, proc: subprocess.Popen, timeout_s: float = 180) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"prefect server exited with code {proc.returncode}; see .prefect-server.log")
        try:
            with urllib.request.urlopen(f"{url}/health", timeout=2):
                return
        except OSError:
            time.sleep(1)
    raise RuntimeError(f"prefect server at {url} did not answer within {timeout_s:.0f} s")


def main(argv: list[str]) -> int:
    command = argv[argv.index("--") + 1:] if "--" in argv else argv
    if not command:
        print(__doc__, file=sys.stderr)
        return 2
    host, port = "127.0.0.1", free_port()
    url = f"http://{host}:{port}/api"
    env = {**os.environ, "PREFECT_SERVER_ANALYTICS_ENABLED": "false"}
    with Path(".prefect-server.log").open("w") as log:
        server = subprocess.Popen(
            [sys.executable, "-m", "prefect", "server", "start", "--host", host, "--port", str(port)],
            stdout=log, stderr=subprocess.STDOUT, env=env, start_new_session=True,
        )
        try:
            wait_healthy(url, server)
            print(f"Prefect server at http://{host}:{port} (flow runs visible there while the pipeline runs)",
                  flush=True)
            return subprocess.call(command, env={**env, "PREFECT_API_URL": url})
        finally:
            os.killpg(server.pid, signal.SIGTERM)
            try:
                server.wait(timeout=30)
            except subprocess.TimeoutExpired:
                os.killpg(server.pid, signal.SIGKILL)

if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
