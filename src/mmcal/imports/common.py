"""What every harness importer shares: one parsed log line (:class:`Sample`), the records rows it
becomes, the join to a data set by ``doc_id``, answer-letter parsing, splits and the report.

A line that cannot become a scored row still becomes rows: status = the reason (never dropped), NaN
scores, counted in the report. Readouts (``mmcal.records``): ``harness_loglik`` (the harness's
per-option log-likelihoods as ``option_logits``, softmax over the options as the distribution),
``harness_loglik_norm`` (the harness's length-normalised variant, the one behind ``acc_norm``) and
``generated`` (only the generated answer: a parsed prediction, no confidence).
"""

from __future__ import annotations

import json
import math
import re
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from mmcal import LETTERS
from mmcal.analysis.metrics import cluster_rank_key
from mmcal.errors import DataError
from mmcal.items import MCItem, read_items
from mmcal.records import (
    GENERATED,
    HARNESS_LOGLIK,
    HARNESS_LOGLIK_NORM,
    meta_json,
    readout_row,
    to_frame,
    unscorable_rows,
)

SPLIT_SEED = 0  # the seed of the calib/test split of imported rows (a keyed hash of the cluster id)


@dataclass
class Sample:
    """One log line (one document) of one task, in harness-independent form."""

    source: str  # "file:line" (or "file:row" for spreadsheets)
    doc_id: int | None
    gold: int = -1  # option index; -1 unknown
    n_options: int = 0
    options: list[str] | None = None
    loglik: list[float] | None = None  # per-option log-likelihood, higher = more likely, as the harness has it
    loglik_norm: list[float] | None = None  # the harness's length-normalised version (acc_norm's)
    generated: str | None = None  # the generated answer (generation-only logs)
    pred: int | None = None  # parsed option of ``generated`` (-1: none)
    harness_correct: float | None = None  # the harness's own per-sample verdict of the answer
    harness_correct_norm: float | None = None  # ... of acc_norm, when logged
    item_id: str | None = None
    cluster_id: str | None = None
    split: str | None = None
    status: str = "ok"
    meta: dict = field(default_factory=dict)


@dataclass
class TaskLog:
    """Every line of one task, with what the files say about the run (version, layout, quirks)."""

    harness: str
    task: str
    samples: list[Sample]
    version: str | None  # the harness's version as the files give it, else None
    layout: str  # which file layout was read (named in the report)
    files: list[str]
    output_type: str  # multiple_choice | generate_until
    reported: dict = field(default_factory=dict)  # the harness's own aggregate numbers: {metric: value}
    quirks: list[str] = field(default_factory=list)  # what was found and how it was handled
    metric: str | None = None  # the per-sample metric whose mean the harness reports as accuracy


# ---------------------------------------------------------------------------------------------
# Small parsers


def as_float(value, where: str) -> float:
    """A logged number, also when stringified ("-20.19"); an error naming the line otherwise."""
    try:
        out = float(value)
    except (TypeError, ValueError):
        raise DataError(f"{where}: {value!r} is not a number") from None
    if math.isnan(out):
        raise DataError(f"{where}: NaN")
    return out


def as_bool(value) -> bool:
    return value is True or str(value).strip().lower() in ("true", "1")


_LEAD_LETTER = re.compile(r"^\s*[\(\[]?([A-Z])(?:[\)\]\.:,]|\s|$)")
_ANSWER_IS = re.compile(r"(?:answer|option)\s*(?:is|:)?\s*[\(\[]?([A-Z])\b", re.IGNORECASE)


def parse_letter(text: str | None, n_options: int, options: list[str] | None = None) -> int:
    """The option a generated answer names: a leading letter ("B", "(B)", "B. text", "B) ..."), else
    "answer is B" / "Answer: B", else an answer equal to one option's text; -1 when none does.
    A letter beyond the options counts as none."""
    if text is None:
        return -1
    for pattern in (_LEAD_LETTER, _ANSWER_IS):
        match = pattern.search(text)
        if match:
            index = LETTERS.find(match.group(1).upper())
            return index if 0 <= index < n_options else -1
    if options:
        lowered = [o.strip().lower() for o in options]
        answer = text.strip().strip(".").lower()
        if answer in lowered:
            return lowered.index(answer)
    return -1


def letter_index(value, n_options: int) -> int | None:
    """A gold answer given as a letter ("B") or an index (1, "1")."""
    if isinstance(value, (int, np.integer)) and not isinstance(value, bool):
        index = int(value)
    else:
        text = str(value).strip()
        if len(text) == 1 and text.upper() in LETTERS:
            index = LETTERS.index(text.upper())
        elif text.lstrip("-").isdigit():
            index = int(text)
        else:
            return None
    if index < 0 or (n_options and index >= n_options):
        return None
    return index


