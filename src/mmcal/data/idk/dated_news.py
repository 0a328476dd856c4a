"""IDK items from real dated news records (builder ``dated_news``).

Records (image, headline, date) of which only those published strictly *after* a model's cutoff
are kept (the others are counted in the build report).

Gold semantics. In the reference study the point of after-cutoff news is that the model cannot
know the event: the question asks about facts that the image does not show, so the honest answer
is "I don't know". ``gold="idk"`` (default) follows that: gold = the IDK option, the true headline
is kept as ``metadata['answer_index']`` and the item is unanswerable. ``gold="answer"`` instead
treats the item as answerable (gold = true headline): use it when the question *can* be answered
from what the image shows (matching a photo to its headline), to measure false IDKs.
Under ``gold="idk"`` the true headline is still an option on purpose: it is the tempting answer,
and ``answer_index`` lets an analysis count how often a model picks it instead of admitting.

Per-model cutoffs. ``cutoff: per_model`` builds one item per dated record, none excluded, each
marked ``metadata['cutoff_rule'] = "per_model"``; each scoring job then keeps the items published
strictly after *its* model's ``models.<name>.cutoff`` (:func:`items_for_model`), so one data set
serves models with different cutoffs and each model's IDK items are the news it cannot know.
"""

from __future__ import annotations

import csv
import json
import os
import re
from collections import Counter
from dataclasses import dataclass, field, replace
from datetime import date, datetime
from pathlib import Path
from typing import Iterable

import numpy as np

from mmcal.data.idk.common import (
    IDK_TEXT,
    MAX_REJECTED,
    RejectedRecord,
    assign_calib_test,
    check_n_options,
    check_unique_ids,
    is_idk_text,
    missing_image_report,
    norm_text,
    place_options,
    plan_positions,
    read_json,
    record_where,
    require_unknowable,
    screen_records,
)
from mmcal.data.registry import BuildContext, register, require
from mmcal.errors import ConfigError, DataError
from mmcal.items import MCItem

NEWS_KIND = "after_cutoff"
PER_MODEL = "per_model"  # ``cutoff: per_model``: each model's own ``cutoff`` selects its items
NEWS_QUESTION = "Which headline matches this image?"
GOLD_MODES = ("idk", "answer")
NEWS_FIELDS = ("id", "image", "headline", "date", "question", "distractors", "cluster")


@dataclass
class NewsRecord:
    """One validated news record; ``answer`` is its headline (or caption)."""

    record_id: str
    image: str
    answer: str
    published: date
    question: str | None
    distractors: list[str] | None
    cluster: str
    extra: dict = field(default_factory=dict)
    index: int = 0
    image_missing: str | None = None  # the path looked for, when the image file is absent


def parse_date(value, what: str) -> date:
    """An ISO date or date-time (``2024-07-15``, ``2024-07-15T10:00:00Z``) as a date."""
    if isinstance(value, datetime):
        return value.date()
    if isinstance(value, date):
        return value
    if not isinstance(value, str) or not value.strip():
        raise DataError(f"{what}: date {value!r} is not an ISO date string")
    text = value.strip()
    try:
        return date.fromisoformat(text)
    except ValueError:
        pass
    try:
        return datetime.fromisoformat(text.replace("Z", "+00:00")).date()
    except ValueError:
        raise DataError(f"{what}: date {value!r} is not an ISO date (YYYY-MM-DD)") from None


def _field(rec: dict, name: str, field_map: dict) -> object:
    return rec.get(field_map.get(name, name))


def _text_field(rec, name, field_map, where, required=True) -> str | None:
    value = _field(rec, name, field_map)
    if value is None or (isinstance(value, str) and not value.strip()):
        if required:
            raise DataError(f"{where}: field {field_map.get(name, name)!r} is missing or empty")
        return None
    if not isinstance(value, (str, int, float)):
        raise DataError(f"{where}: field {field_map.get(name, name)!r} must be text, not {value!r}")
    return str(value).strip()


def _distractor_list(value, where: str) -> list[str] | None:
    """A record's own distractors: a list, a JSON list string, or a '|'-separated string (CSV)."""
    if value is None or value == "":
        return None
    if isinstance(value, str) and value.strip().startswith("["):
        try:
            value = json.loads(value)
        except json.JSONDecodeError as exc:
            raise DataError(f"{where}: field 'distractors' is not a JSON list ({exc.msg})") from None
    elif isinstance(value, str):
        value = value.split("|")
    if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
        raise DataError(f"{where}: field 'distractors' must be a list of strings")
    return [v.strip() for v in value if v.strip()]


