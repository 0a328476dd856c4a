"""Content hashes of files and folders, cached so that large files (7B weight shards) are read once.

A file's sha256 is cached under its absolute path, keyed by its size and modification time
(``st_mtime_ns``): a file rewritten in place gets a new mtime and is hashed again. The cache is one
append-only JSON-lines file, ``~/.cache/mmcal/file_hashes.jsonl`` (``MMCAL_HASH_CACHE`` names another
file): each newly hashed file adds one line, written with a single ``O_APPEND`` write, so parallel jobs
never overwrite each other's entries, and a process reads the file once and afterwards only what
others appended (a lookup costs a dict access, not a parse of the whole cache).
"""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path

HASH_CACHE_ENV = "MMCAL_HASH_CACHE"
_CHUNK = 1 << 24


def hash_cache_path() -> Path:
    return Path(os.environ.get(HASH_CACHE_ENV) or Path.home() / ".cache" / "mmcal" / "file_hashes.jsonl")


def _as_lines(entries: dict) -> bytes:
    """Cache entries as the file holds them: one JSON ``[path, entry]`` per line."""
    return "".join(json.dumps([k, v]) + "\n" for k, v in entries.items()).encode()


class _Cache:
    """This process's view of one cache file: the entries read so far and where reading stopped."""

    def __init__(self, path: Path):
        self.path, self.entries, self.offset, self.inode, self.lines = path, {}, 0, None, 0

    def refresh(self) -> None:
        """Read what was appended since the last read (everything, if the file was replaced)."""
        try:
            with self.path.open("rb") as fh:
                inode = os.fstat(fh.fileno()).st_ino
                if inode != self.inode:
                    self.entries, self.offset, self.inode, self.lines = {}, 0, inode, 0
                fh.seek(self.offset)
                tail = fh.read()
        except OSError:  # no cache yet: every hash is computed
            return
        complete = tail[: tail.rfind(b"\n") + 1]  # a line still being written is read next time
        self.offset += len(complete)
        for line in complete.splitlines():
            self.lines += 1
            try:
                key, entry = json.loads(line)
            except (ValueError, TypeError):  # a damaged line only costs that file a re-hash
                continue
            self.entries[key] = entry

    def append(self, new: dict) -> None:
        data = _as_lines(new)
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            fd = os.open(self.path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o600)
            try:
                os.write(fd, data)
            finally:
                os.close(fd)
        except OSError:  # a read-only home: hashing still works, it is just not remembered
            pass
        self.entries.update(new)
        self.lines += len(new)
        if self.lines > 2 * len(self.entries) + 10_000:
            self.compact()

    def compact(self) -> None:
        """Rewrite the file with one line per path (re-hashed files leave superseded lines behind). A
        process appending to the old file meanwhile loses that entry: a later re-hash, never a wrong hash."""
        data = _as_lines(self.entries)
        tmp = self.path.with_name(f"{self.path.name}.{os.getpid()}.tmp")
        try:
            tmp.write_bytes(data)
            os.replace(tmp, self.path)
            self.inode, self.offset, self.lines = self.path.stat().st_ino, len(data), len(self.entries)
        except OSError:
            tmp.unlink(missing_ok=True)


_caches: dict[Path, _Cache] = {}


def _sha256_of(path: Path) -> str:
    h = hashlib.sha256()
    with path.open("rb") as fh:
        while block := fh.read(_CHUNK):
            h.update(block)
    return h.hexdigest()


def _cached_hashes(files: list[Path]) -> list[str]:
    cache_file = hash_cache_path()
    cache = _caches.setdefault(cache_file, _Cache(cache_file))
    cache.refresh()
    new, out = {}, []
    for f in files:
        st = f.stat()
        key = str(f.resolve())
        entry = cache.entries.get(key)
        if isinstance(entry, dict) and entry.get("size") == st.st_size and entry.get("mtime_ns") == st.st_mtime_ns:
            out.append(entry["sha256"])
            continue
        digest = _sha256_of(f)
        new[key] = {"size": st.st_size, "mtime_ns": st.st_mtime_ns, "sha256": digest}
        out.append(digest)
    if new:
        cache.append(new)
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
