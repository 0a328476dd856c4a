"""Writing a file so that a crash, a full disk or a killed job never leaves half of it under its final name.

The bytes go to a hidden temporary file in the same folder (same file system, so the rename is atomic; hidden,
so no glob of finished files — ``shard-*.parquet``, ``*.json``, ``*.tex`` — ever sees it), are flushed to disk
(fsync) and only then renamed over the final name; the folder is flushed too, so after a power loss the name
holds the old file or the complete new one, never a prefix of it. A write that fails (disk full, file too
large, read-only folder) removes the temporary file and raises :class:`~mmcal.errors.OutputError` naming the
file. A process killed mid-write leaves only its hidden ``.<name>.<pid>.tmp``, which no reader takes for the file.
"""

from __future__ import annotations

import contextlib
import os
from pathlib import Path
from typing import Callable

from mmcal.errors import OutputError


def temp_path(path: Path) -> Path:
    return path.with_name(f".{path.name}.{os.getpid()}.tmp")


def _fsync(path: Path, flags: int) -> None:
    fd = os.open(path, flags)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def write_atomically(path: str | Path, write: Callable[[Path], object], what: str = "file") -> Path:
    """Call ``write(tmp)`` to fill a temporary file, then put it in place as ``path``; ``what`` names the
    kind of file in the error (``"records file"``, ``"provenance record"``)."""
    path = Path(path)
    tmp = temp_path(path)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        write(tmp)
        _fsync(tmp, os.O_RDONLY)
        os.replace(tmp, path)
        _fsync(path.parent, os.O_RDONLY | os.O_DIRECTORY)
    except BaseException as exc:
        with contextlib.suppress(OSError):
            tmp.unlink(missing_ok=True)
        if isinstance(exc, OSError) and not isinstance(exc, OutputError):
            message = f"cannot write {what} {path}: {exc.strerror or exc}"
            raise OutputError.from_os_error(exc, message) from exc
        raise
    return path


def write_text_atomically(path: str | Path, text: str, what: str = "file") -> Path:
    return write_atomically(path, lambda tmp: tmp.write_text(text, encoding="utf-8"), what)