def options_in_prompt(prompt: str | None) -> int:
    """How many lettered options ("A. ...", "B. ...") a prompt lists, in order from A."""
    if not prompt:
        return 0
    found = set(re.findall(r"(?m)^\s*\(?([A-J])[\.\)]\s", prompt))
    n = 0
    while n < len(LETTERS) and LETTERS[n] in found:
        n += 1
    return n


# ---------------------------------------------------------------------------------------------
# The data set a log is joined to


class ItemIndex:
    """An mmcal data set's items (``items.jsonl``, e.g. built by ``hub_mcq``) by the source row they
    came from (``metadata.row``), which is the harness's ``doc_id`` when both read the same split."""

    def __init__(self, path: str | Path):
        self.path = str(path)
        self.by_row: dict[int, MCItem] = {}
        for item in read_items(path):
            row = item.metadata.get("row")
            if row is None:
                raise DataError(f"{path}: item {item.item_id!r} has no metadata.row to join a harness doc_id to")
            self.by_row[int(row)] = item

    def join(self, sample: Sample, prompt: str | None = None, target: str | None = None) -> None:
        """Fill options, gold, ids and split from the item of ``sample.doc_id``; a missing item or one
        whose question is not in the logged prompt (the doc_id points elsewhere) is the row's status."""
        item = self.by_row.get(sample.doc_id) if sample.doc_id is not None else None
        if item is None:
            sample.status = f"doc_id {sample.doc_id} is not among the items of {self.path}"
            return
        question = item.question.split("\n")[-1].strip()
        if prompt is not None and question and question not in prompt:
            sample.status = f"doc_id {sample.doc_id}: item {item.item_id!r}'s question is not in the logged prompt"
            return
        sample.options, sample.gold, sample.n_options = list(item.options), item.gold, len(item.options)
        sample.item_id, sample.cluster_id, sample.split = item.item_id, item.cluster_id, item.split
        sample.meta["item_source"] = item.source


def read_json(path: Path):
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as exc:
        raise DataError(f"{path}: not valid JSON ({exc.msg}, line {exc.lineno})") from None


def read_jsonl(path: Path) -> list[tuple[int, dict | None, str | None]]:
    """(line number, object or None, why not) for every non-empty line: a broken line is kept."""
    out = []
    with path.open(encoding="utf-8") as fh:
        for lineno, line in enumerate(fh, 1):
            if not line.strip():
                continue
            try:
                obj = json.loads(line)
            except json.JSONDecodeError as exc:
                out.append((lineno, None, f"not valid JSON ({exc.msg})"))
                continue
            if not isinstance(obj, dict):
                out.append((lineno, None, "not a JSON object"))
                continue
            out.append((lineno, obj, None))
    return out


def collect_samples(log: TaskLog, entries, fill, id_field: str | None, cluster_field: str | None) -> bool:
    """Every entry (where, object or None, why not) becomes a sample of ``log``, never dropped: ``fill(sample,
    obj)`` reads its scores (a DataError becomes the sample's status), a line that could not be read keeps its
    reason, and the doc's id and cluster fields name the item. True when any value was logged as a string."""
    stringified = False
    for where, obj, err in entries:
        sample = Sample(source=where, doc_id=None)
        log.samples.append(sample)
        if obj is None:
            sample.status = f"unreadable line: {err}"
            continue
        try:
            stringified |= fill(sample, obj)
        except DataError as exc:
            sample.status = str(exc).removeprefix(where + ": ")
        doc = obj.get("doc") if isinstance(obj.get("doc"), dict) else {}
        if id_field and doc.get(id_field) is not None:
            sample.item_id = str(doc[id_field])
        if cluster_field and doc.get(cluster_field) is not None:
            sample.cluster_id = str(doc[cluster_field])
    return stringified


def expand_paths(paths) -> list[Path]:
    """Files named, and every file inside folders named (sorted); a missing path is an error."""
    out: list[Path] = []
    for p in paths:
        p = Path(p)
        if p.is_dir():
            out += sorted(f for f in p.rglob("*") if f.is_file())
        elif p.is_file():
            out.append(p)
        else:
            raise DataError(f"harness log {p} does not exist")
    return out


# ---------------------------------------------------------------------------------------------
# Samples -> records


def assign_ids_and_splits(log: TaskLog, calib_fraction: float) -> None:
    """Default ids (``<task>-<doc_id>``), clusters (the item) and splits: lines without a split from a
    joined data set go to calib by a keyed hash of their cluster, ``calib_fraction`` of the clusters."""
    for s in log.samples:
        if s.item_id is None:
            s.item_id = f"{log.task}-{s.doc_id if s.doc_id is not None else s.source}"
        if s.cluster_id is None:
            s.cluster_id = s.item_id
    clusters = sorted(
        {s.cluster_id for s in log.samples if s.split is None}, key=lambda c: cluster_rank_key(c, SPLIT_SEED)
    )
    n_calib = int(math.floor(calib_fraction * len(clusters) + 0.5)) if calib_fraction > 0 else 0
    calib = set(clusters[:n_calib])
    for s in log.samples:
        if s.split is None:
            s.split = "calib" if s.cluster_id in calib else "test"


