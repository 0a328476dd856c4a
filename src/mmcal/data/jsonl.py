"""Your own data set as a JSON-lines file, no Python needed (builder ``jsonl``).

One multiple-choice item per line::

    {"item_id": "q1", "question": "What is shown?", "options": ["a cat", "a dog"], "gold": 1,
     "split": "test", "image": "images/q1.png"}

Required: ``item_id`` (unique), ``question``, ``options`` (2-10 strings), ``gold`` (the correct option's
0-based index, or its letter "A".."J"), ``split`` (``calib`` or ``test``). Optional: ``image`` (a path
relative to the JSON-lines file; omit it for a text-only item), ``cluster_id`` (items that share an image or
source; default: the item's own id), ``source`` (default: ``<file>:<line>``), ``metadata`` (an object kept
with the item). Blank lines are skipped. A line that breaks these rules stops the build with its file, line
and reason; an image that is not there keeps its item, which scoring records as "image missing" (listed and
counted in the manifest's ``build_report``); no image found at all is an error (a wrong folder).

The file and every image it names are inputs of the build job (:func:`jsonl_inputs`): editing either
rebuilds the set and re-runs what reads it.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

from mmcal import LETTERS
from mmcal.data.registry import BuildContext, register, require
from mmcal.errors import DataError
from mmcal.items import MCItem, item_from_dict

ITEM_KEYS = ("item_id", "question", "options", "gold", "split")
OPTIONAL_KEYS = ("image", "cluster_id", "source", "metadata")


def _records(path: Path):
    """(line number, object) of every non-blank line; DataError naming the line otherwise."""
    if not path.is_file():
        raise DataError(f"jsonl data set file {path} does not exist")
    with path.open(encoding="utf-8") as fh:
        for lineno, line in enumerate(fh, 1):
            if not line.strip():
                continue
            try:
                record = json.loads(line)
            except json.JSONDecodeError as exc:
                raise DataError(f"{path}:{lineno}: not valid JSON ({exc.msg})") from None
            if not isinstance(record, dict):
                raise DataError(f"{path}:{lineno}: expected an object, got {type(record).__name__}")
            yield lineno, record


def _gold(value, n_options: int, where: str) -> int:
    if isinstance(value, str) and len(value) == 1 and value in LETTERS:
        value = LETTERS.index(value)
    if isinstance(value, bool) or not isinstance(value, int):
        raise DataError(f"{where}: gold must be an option index (0, 1, ...) or letter (A, B, ...), not {value!r}")
    if not 0 <= value < n_options:
        raise DataError(f"{where}: gold {value} is not one of the {n_options} options")
    return value


def read_jsonl_items(path: str | Path, out_dir: str | Path, dataset: str) -> tuple[list[MCItem], dict]:
    """The file's items (image paths rewritten relative to ``out_dir``, where the items file is written) and a
    report of the images that are not there."""
    path = Path(path)
    items, missing, seen = [], [], {}
    for lineno, rec in _records(path):
        where = f"{path}:{lineno}"
        unknown = set(rec) - set(ITEM_KEYS) - set(OPTIONAL_KEYS)
        if unknown:
            raise DataError(f"{where}: unknown keys {sorted(unknown)} (keys: {', '.join(ITEM_KEYS + OPTIONAL_KEYS)})")
        absent = [k for k in ITEM_KEYS if k not in rec]
        if absent:
            raise DataError(f"{where}: item {rec.get('item_id', '?')!r} lacks {absent}")
        item_id = str(rec["item_id"])
        if item_id in seen:
            raise DataError(f"{where}: item id {item_id!r} is also on line {seen[item_id]}")
        seen[item_id] = lineno
        options = rec["options"]
        if not isinstance(options, list) or not 2 <= len(options) <= len(LETTERS):
            raise DataError(f"{where}: options must be a list of 2 to {len(LETTERS)} strings")
        image = rec.get("image")
        if image is not None:
            if not isinstance(image, str) or not image:
                raise DataError(f"{where}: image must be a path relative to {path.name}, not {image!r}")
            if not (path.parent / image).is_file():
                missing.append({"line": lineno, "item_id": item_id, "path": str(path.parent / image)})
            image = os.path.relpath(path.parent / image, out_dir)
        item = item_from_dict(
            {
                **rec,
                "item_id": item_id,
                "gold": _gold(rec["gold"], len(options), where),
                "cluster_id": str(rec.get("cluster_id", item_id)),
                "source": str(rec.get("source", f"{path.name}:{lineno}")),
                "image": image,
                "metadata": dict(rec.get("metadata") or {}),
            },
            where=f"{where}: ",
        )
        items.append(item)
    if not items:
        raise DataError(f"{path}: no items")
    with_image = sum(1 for it in items if it.image is not None)
    if with_image and len(missing) == with_image:
        raise DataError(f"{path}: none of the {with_image} images exists (first: {missing[0]['path']})")
    return items, {"n_items": len(items), "n_missing_images": len(missing), "missing_images": missing}


def jsonl_inputs(cfg: dict) -> list[str]:
    """The build job's inputs: the file and every image it names that exists (a missing one is reported by
    the build instead)."""
    path = Path(cfg["path"])
    if not path.is_file():
        return [str(path)]  # Snakemake then says the input is missing
    images = []
    for _, rec in _records(path):
        image = rec.get("image")
        if isinstance(image, str) and image and (path.parent / image).is_file():
            images.append(str(path.parent / image))
    return [str(path), *sorted(set(images))]


@register("jsonl")
def build_jsonl(name: str, cfg: dict, out_dir: Path, context: BuildContext) -> tuple[list[MCItem], dict]:
    """Config adapter: ``path`` (the JSON-lines file; see the module docstring for its lines)."""
    return read_jsonl_items(require(cfg, "path", name), out_dir, name)
