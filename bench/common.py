"""What the bench scripts share: places, names, the machine, and commands and paths fit to publish.

Published results (``bench/results``) name no path of the machine that made them: a
command line keeps its flags but its folders become placeholders (``ROOT``, ``WORK``,
``OUT``), and a file is named relative to the folder a flag gave.
"""

from __future__ import annotations

import os
import platform
import shlex
from collections.abc import Mapping, Sequence
from datetime import date
from pathlib import Path
from typing import Any

from bridgenet.data.families import FAMILIES  # the synthetic data's defect families
from bridgenet.metrics import METRIC_KEYS
from bridgenet.model.scorers import SCORERS

REPO = Path(__file__).resolve().parents[1]
PARAMS = REPO / "params.yaml"
RESULTS = REPO / "bench" / "results"

__all__ = ["FAMILIES", "PARAMS", "PEER", "REAL_METRICS", "REPO", "RESULTS", "SCORERS", "SCORING_KEYS",
           "SYNTH_METRICS", "apply_scoring", "bench_command", "cpu_model", "fmt", "machine_info",
           "portable_command", "portable_path"]

PEER = "PatchCore"  # anomalib's, fitted beside our models (bench.peers)
# The metrics (keys of bridgenet.metrics.METRIC_KEYS) each bench summarises.
SYNTH_METRICS = ("image_auroc", "pixel_auroc", "aupro_30", "aupro_1")
REAL_METRICS = ("image_auroc", "image_ap", "pixel_auroc", "aupro_30", "aupro_1")
_unknown = sorted({*SYNTH_METRICS, *REAL_METRICS} - set(METRIC_KEYS))
if _unknown:
    raise ImportError(f"bench metrics {_unknown} are not in bridgenet.metrics.METRIC_KEYS {METRIC_KEYS}")

# model keys that change how a trained model scores, not what training makes: a change to
# them scores the saved models again instead of training them again
SCORING_KEYS = ("scorer", "fusion_weight", "image_score", "memory_fusion", "map_smoothing_sigma", "map_guide_radius")


def apply_scoring(model: Any, params: Any) -> None:
    """Set the scoring keys of ``params`` (all of :data:`SCORING_KEYS` but ``scorer``) on a loaded model."""
    network = model.network
    network.fusion_weight = params.model.fusion_weight
    network.image_score = params.model.image_score
    network.memory_fusion = params.model.memory_fusion
    network.smoothing_sigma = params.model.map_smoothing_sigma
    network.guide_radius = params.model.map_guide_radius


def cpu_model() -> str:
    """The CPU's model name (``/proc/cpuinfo``), else what ``platform`` knows."""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def machine_info(command: str, **fields: Any) -> dict[str, Any]:
    """The ``machine`` block of a summary: CPU, cores, ``fields`` in order (torch, threads, ...),
    today's date and the command."""
    return {"cpu": cpu_model(), "cores": os.cpu_count(), **fields, "date": date.today().isoformat(),
            "command": command}


def bench_command(script: str, *words: str) -> str:
    """``python -m bench.<script> words...``, quoted for a shell."""
    return shlex.join(["python", "-m", f"bench.{script}", *words])


def portable_command(script: str, argv: Sequence[str], placeholders: Mapping[str, str | None],
                     dropped: Sequence[str] = ()) -> str:
    """The command line ``argv`` of ``python -m bench.<script>`` as it can be published.

    The value of each flag in ``placeholders`` becomes that placeholder (``--work /srv/w`` ->
    ``--work WORK``, ``--work=/srv/w`` -> ``--work=WORK``); a flag whose placeholder is None is
    left out with its value; the flags in ``dropped`` (no value) are left out.
    """
    words: list[str] = []
    pending: str | None = None  # the flag whose value comes next
    for word in argv:
        if pending is not None:
            flag, pending = pending, None
            if placeholders[flag] is not None:
                words.append(placeholders[flag])
            continue
        if word in dropped:
            continue
        flag, eq, _ = word.partition("=")
        if eq and flag in placeholders:
            if placeholders[flag] is not None:
                words.append(f"{flag}={placeholders[flag]}")
            continue
        if word in placeholders:
            pending = word
            if placeholders[word] is None:
                continue
        words.append(word)
    return bench_command(script, *words)


def portable_path(path: Path, roots: Mapping[str, Path], keep: int = 1) -> str:
    """``path`` relative to the first of ``roots`` that holds it, behind that root's name
    (``""``: no name), else its last ``keep`` parts."""
    for name, root in roots.items():
        if path.is_relative_to(root):
            relative = path.relative_to(root).as_posix()
            return f"{name}/{relative}" if name else relative
    return "/".join(path.parts[-keep:])


def fmt(cell: Mapping[str, float] | None, digits: int = 3) -> str:
    """A summary cell as ``mean ± std`` (``mean`` alone over one value, ``–`` for none)."""
    if not cell:
        return "–"
    mean = f"{cell['mean']:.{digits}f}"
    return f"{mean} ± {cell['std']:.{digits}f}" if cell["n"] > 1 else mean
