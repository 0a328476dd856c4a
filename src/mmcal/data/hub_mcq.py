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

The benchmarks MLLM papers report, each with its card's schema (fixtures in ``tests/fixtures/benchmarks``):

- ``options`` a list of columns, one option each (MMBench ``[A, B, C, D]``, SEED-Bench
  ``[choice_a, choice_b, choice_c, choice_d]``); an empty or missing one ends the list (MMBench's 2-
  and 3-option questions);
- ``options`` a column holding a list (AI2D, ScienceQA) or the text of a Python list (MMMU:
  ``"['3', '4', '5']"``);
- ``options_in_question: true`` (MMStar): the options are the question's ``"\nOptions: A: ..., B: ..."``
  tail, which is cut off the question;
- ``image`` a column or a list of columns (MMMU ``image_1`` .. ``image_7``); a column holding a list
  of images (SEED-Bench) counts as several. Several images are placed side by side into one
  (``multi_image: concat``, default; ``first``; ``exclude``) and MMMU's ``<image k>`` placeholders
  in the text become ``[image k]``; the report counts items by number of images (``n_images``);
- ``where: {column: value}``: rows with another value are excluded and counted (MMMU
  ``question_type: multiple-choice`` leaves out open questions, SEED-Bench ``data_type: image``
  its video questions);
- ``cluster_modulo``: cluster = the ``cluster`` column's integer value modulo this (MMBench's circular
  evaluation repeats each question with rotated options under ``index + k * 1000000``: one cluster).
"""

from __future__ import annotations

import ast
import math
import re
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
    shape: dict | None = None,
) -> tuple[list[MCItem], dict]:
    """Convert source rows to items; a seeded permutation assigns rows to calib/test. ``shape``: the
    schema keys beyond ``columns`` (``options_in_question``, ``multi_image``, ``where``,
    ``cluster_modulo``; module docstring)."""
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
    shape = shape or {}
    multi_image = shape.get("multi_image", "concat")
    if multi_image not in ("concat", "first", "exclude"):
        raise MmcalError(f"data set {name!r}: multi_image must be concat, first or exclude, not {multi_image!r}")
    want = [(s, int(n)) for s, n in splits.items() if int(n) > 0]
    order = np.random.default_rng(seed).permutation(len(rows))
    items, excluded, n_images = [], {}, Counter()
    split_idx, taken = 0, 0

    def exclude(reason):
        excluded[reason] = excluded.get(reason, 0) + 1

    for i in order:
        if split_idx >= len(want):
            break
        row = rows[int(i)]
        mismatch = next((f"{k} is not {v!r}" for k, v in (shape.get("where") or {}).items() if row.get(k) != v), None)
        if mismatch:
            exclude(mismatch)
            continue
        question = str(row[col["question"]])
        if shape.get("options_in_question"):
            question, options = _options_in_question(question)
        else:
            options = _row_options(row, col["options"])
        gold = _answer_index(row.get(col["answer"]), len(options))
        images = [] if text_only else _row_images(row, col["image"])
        if not options:
            exclude("no options")
            continue
        if gold is None:
            exclude("answer not among the options")
            continue
        if not text_only and col["image"] and not images:
            exclude("no image")
            continue
        if text_only and col["image"] and _row_images(row, col["image"]):
            exclude("has an image (text-only set)")
            continue
        if len(images) > 1 and multi_image == "exclude":
            exclude("several images")
            continue
        item_id = f"{name}-{row[col['id']] if col['id'] else int(i)}"
        rel = None
        if images:
            n_images[str(len(images))] += 1
            image = images[0] if multi_image == "first" else _side_by_side(images)
            image_dir.mkdir(parents=True, exist_ok=True)
            fname = f"{int(i):07d}.png"
            image.convert("RGB").save(image_dir / fname)
            rel = f"{image_rel}/{fname}"
        question = _IMAGE_PLACEHOLDER.sub(r"[image \1]", question)
        hint = row.get(col["hint"]) if col["hint"] else None
        if _present(hint):
            question = f"Context: {hint}\n{question}"
        split = want[split_idx][0]
        items.append(
            MCItem(
                item_id=item_id,
                cluster_id=_cluster(row, col["cluster"], shape.get("cluster_modulo"), name, item_id),
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
    if any(k != "1" for k in n_images):
        report["n_images"] = dict(sorted(n_images.items()))
    return items, report


_IMAGE_PLACEHOLDER = re.compile(r"<image (\d+)>")
# MMStar: "<question>\nOptions: A: <text>, B: <text>, C: <text>, D: <text>"
_OPTIONS_TAIL = re.compile(r"\n\s*Options:\s*(?=A:)")
_OPTION_LABEL = re.compile(r"(?:^|,\s)([A-J]):\s")


def _present(value) -> bool:
    """A cell that holds something: not None, NaN, "" or the text "nan" (MMBench's empty hints)."""
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return False
    return str(value).strip() not in ("", "nan", "None")


def _row_options(row, spec) -> list:
    """The options of a row: one column per option (stop at the first empty one), a list column, or a
    column holding a Python list's text (MMMU)."""
    if isinstance(spec, (list, tuple)):
        options = []
        for column in spec:
            if not _present(row.get(column)):
                break
            options.append(row[column])
        return options
    value = row.get(spec)
    if isinstance(value, str):
        try:
            value = ast.literal_eval(value)
        except (ValueError, SyntaxError):
            return []
        if not isinstance(value, (list, tuple)):
            return []
    return list(value or [])


def _options_in_question(question: str) -> tuple[str, list[str]]:
    """(question without its options, options) for MMStar's "...\nOptions: A: x, B: y" questions."""
    parts = _OPTIONS_TAIL.split(question, maxsplit=1)
    if len(parts) != 2:
        return question, []
    labels = list(_OPTION_LABEL.finditer(parts[1]))
    if [m.group(1) for m in labels] != list(LETTERS[: len(labels)]):
        return question, []
    ends = [m.start() for m in labels[1:]] + [len(parts[1])]
    return parts[0].strip(), [parts[1][m.end() : end].strip() for m, end in zip(labels, ends)]


def _row_images(row, spec) -> list:
    """Every image of a row: from one column or several; a column holding a list gives each."""
    out = []
    for column in spec if isinstance(spec, (list, tuple)) else [spec] if spec else []:
        value = row.get(column)
        values = value if isinstance(value, (list, tuple)) else [value]
        out += [v for v in values if v is not None]
    return out


def _side_by_side(images):
    """One RGB image with the images left to right on a white ground (an MLLM scored here takes one)."""
    if len(images) == 1:
        return images[0]
    from PIL import Image

    rgb = [im.convert("RGB") for im in images]
    canvas = Image.new("RGB", (sum(im.width for im in rgb), max(im.height for im in rgb)), "white")
    x = 0
    for im in rgb:
        canvas.paste(im, (x, 0))
        x += im.width
    return canvas


def _cluster(row, column, modulo, name: str, item_id: str) -> str:
    if not column:
        return item_id
    value = row[column]
    if modulo:
        return f"{name}-{int(value) % int(modulo)}"
    return str(value)


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
        {k: cfg[k] for k in ("options_in_question", "multi_image", "where", "cluster_modulo") if k in cfg},
    )


@register("hub_mcq")
def build_hub_mcq(name: str, cfg: dict, out_dir: Path, context: BuildContext) -> tuple[list[MCItem], dict]:
    return build_hub_mcq_items(name, cfg, out_dir, seed=context.seed)