def parse_news_record(
    rec: dict, index: int, image_root: Path | None, field_map: dict, check_images: bool
) -> NewsRecord:
    """Validate one news record; a problem raises RejectedRecord naming the record and the field."""
    rid = rec.get(field_map.get("id", "id")) if isinstance(rec, dict) else None
    where = record_where("news record", index, rid)
    try:
        return _news_fields(rec, rid, index, where, image_root, field_map, check_images)
    except DataError as exc:
        raise RejectedRecord.from_error(exc, where, index, rid) from None


def _news_fields(rec, rid, index: int, where: str, image_root, field_map: dict, check_images: bool) -> NewsRecord:
    if not isinstance(rec, dict):
        raise DataError(f"{where}: expected a JSON object / dict, got {type(rec).__name__}")
    image = _text_field(rec, "image", field_map, where)
    answer = _text_field(rec, "headline", field_map, where, required=False)
    if answer is None:  # a caption may stand in for the headline
        answer = _text_field(rec, "caption", field_map, where, required=False)
    if answer is None:
        raise DataError(f"{where}: field 'headline' (or 'caption') is missing or empty")
    raw_date = _field(rec, "date", field_map)
    if raw_date is None or raw_date == "":
        raise DataError(f"{where}: field {field_map.get('date', 'date')!r} is missing or empty")
    published = parse_date(raw_date, where)
    path = Path(image) if image_root is None else Path(image_root) / image
    # a named image that is not there: the item stays, unscorable (scoring's "image missing")
    missing = str(path) if check_images and not path.is_file() else None
    question = _text_field(rec, "question", field_map, where, required=False)
    distractors = _distractor_list(_field(rec, "distractors", field_map), where)
    cluster = _text_field(rec, "cluster", field_map, where, required=False) or image
    used = {field_map.get(k, k) for k in NEWS_FIELDS + ("caption",)}
    extra = {k: v for k, v in rec.items() if k not in used and isinstance(v, (str, int, float, bool))}
    return NewsRecord(
        record_id=str(rid) if rid not in (None, "") else f"rec{index:05d}",
        image=image,
        answer=answer,
        published=published,
        question=question,
        distractors=distractors,
        cluster=str(cluster),
        extra=extra,
        index=index,
        image_missing=missing,
    )


def _news_distractors(
    rec: NewsRecord, pool: list[tuple[str, str | None, str | None]], n: int, idk_text, rng, where
) -> list[str]:
    """``n`` distractors: the record's own if it has them, else answers of other records that ask
    the same question (for the default question: other headlines and the extra pool)."""
    bad = {norm_text(rec.answer)}
    if rec.distractors is not None:
        own = [d for d in dict.fromkeys(rec.distractors) if norm_text(d) not in bad]
        own = [d for d in own if not is_idk_text(d, idk_text)]
        if len(own) < n:
            raise DataError(f"{where}: {len(own)} usable distractors, {n} needed")
        return [own[i] for i in sorted(rng.choice(len(own), size=n, replace=False))]
    seen, candidates = set(bad), []
    for text, cluster, question in pool:
        key = norm_text(text)
        # Same-cluster headlines describe the same event/image: they could also be right.
        # Answers to another question are not plausible options for this one.
        if key in seen or cluster == rec.cluster or question != rec.question:
            continue
        if is_idk_text(text, idk_text):
            continue
        seen.add(key)
        candidates.append(text)
    if len(candidates) < n:
        raise DataError(
            f"{where}: only {len(candidates)} distinct distractors available from other records, "
            f"{n} needed (add records, a distractor_pool, or the record's own 'distractors')"
        )
    return [candidates[i] for i in rng.choice(len(candidates), size=n, replace=False)]


