"""The code passes ruff with the project's configuration (pyproject.toml), as `make lint` runs it."""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]


def test_ruff_passes():
    # The environment's own ruff first: its version is the one pyproject.toml pins.
    binary = Path(sys.executable).parent / "ruff"
    binary = str(binary) if binary.exists() else shutil.which("ruff")
    if binary is None:
        pytest.fail("ruff is not installed (it comes with the dev extra)")
    result = subprocess.run([binary, "check", "bridgenet", "flows", "tests", "bench", "scripts"], cwd=REPO,
                            check=False, capture_output=True, text=True)
    assert result.returncode == 0, result.stdout + result.stderr
