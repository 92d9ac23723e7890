"""What importing a module loads: evaluation of real scans must not pull in the renderer."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def loaded_after(code: str) -> set[str]:
    """The names in ``sys.modules`` after running ``code`` in a fresh interpreter (this checkout first)."""
    script = f"import json, sys\n{code}\nprint(json.dumps(sorted(sys.modules)))"
    done = subprocess.run([sys.executable, "-c", script], cwd=REPO, capture_output=True, text=True,
                          env={**os.environ, "PYTHONPATH": str(REPO)}, timeout=300, check=False)
    assert done.returncode == 0, done.stderr
    return set(json.loads(done.stdout.splitlines()[-1]))


def test_evaluate_does_not_load_open3d() -> None:
    # defect_families() reads the family table: it must come without the synthetic renderer
    loaded = loaded_after("import bridgenet.evaluate as e\n"
                          "assert e.defect_families(['good', 'dent', 'scratch', 'hole']) == "
                          "{'dent': 'geometric', 'scratch': 'both', 'hole': 'hole'}")
    assert "bridgenet.evaluate" in loaded
    assert "open3d" not in loaded
    assert not any(name.startswith("bridgenet.data.synth") for name in loaded)


def test_family_table_is_light() -> None:
    loaded = loaded_after("import bridgenet.data.families")
    assert "open3d" not in loaded and "numpy" not in loaded
