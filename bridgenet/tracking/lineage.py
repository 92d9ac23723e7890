"""Lineage: where a model came from (git commit, DVC md5 of its data, a digest of its category's folder).

The md5 values are read from ``dvc.lock`` (stage ``preprocess``: its dependency
``data.root`` and its output ``data.cache_dir``); without a ``dvc.lock`` a tag
says so instead of failing. DVC hashes the whole ``data.root``, the same for every
category; :func:`folder_digest` names one category's data.
"""

from __future__ import annotations

import hashlib
import os
import subprocess
from pathlib import Path

import yaml

from bridgenet.config import Params

PREPROCESS_STAGE = "preprocess"


def _git(repo_root: Path, *args: str) -> str:
    result = subprocess.run(
        ["git", "-C", str(repo_root), *args],
        capture_output=True,
        text=True,
        timeout=30,
        check=False,
    )
    if result.returncode != 0:
        raise RuntimeError(
            result.stderr.strip() or f"git {' '.join(args)} exited {result.returncode}"
        )
    return result.stdout


def _lock_key(repo_root: Path, path: str) -> str:
    """A path as dvc.lock writes it: relative to the repository root, POSIX, no trailing slash."""
    candidate = Path(path)
    if candidate.is_absolute():
        try:
            candidate = candidate.resolve().relative_to(repo_root.resolve())
        except ValueError:
            return candidate.as_posix().rstrip("/")
    return Path(os.path.normpath(candidate)).as_posix().rstrip("/")


def folder_digest(folder: Path | str) -> str:
    """sha256 over every file under ``folder``, in path order: its path relative to ``folder``,
    its size and its content. Raises FileNotFoundError naming a missing or empty folder."""
    folder = Path(folder)
    files = sorted(p for p in folder.rglob("*") if p.is_file()) if folder.is_dir() else []
    if not files:
        raise FileNotFoundError(f"data folder {folder} does not exist or holds no file")
    digest = hashlib.sha256()
    for path in files:
        digest.update(f"{path.relative_to(folder).as_posix()}\0{path.stat().st_size}\0".encode())
        with path.open("rb") as handle:
            for block in iter(lambda: handle.read(1 << 20), b""):
                digest.update(block)
    return digest.hexdigest()


def dvc_data_hashes(repo_root: Path, params: Params) -> dict[str, str]:
    """Tags with the md5 of ``data.root`` and ``data.cache_dir`` from ``dvc.lock``'s preprocess stage."""
    lock_path = Path(repo_root) / "dvc.lock"
    if not lock_path.is_file():
        return {
            "dvc.lock": f"absent (no dvc.lock in {Path(repo_root).resolve()}; data hashes unknown)"
        }
    try:
        lock = yaml.safe_load(lock_path.read_text()) or {}
    except yaml.YAMLError as exc:
        return {"dvc.lock": f"unreadable ({exc}); data hashes unknown"}
    stages = lock.get("stages") if isinstance(lock, dict) else None
    stage = stages.get(PREPROCESS_STAGE) if isinstance(stages, dict) else None
    if not isinstance(stage, dict):
        return {"dvc.lock": f"present, without a {PREPROCESS_STAGE!r} stage; data hashes unknown"}
    entries = {}
    for entry in [*(stage.get("deps") or []), *(stage.get("outs") or [])]:
        if isinstance(entry, dict) and "path" in entry:
            entries[str(entry["path"]).rstrip("/")] = entry
    tags = {"dvc.lock": "present"}
    for name, path in (("data_root", params.data.root), ("cache_dir", params.data.cache_dir)):
        key = _lock_key(Path(repo_root), path)
        entry = entries.get(key)
        tags[f"dvc.{name}.path"] = key
        tags[f"dvc.{name}.md5"] = (
            str(entry.get("md5") or entry.get("hash") or "no md5 recorded")
            if entry
            else f"not in dvc.lock stage {PREPROCESS_STAGE!r}"
        )
    return tags


def lineage_tags(repo_root: Path | str, params: Params) -> dict[str, str]:
    """Where a model came from: git commit and dirty flag, DVC md5 of its data (see :func:`dvc_data_hashes`)."""
    repo_root = Path(repo_root)
    tags: dict[str, str] = {}
    try:
        commit = _git(repo_root, "rev-parse", "HEAD").strip()
        dirty = bool(_git(repo_root, "status", "--porcelain").strip())
        tags.update(
            {
                "git.commit": commit,
                "git.dirty": str(dirty).lower(),
                "mlflow.source.git.commit": commit,
            }
        )
    except (OSError, RuntimeError, subprocess.TimeoutExpired) as exc:
        tags.update({"git.commit": f"unknown ({str(exc)[:200]})", "git.dirty": "unknown"})
    tags.update(dvc_data_hashes(repo_root, params))
    return tags
