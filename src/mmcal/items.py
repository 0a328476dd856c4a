"""The multiple-choice item schema shared by every data set, and its JSONL storage.

One item = one question with lettered options. ``cluster_id`` groups items that share an image or
source (bootstrap resamples clusters, recalibration splits by cluster). ``image`` is a path relative
to the data set's folder, or ``None`` for text-only items.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Iterable

from mmcal.errors import DataError

SPLITS = ("train", "calib", "test")


@dataclass
class MCItem:
    item_id: str
    cluster_id: str
    question: str
    options: list[str]
    gold: int
    split: str
    source: str
    image: str | None = None
    metadata: dict = field(default_factory=dict)

    def validate(self, where: str = "") -> None:
        """Raise DataError naming the item when a field is inconsistent."""
        tag = f"{where}item {self.item_id!r}"
        if self.split not in SPLITS:
            raise DataError(f"{tag}: split {self.split!r} is not one of {SPLITS}")
        if not isinstance(self.options, list) or not all(isinstance(o, str) for o in self.options):
            raise DataError(f"{tag}: options must be a list of strings")
        if self.options and not (0 <= self.gold < len(self.options)):
            raise DataError(f"{tag}: gold index {self.gold} outside 0..{len(self.options) - 1}")

    def to_dict(self) -> dict:
        return asdict(self)


REQUIRED_KEYS = ("item_id", "cluster_id", "question", "options", "gold", "split", "source")


def item_from_dict(d: dict, where: str = "") -> MCItem:
    missing = [k for k in REQUIRED_KEYS if k not in d]
    if missing:
        raise DataError(f"{where}record {d.get('item_id', '?')!r} lacks keys {missing}")
    known = {k: d[k] for k in MCItem.__dataclass_fields__ if k in d}
    item = MCItem(**known)
    item.validate(where)
    return item


def write_items(items: Iterable[MCItem], path: str | Path) -> str:
    """Write items as JSONL (one item a line, stable key order); return the content hash."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    lines = [json.dumps(it.to_dict(), sort_keys=True, ensure_ascii=False) for it in items]
    text = "\n".join(lines) + ("\n" if lines else "")
    path.write_text(text, encoding="utf-8")
    return hashlib.sha256(text.encode()).hexdigest()


def read_items(path: str | Path, splits: Iterable[str] | None = None) -> list[MCItem]:
    path = Path(path)
    if not path.exists():
        raise DataError(f"data set file {path} does not exist")
    wanted = set(splits) if splits is not None else None
    items = []
    with path.open(encoding="utf-8") as fh:
        for lineno, line in enumerate(fh, 1):
            if not line.strip():
                continue
            try:
                d = json.loads(line)
            except json.JSONDecodeError as exc:
                raise DataError(f"{path}:{lineno}: not valid JSON ({exc.msg})") from None
            item = item_from_dict(d, where=f"{path}:{lineno}: ")
            if wanted is None or item.split in wanted:
                items.append(item)
    return items


def file_sha256(path: str | Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()