def build_dated_news_idk(
    records: Iterable[dict],
    cutoff,
    image_root: str | Path | None = None,
    image_rel: str = "",
    n_options: int = 4,
    seed: int = 0,
    idk_text: str = IDK_TEXT,
    idk_position="last",
    gold: str = "idk",
    distractor_pool: Iterable[str] | None = None,
    question: str = NEWS_QUESTION,
    dataset: str = "news_idk",
    calib_fraction: float = 0.3,
    field_map: dict | None = None,
    check_images: bool = True,
    strict: bool = False,
    max_rejected: float = MAX_REJECTED,
) -> tuple[list[MCItem], dict]:
    """MC items from dated news records published strictly after ``cutoff`` (a per-model date).

    Each record needs ``image`` (path relative to ``image_root``), ``headline`` (or ``caption``)
    and ``date`` (ISO); optional ``id``, ``question`` (replaces ``question``), ``distractors`` (own
    wrong options), ``cluster`` (items of one event; default: the image path). ``field_map`` maps
    these names to the record's own keys, e.g. ``{"headline": "title"}``.

    Options: true headline + ``n_options - 2`` distractors (the record's own ``distractors``, else
    other records' headlines and ``distractor_pool``; records with a custom question draw from
    records with the same question) + the IDK option. ``gold``: ``"idk"`` (reference-study
    semantics: the event is unknowable to the model) or ``"answer"`` (the true headline).

    Every record is validated: a malformed one is rejected and listed with its reason in the
    returned report (``mmcal.data.idk.common.screen_records``: the build fails with ``strict`` or
    when more than ``max_rejected`` of the records are rejected); records dated on or before the
    cutoff are excluded and counted in the report.
    """
    if gold not in GOLD_MODES:
        raise ConfigError(f"gold must be one of {GOLD_MODES}, not {gold!r}")
    check_n_options(n_options, minimum=2)
    per_model = cutoff == PER_MODEL
    cutoff_date = None if per_model else parse_date(cutoff, "cutoff")
    field_map = dict(field_map or {})
    root = None if image_root is None else Path(image_root)
    parsed, screened = screen_records(
        list(records),
        lambda rec, i: parse_news_record(rec, i, root, field_map, check_images),
        f"data set {dataset!r}: news records",
        strict=strict,
        max_rejected=max_rejected,
    )
    check_unique_ids([r.record_id for r in parsed], "news records")
    screened.update(
        missing_image_report(
            [{"index": r.index, "id": r.record_id, "image_missing": r.image_missing} for r in parsed],
            f"data set {dataset!r}: news records",
        )
    )
    kept = [r for r in parsed if per_model or r.published > cutoff_date]
    excluded = [r for r in parsed if not per_model and r.published <= cutoff_date]
    # Answers of all records (also those before the cutoff) are fair distractors.
    pool = [(r.answer, r.cluster, r.question) for r in parsed]
    pool += [(t, None, None) for t in (distractor_pool or [])]  # extra headlines
    rng = np.random.default_rng(seed)
    plan = plan_positions(len(kept), n_options, idk_position, True, rng)
    items = []
    for rec, (answer_pos, idk_pos) in zip(kept, plan):
        where = f"news record {rec.record_id!r}"
        fillers = _news_distractors(rec, pool, n_options - 2, idk_text, rng, where)
        options = place_options(n_options, idk_pos, answer_pos, rec.answer, fillers, idk_text)
        items.append(
            MCItem(
                item_id=f"{dataset}-{rec.record_id}",
                cluster_id=f"{dataset}:{rec.cluster}",
                question=rec.question or question,
                options=options,
                gold=idk_pos if gold == "idk" else answer_pos,
                split="test",
                source=f"news/{rec.record_id}",
                image=f"{image_rel}/{rec.image}" if image_rel else rec.image,
                metadata={
                    "kind": NEWS_KIND,
                    "answerable": gold == "answer",
                    "idk_index": idk_pos,
                    "idk_text": idk_text,
                    "answer_index": answer_pos,
                    "gold_mode": gold,
                    "date": rec.published.isoformat(),
                    "cutoff": PER_MODEL if per_model else cutoff_date.isoformat(),
                    **({"cutoff_rule": PER_MODEL} if per_model else {}),
                    "record_id": rec.record_id,
                    "headline": rec.answer,
                    "extra": rec.extra,
                    **({"unscorable": f"image missing: {rec.image_missing}"} if rec.image_missing else {}),
                },
            )
        )
    assign_calib_test(items, calib_fraction, seed)
    report = _news_report(screened, kept, excluded, items, cutoff_date, gold)
    return items, report


def items_for_model(items: list[MCItem], model: str, cutoff) -> list[MCItem]:
    """A scoring job's items: those of a ``cutoff: per_model`` set published strictly after
    ``model``'s cutoff (every item of any other set). A model without a cutoff, or with no item
    after it, is a DataError naming the model: its IDK rates would be undefined."""
    if not any(it.metadata.get("cutoff_rule") == PER_MODEL for it in items):
        return items
    if cutoff in (None, ""):
        raise DataError(f"model {model!r}: the news set has per-model cutoffs, but models.{model}.cutoff is not set")
    day = parse_date(cutoff, f"models.{model}.cutoff")
    kept = [
        replace(it, metadata={**it.metadata, "cutoff": day.isoformat()})
        for it in items
        if date.fromisoformat(it.metadata["date"]) > day
    ]
    if not kept:
        raise DataError(f"model {model!r}: none of the {len(items)} news items is dated after its cutoff {day}")
    return kept


def _news_report(screened: dict, kept, excluded, items, cutoff_date, gold) -> dict:
    """The screening report (records read, rejected with reasons) plus the cutoff's exclusions."""
    dates = [r.published for r in kept]
    return {
        **screened,
        "cutoff": cutoff_date.isoformat() if cutoff_date else PER_MODEL,
        "rule": "kept: published strictly after the cutoff (compared by calendar date)"
        + ("; per model, when its scoring job reads the items" if cutoff_date is None else ""),
        "gold": gold,
        "n_kept": len(kept),
        "n_excluded_not_after_cutoff": len(excluded),
        "excluded_ids": [r.record_id for r in excluded],
        "kept_date_range": [min(dates).isoformat(), max(dates).isoformat()] if dates else None,
        "by_split": dict(sorted(Counter(it.split for it in items).items())),
    }


