"""Content hashes of files and folders, cached so that large files (7B weight shards) are read once.

A file's sha256 is cached under its absolute path, keyed by its size and modification time
(``st_mtime_ns``): a file rewritten in place gets a new mtime and is hashed again. The cache is one
JSON file, ``~/.cache/mmcal/file_hashes.json`` (``MMCAL_HASH_CACHE`` names another file); it is
rewritten atomically and merged with what other processes wrote meanwhile, so parallel jobs only
ever lose cache entries, never corrupt them.
"""

from __future__ import annotations

import hashlib
import json
import os
import tempfile
from pathlib import Path

HASH_CACHE_ENV = "MMCAL_HASH_CACHE"
_CHUNK = 1 << 24


def hash_cache_path() -> Path:
    return Path(os.environ.get(HASH_CACHE_ENV) or Path.home() / ".cache" / "mmcal" / "file_hashes.json")


def _read_cache(path: Path) -> dict:
    try:
        data = json.loads(path.read_text())
    except (OSError, ValueError):  # no cache yet, or a damaged one: hashes are recomputed
        return {}
    return data if isinstance(data, dict) else {}


def _write_cache(path: Path, new: dict) -> None:
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        merged = _read_cache(path) | new
        fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=path.name, suffix=".tmp")
        with os.fdopen(fd, "w") as fh:
            json.dump(merged, fh)
        os.replace(tmp, path)
    except OSError:  # a read-only home: hashing still works, it is just not remembered
        pass


def _sha256_of(path: Path) -> str:
    h = hashlib.sha256()
    with path.open("rb") as fh:
        while block := fh.read(_CHUNK):
            h.update(block)
    return h.hexdigest()


def _cached_hashes(files: list[Path]) -> list[str]:
    cache_file = hash_cache_path()
    cache = _read_cache(cache_file)
    new, out = {}, []
    for f in files:
        st = f.stat()
        key = str(f.resolve())
        entry = cache.get(key)
        if isinstance(entry, dict) and entry.get("size") == st.st_size and entry.get("mtime_ns") == st.st_mtime_ns:
            out.append(entry["sha256"])
            continue
        digest = _sha256_of(f)
        new[key] = {"size": st.st_size, "mtime_ns": st.st_mtime_ns, "sha256": digest}
        out.append(digest)
    if new:
        _write_cache(cache_file, new)
    return out


def file_sha256(path: str | Path) -> str:
    """sha256 (hex) of a file's bytes, cached by (absolute path, size, mtime)."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"cannot hash {path}: not a file")
    return _cached_hashes([path])[0]


def tree_files(folder: str | Path) -> list[Path]:
    """Every file under ``folder``, sorted; hidden files and folders (``.cache``, ``.git``, Snakemake's
    ``.snakemake_timestamp`` marker written into folder outputs after the job) are not content."""
    folder = Path(folder)
    return sorted(
        p
        for p in folder.rglob("*")
        if p.is_file() and not any(part.startswith(".") for part in p.relative_to(folder).parts)
    )


def tree_sha256(folder: str | Path) -> str:
    """sha256 over a folder's files: each file's relative path and content hash, in sorted order.

    Renaming, adding, removing or changing any file changes it; where the folder lives does not."""
    folder = Path(folder)
    if not folder.is_dir():
        raise NotADirectoryError(f"cannot hash {folder}: not a folder")
    files = tree_files(folder)
    h = hashlib.sha256()
    for f, digest in zip(files, _cached_hashes(files)):
        h.update(f"{f.relative_to(folder).as_posix()}\0{digest}\n".encode())
    return h.hexdigest()


def path_sha256(path: str | Path) -> str:
    """:func:`file_sha256` for a file, :func:`tree_sha256` for a folder."""
    return tree_sha256(path) if Path(path).is_dir() else file_sha256(path)