def readouts_of(log: TaskLog) -> list[str]:
    if log.output_type != "multiple_choice":
        return [GENERATED]
    norm = any(s.loglik_norm is not None for s in log.samples)
    return [HARNESS_LOGLIK, *([HARNESS_LOGLIK_NORM] if norm else [])]


def sample_rows(sample: Sample, readouts: list[str], log: TaskLog) -> list[dict]:
    meta = {"doc_id": sample.doc_id, "source": sample.source, "harness": log.harness, "task": log.task, **sample.meta}
    common = {
        "item_id": sample.item_id,
        "cluster_id": sample.cluster_id,
        "split": sample.split,
        "n_options": sample.n_options,
        "meta": meta_json(meta),
    }
    if sample.status != "ok":
        return [{**common, **row} for row in unscorable_rows(readouts, sample.gold, sample.n_options, sample.status)]
    rows = []
    for readout in readouts:
        if readout == GENERATED:
            pred = -1 if sample.pred is None else int(sample.pred)
            if sample.harness_correct is not None:
                correct = bool(sample.harness_correct >= 0.5)
            else:
                correct = bool(sample.gold >= 0 and pred == sample.gold)
            nan = float("nan")
            row = {
                "readout": GENERATED,
                "gold": int(sample.gold),
                "pred": pred,
                "correct": correct,
                "confidence": nan,
                "entropy": nan,
                "option_mass": nan,
                "option_scores": [],
                "option_logits": [],
                "generated": sample.generated,
                "status": "ok",
            }
        else:
            scores = sample.loglik if readout == HARNESS_LOGLIK else sample.loglik_norm
            if scores is None:
                rows += [
                    {**common, **r} for r in unscorable_rows([readout], sample.gold, sample.n_options, "no scores")
                ]
                continue
            row = {**readout_row(readout, np.asarray(scores), sample.gold, float("nan")), "status": "ok"}
        rows.append({**common, **row})
    return rows


def to_records(log: TaskLog, model: str, dataset: str, scenario: str, prompt: str, fingerprint: str):
    """The records frame of one imported task (``mmcal.records`` columns; ``generated`` when present)."""
    readouts = readouts_of(log)
    rows = []
    for s in log.samples:
        for row in sample_rows(s, readouts, log):
            rows.append(
                {
                    **row,
                    "model": model,
                    "dataset": dataset,
                    "scenario": scenario,
                    "prompt": prompt,
                    "prompt_hash": f"{log.harness}:{log.task}",
                    "model_fingerprint": fingerprint,
                }
            )
    frame = to_frame(rows)
    if GENERATED not in readouts and "generated" in frame.columns:
        frame = frame.drop(columns="generated")
    return frame


# ---------------------------------------------------------------------------------------------
# The report


def summary(log: TaskLog, frame) -> dict:
    """What was imported, for ``mmcal import --json``: counts by status, our accuracy per readout next
    to the harness's own, what is unavailable and why, the quirks handled."""
    per_line = Counter(s.status for s in log.samples)
    ok = frame[frame["status"] == "ok"]
    accuracy = {r: float(g["correct"].mean()) for r, g in ok.groupby("readout")}
    out = {
        "harness": log.harness,
        "task": log.task,
        "version": log.version or "not in the files",
        "layout": log.layout,
        "files": log.files,
        "output_type": log.output_type,
        "lines": len(log.samples),
        "lines_ok": per_line.get("ok", 0),
        "lines_by_status": dict(sorted(per_line.items())),
        "rows": len(frame),
        "splits": {k: int(v) for k, v in frame.drop_duplicates("item_id")["split"].value_counts().sort_index().items()},
        "accuracy": accuracy,
        "harness_metric": log.metric,
        "harness_reported": log.reported,
        "quirks": log.quirks,
    }
    checks = {}
    for readout, ours in accuracy.items():
        key = "acc_norm" if readout == HARNESS_LOGLIK_NORM else "acc"
        theirs = log.reported.get(key)
        if theirs is not None:
            checks[readout] = {"ours": ours, "harness": theirs, "equal": abs(ours - theirs) < 1e-9}
    if "circular_accuracy" in log.reported and "circular_accuracy_ours" in log.reported:
        ours, theirs = log.reported["circular_accuracy_ours"], log.reported["circular_accuracy"]
        checks["circular"] = {"ours": ours, "harness": theirs, "equal": abs(ours - theirs) < 1e-9}
    out["accuracy_check"] = checks
    if log.output_type != "multiple_choice":
        out["not_available"] = {
            "metrics": "every metric but accuracy (ECE, Brier, NLL, AUROC, AURC, conformal sets, ...)",
            "reason": f"{log.harness} logged only the generated answer for {log.task!r}: no confidence",
        }
    return out
