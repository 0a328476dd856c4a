"""Content hashes of files and folders, cached by (absolute path, size, mtime_ns).

The cache is one JSON file, ``${MMCAL_HASH_CACHE:-~/.cache/mmcal/file_hashes.json}``: a file whose
size and modification time are unchanged is not read again, so provenance of a job whose inputs
are large model folders costs a stat per file, not a re-hash.
"""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path

_CHUNK = 1 << 20
# Snakemake's marker in every directory output, written after the job: not part of the content.
IGNORED = {".snakemake_timestamp"}
_cache: dict | None = None
_cache_file: Path | None = None
_dirty = False


def cache_path() -> Path:
    return Path(os.environ.get("MMCAL_HASH_CACHE") or Path.home() / ".cache" / "mmcal" / "file_hashes.json")


def _load() -> dict:
    global _cache, _cache_file
    path = cache_path()
    if _cache is None or _cache_file != path:
        _cache_file = path
        try:
            _cache = json.loads(path.read_text())
        except (OSError, ValueError):
            _cache = {}  # no cache yet, or a torn one: hashes are recomputed, never trusted blindly
    return _cache


def _save() -> None:
    """Merge with what other processes wrote meanwhile, then replace the file atomically."""
    global _dirty
    if not _dirty or _cache_file is None:
        return
    try:
        on_disk = json.loads(_cache_file.read_text())
    except (OSError, ValueError):
        on_disk = {}
    on_disk.update(_cache)
    _cache_file.parent.mkdir(parents=True, exist_ok=True)
    tmp = _cache_file.with_name(f"{_cache_file.name}.{os.getpid()}.tmp")
    tmp.write_text(json.dumps(on_disk, sort_keys=True))
    tmp.replace(_cache_file)
    _dirty = False


def _file_sha256(path: Path, cache: dict) -> str:
    global _dirty
    path = path.resolve()
    st = path.stat()
    key = str(path)
    stamp = [st.st_size, st.st_mtime_ns]
    hit = cache.get(key)
    if hit and hit[:2] == stamp:
        return hit[2]
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        while chunk := fh.read(_CHUNK):
            h.update(chunk)
    digest = h.hexdigest()
    cache[key] = [*stamp, digest]
    _dirty = True
    return digest


def file_sha256(path: str | Path) -> str:
    """Hex SHA-256 of one file's bytes."""
    digest = _file_sha256(Path(path), _load())
    _save()
    return digest


def tree_sha256(folder: str | Path) -> str:
    """Hex SHA-256 over a folder's sorted relative file paths and their file hashes
    (Snakemake's ``.snakemake_timestamp`` marker left out)."""
    folder = Path(folder)
    cache = _load()
    h = hashlib.sha256()
    for path in sorted(p for p in folder.rglob("*") if p.is_file() and p.name not in IGNORED):
        rel = path.relative_to(folder).as_posix()
        h.update(f"{rel}\0{_file_sha256(path, cache)}\n".encode())
    _save()
    return h.hexdigest()


def path_sha256(path: str | Path) -> str:
    """:func:`file_sha256` for a file, :func:`tree_sha256` for a folder."""
    return tree_sha256(path) if Path(path).is_dir() else file_sha256(path)