def load_news_records(source: str | Path, image_dir: str | Path | None = None, hf_split: str = "test") -> list[dict]:
    """Read news records from a local ``.json`` (a list), ``.jsonl`` or ``.csv`` file.

    ``source = "hf:<name>"`` reads a Hugging Face dataset instead (needs the optional ``datasets``
    package, imported only here); its images are written as PNGs to ``image_dir``.
    """
    if isinstance(source, str) and source.startswith("hf:"):
        return load_hf_news_records(source[3:], hf_split, image_dir)
    path = Path(source)
    if not path.is_file():
        raise DataError(f"news records file {path} does not exist")
    suffix = path.suffix.lower()
    if suffix == ".jsonl":
        return _read_jsonl(path)
    if suffix == ".json":
        data = read_json(path)
        if not isinstance(data, list):
            raise DataError(f"{path}: expected a JSON list of records, got {type(data).__name__}")
        return data
    if suffix == ".csv":
        with path.open(encoding="utf-8", newline="") as fh:
            return [dict(row) for row in csv.DictReader(fh)]
    raise DataError(f"{path}: unsupported news file type {suffix!r} (use .json, .jsonl or .csv)")


def _read_jsonl(path: Path) -> list[dict]:
    out = []
    with path.open(encoding="utf-8") as fh:
        for lineno, line in enumerate(fh, 1):
            if not line.strip():
                continue
            try:
                out.append(json.loads(line))
            except json.JSONDecodeError as exc:
                raise DataError(f"{path}:{lineno}: not valid JSON ({exc.msg})") from None
    return out


def load_hf_news_records(
    name: str,
    split: str,
    image_dir: str | Path | None,
    image_field: str = "image",
    id_field: str = "id",
) -> list[dict]:
    """Records from a Hugging Face dataset; ``datasets`` is optional, so it is imported lazily."""
    try:
        import datasets  # noqa: PLC0415 - optional dependency
    except ImportError:
        raise DataError(
            f"reading news records from Hugging Face dataset {name!r} needs the optional "
            "'datasets' package, which is not installed (pip install datasets), or export the "
            "records to a local .jsonl/.csv file"
        ) from None
    if image_dir is None:
        raise DataError(f"Hugging Face dataset {name!r}: image_dir is needed to store its images")
    rows = datasets.load_dataset(name, split=split)
    return hf_rows_to_records(rows, image_dir, image_field, id_field)


def hf_rows_to_records(
    rows: Iterable[dict], image_dir: str | Path, image_field: str = "image", id_field: str = "id"
) -> list[dict]:
    """Write decoded images (PIL) of dataset rows to ``image_dir``; paths become relative names."""
    image_dir = Path(image_dir)
    image_dir.mkdir(parents=True, exist_ok=True)
    out = []
    for i, row in enumerate(rows):
        rec = dict(row)
        img = rec.get(image_field)
        if img is not None and hasattr(img, "save"):  # a decoded PIL image
            rid = str(rec.get(id_field, "row"))
            # The row number keeps names unique when sanitised ids collide ("a/b" vs "a_b").
            name = f"{i:05d}-" + re.sub(r"[^A-Za-z0-9._-]", "_", rid) + ".png"
            img.save(image_dir / name)
            rec[image_field] = name
        out.append(rec)
    return out


@register("dated_news")
def build_dated_news(name: str, cfg: dict, out_dir: Path, context: BuildContext) -> tuple[list[MCItem], dict]:
    """Config adapter: ``path`` (records file), ``cutoff`` (a date, or ``per_model``), ``image_root``
    (default: the file's folder),
    ``gold``, ``strict``, ``max_rejected``. With ``gold: idk`` the set must have unknowable items (else
    every record is on or before the cutoff); ``gold: answer`` asks for an all-answerable set."""
    path = Path(require(cfg, "path", name))
    image_root = cfg.get("image_root", str(path.parent))
    gold = cfg.get("gold", "idk")
    items, report = build_dated_news_idk(
        load_news_records(str(path)),
        require(cfg, "cutoff", name),
        image_root=image_root,
        image_rel=os.path.relpath(image_root, out_dir),
        n_options=int(cfg.get("n_options", 4)),
        seed=context.seed,
        idk_text=cfg.get("idk_text", IDK_TEXT),
        gold=gold,
        dataset=name,
        strict=bool(cfg.get("strict", False)),
        max_rejected=float(cfg.get("max_rejected", MAX_REJECTED)),
    )
    if gold == "idk":
        require_unknowable(items, name, "dated_news", path)
    return items, report
