"""Multiple-choice benchmarks from a ``datasets`` source (the hub at paper scale, or local files).

Config (``datasets.<name>``)::

    builder: hub_mcq
    hub: {path: lmms-lab/ScienceQA, name: ScienceQA-IMG, split: test}   # or {path: parquet,
                                                                        #  data_files: x.parquet}
    columns: {question: question, options: choices, answer: answer, image: image, hint: hint,
              id: null, cluster: null}
    text_only: false        # true: keep rows without an image (and ignore images)
    splits: {calib: 500, test: 1500}

``answer`` may be an option index or a letter. Rows that cannot become an item (no options, an
answer outside the options, a missing image when one is required) are excluded and counted in the
returned report, never silently dropped; the report also counts the items by number of options.
ScienceQA (``lmms-lab/ScienceQA``: int8 ``answer``, 2-5 ``choices``, ``hint`` "" when none, ``image``
None for text-only rows of ScienceQA-FULL) is tested on a fixture of that schema
(``tests/fixtures/scienceqa``).
"""

from __future__ import annotations

from collections import Counter
from pathlib import Path

import numpy as np

from mmcal import LETTERS
from mmcal.data.registry import BuildContext, register, require
from mmcal.errors import DataError, MmcalError
from mmcal.items import MCItem


def _answer_index(value, n_options: int) -> int | None:
    if isinstance(value, (int, np.integer)):
        idx = int(value)
    elif isinstance(value, str) and value.strip().upper()[:1] in LETTERS and len(value.strip()) <= 3:
        idx = LETTERS.index(value.strip().upper()[:1])
    elif isinstance(value, str) and value.strip().isdigit():
        idx = int(value.strip())
    else:
        return None
    return idx if 0 <= idx < n_options else None


def load_source(hub: dict):
    try:
        import datasets
    except ImportError:
        raise MmcalError("builder hub_mcq needs the 'datasets' package (pip install datasets)") from None
    kw = {k: v for k, v in hub.items() if k not in ("path", "name", "split")}
    try:
        return datasets.load_dataset(hub["path"], hub.get("name"), split=hub.get("split", "test"), **kw)
    except Exception as exc:  # network, missing files, bad config: say which source
        raise DataError(f"cannot load data set {hub.get('path')!r} ({hub.get('name')}): {exc}") from None


def rows_to_items(
    rows,
    name: str,
    columns: dict,
    splits: dict,
    image_dir: Path,
    image_rel: str,
    text_only: bool = False,
    seed: int = 0,
) -> tuple[list[MCItem], dict]:
    """Convert source rows to items; a seeded permutation assigns rows to calib/test."""
    col = {
        "question": "question",
        "options": "options",
        "answer": "answer",
        "image": "image",
        "hint": None,
        "id": None,
        "cluster": None,
        **(columns or {}),
    }
    want = [(s, int(n)) for s, n in splits.items() if int(n) > 0]
    order = np.random.default_rng(seed).permutation(len(rows))
    items, excluded = [], {}
    split_idx, taken = 0, 0

    def exclude(reason):
        excluded[reason] = excluded.get(reason, 0) + 1

    for i in order:
        if split_idx >= len(want):
            break
        row = rows[int(i)]
        options = list(row.get(col["options"]) or [])
        gold = _answer_index(row.get(col["answer"]), len(options))
        image = None if text_only else row.get(col["image"]) if col["image"] else None
        if not options:
            exclude("no options")
            continue
        if gold is None:
            exclude("answer not among the options")
            continue
        if not text_only and col["image"] and image is None:
            exclude("no image")
            continue
        if text_only and col["image"] and row.get(col["image"]) is not None:
            exclude("has an image (text-only set)")
            continue
        item_id = f"{name}-{row[col['id']] if col['id'] else int(i)}"
        rel = None
        if image is not None:
            image_dir.mkdir(parents=True, exist_ok=True)
            fname = f"{int(i):07d}.png"
            image.convert("RGB").save(image_dir / fname)
            rel = f"{image_rel}/{fname}"
        question = str(row[col["question"]])
        if col["hint"] and row.get(col["hint"]):
            question = f"Context: {row[col['hint']]}\n{question}"
        split = want[split_idx][0]
        items.append(
            MCItem(
                item_id=item_id,
                cluster_id=str(row[col["cluster"]]) if col["cluster"] else item_id,
                question=question,
                options=[str(o) for o in options],
                gold=gold,
                split=split,
                source=f"{name}#{int(i)}",
                image=rel,
                metadata={"row": int(i)},
            )
        )
        taken += 1
        if taken >= want[split_idx][1]:
            split_idx, taken = split_idx + 1, 0
    # Option counts vary (ScienceQA: 2-5); option-order scenarios rotate each item through its own n.
    n_options = dict(sorted(Counter(str(len(it.options)) for it in items).items()))
    report = {"rows": len(rows), "items": len(items), "excluded": excluded, "n_options": n_options}
    return items, report


def build_hub_mcq_items(name: str, cfg: dict, out_dir: Path, seed: int = 0):
    rows = load_source(require(cfg, "hub", name))
    return rows_to_items(
        rows,
        name,
        cfg.get("columns") or {},
        cfg.get("splits") or {"test": len(rows)},
        Path(out_dir) / "images",
        "images",
        bool(cfg.get("text_only")),
        seed,
    )


@register("hub_mcq")
def build_hub_mcq(name: str, cfg: dict, out_dir: Path, context: BuildContext) -> tuple[list[MCItem], dict]:
    return build_hub_mcq_items(name, cfg, out_dir, seed=context.seed)
