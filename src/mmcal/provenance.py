"""Provenance: which code, config and inputs produced an output."""

from __future__ import annotations

import datetime as _dt
import hashlib
import json
import subprocess
from pathlib import Path


def git_commit(cwd: str | Path = ".") -> str:
    """The repository's HEAD commit, with '+dirty' when the tree has uncommitted changes."""
    try:
        head = subprocess.run(
            ["git", "rev-parse", "--short=12", "HEAD"], cwd=cwd, capture_output=True, text=True, check=True
        ).stdout.strip()
        dirty = subprocess.run(
            ["git", "status", "--porcelain", "--untracked-files=no"], cwd=cwd, capture_output=True, text=True
        ).stdout.strip()
        return head + ("+dirty" if dirty else "")
    except (OSError, subprocess.CalledProcessError):
        return "unknown (not a git checkout)"


def config_hash(config: dict) -> str:
    blob = json.dumps(config, sort_keys=True, default=str).encode()
    return hashlib.sha256(blob).hexdigest()[:16]


def today() -> str:
    return _dt.date.today().isoformat()
