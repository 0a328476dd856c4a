"""What a data set's release folder holds, checked against the config before anything is built from it.

A released data set (``datasets.<name>.release``) names the file to read (``path``) and the image folder
(``image_root``) relative to the release folder. Those names come from the config, not from the release
(the reference study's IDK release was never seen here), so right after the release is fetched (and again
when a data set is built from it) :func:`inspect_release` lists what the folder really holds and, when a
configured name is not there, fails naming the files it found and the config keys to set.
"""

from __future__ import annotations

import json
from collections import Counter
from pathlib import Path

from mmcal.errors import DataError

IMAGE_SUFFIXES = {".png", ".jpg", ".jpeg", ".gif", ".webp", ".bmp", ".tif", ".tiff"}
DATA_SUFFIXES = {".json", ".jsonl", ".csv", ".parquet", ".tsv"}
# which config key names a file and which a folder, per builder reading a release
LAYOUT_KEYS = {"path": "file", "image_root": "folder"}
_LISTED = 12  # entries shown per kind in an error message


def _describe_json(path: Path) -> str:
    """A short account of a JSON file: a list of records (and their keys) or an object's keys."""
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError, UnicodeDecodeError) as exc:
        return f"not readable as JSON ({type(exc).__name__})"
    if isinstance(data, list):
        keys = sorted({k for rec in data[:50] if isinstance(rec, dict) for k in rec})
        return f"a list of {len(data)} records with keys {keys}"
    if isinstance(data, dict):
        return f"an object with keys {sorted(data)[:10]}"
    return f"a JSON {type(data).__name__}"


def release_contents(folder: str | Path) -> dict:
    """Data files (with a one-line account of JSON ones), image folders (with their image counts) and the
    number of other files, relative to ``folder``."""
    folder = Path(folder)
    files = sorted(p for p in folder.rglob("*") if p.is_file() and ".cache" not in p.relative_to(folder).parts)
    data = {}
    images: Counter = Counter()
    other = 0
    for f in files:
        rel = f.relative_to(folder)
        if f.suffix.lower() in DATA_SUFFIXES:
            data[rel.as_posix()] = _describe_json(f) if f.suffix.lower() == ".json" else f"{f.stat().st_size} bytes"
        elif f.suffix.lower() in IMAGE_SUFFIXES:
            images[rel.parent.as_posix()] += 1
        else:
            other += 1
    return {"data_files": data, "image_folders": dict(sorted(images.items())), "n_other_files": other}


def inspect_release(name: str, folder: str | Path, layout: dict) -> dict:
    """Check that the release folder has the configured ``path`` (a file) and ``image_root`` (a folder);
    returns what it holds. Raises DataError naming what it found and the keys to set otherwise."""
    folder = Path(folder)
    if not folder.is_dir():
        raise DataError(f"data set {name!r}: release folder {folder} does not exist")
    contents = release_contents(folder)
    wrong = []
    for key, kind in LAYOUT_KEYS.items():
        value = layout.get(key)
        if not value:
            continue
        target = folder / value
        if not (target.is_file() if kind == "file" else target.is_dir()):
            wrong.append(f"datasets.{name}.{key}: {value!r} is no {kind} of the release")
    if wrong:
        data = [f"  {path}: {account}" for path, account in list(contents["data_files"].items())[:_LISTED]]
        imgs = [f"  {path or '.'}/: {n} images" for path, n in list(contents["image_folders"].items())[:_LISTED]]
        raise DataError(
            f"data set {name!r}: the release in {folder} does not match the config:\n"
            + "\n".join(f"  {w}" for w in wrong)
            + "\nit holds these data files:\n"
            + ("\n".join(data) or "  (none)")
            + "\nand these image folders:\n"
            + ("\n".join(imgs) or "  (none)")
            + f"\n({contents['n_other_files']} other files). Set datasets.{name}.path to the question file and "
            f"datasets.{name}.image_root to the image folder, both relative to the release folder."
        )
    return contents
