"""VLMEvalKit outputs -> :class:`~mmcal.imports.common.TaskLog` (generation only: no probabilities).

Files (read from VLMEvalKit's ``vlmeval/dataset/image_mcq.py`` and ``utils/multiple_choice.py``):

- ``<model>_<dataset>.xlsx`` (or ``.tsv``/``.csv``, the ``PRED_FORMAT``): the data set's columns
  (``index``, ``question``, ``hint``, the options ``A``..``J``, ``answer`` letter, ...) and the model's
  ``prediction`` text, one row per question; MMBench-style circular sets repeat each question with
  its options rotated under ``index + k * 1e6``.
- ``<model>_<dataset>_<judge>_result.xlsx``: the judge's verdict ``hit`` and its ``log``. Plain sets:
  every row. Circular sets (the name holds mmbench/ccbench/circular/mmcr): one row per question
  (``index == g_index``), ``hit`` = every rotation right.
- With an LLM judge, a prediction no pass could match becomes a **random option** (log "Failed to
  predict, thus randomly generate one."); under ``exact_matching`` it becomes "Z" (always wrong).

Records: one ``generated`` row per prediction row; ``pred`` the option VLMEvalKit's exact matching
reads in the text (:func:`match_answer`), ``correct`` the judge's ``hit`` where it judged that row
alone, else ``pred == gold``; a random fallback is flagged (``meta.random_fallback``) and counts
as no answer (its hit was chance). Circular rotations of a question share one cluster
(``index mod 1e6``). The report gives the per-row accuracy and, for circular sets, the group
accuracy next to the judge's.
"""

from __future__ import annotations

import csv
import re
import xml.etree.ElementTree as ET
import zipfile
from pathlib import Path

from mmcal import LETTERS
from mmcal.errors import DataError
from mmcal.imports.common import Sample, TaskLog, letter_index

HARNESS = "vlmevalkit"
RANDOM_FALLBACK = "Failed to predict, thus randomly generate one"
CIRCULAR_NAMES = ("mmbench", "ccbench", "circular", "mmcr")
CIRCULAR_STEP = 1_000_000
_NS = {"m": "http://schemas.openxmlformats.org/spreadsheetml/2006/main"}


def read_table(path: Path) -> list[dict]:
    """Rows of an ``.xlsx`` (first sheet; read with the standard library), ``.tsv`` or ``.csv``."""
    if path.suffix == ".xlsx":
        return _read_xlsx(path)
    delimiter = "\t" if path.suffix == ".tsv" else ","
    with path.open(encoding="utf-8", newline="") as fh:
        return list(csv.DictReader(fh, delimiter=delimiter))


def _read_xlsx(path: Path) -> list[dict]:
    try:
        with zipfile.ZipFile(path) as z:
            shared = []
            if "xl/sharedStrings.xml" in z.namelist():
                for si in ET.fromstring(z.read("xl/sharedStrings.xml")).findall("m:si", _NS):
                    shared.append("".join(t.text or "" for t in si.iter(f"{{{_NS['m']}}}t")))
            sheet = sorted(n for n in z.namelist() if n.startswith("xl/worksheets/sheet"))[0]
            root = ET.fromstring(z.read(sheet))
    except (zipfile.BadZipFile, IndexError, ET.ParseError, KeyError) as exc:
        raise DataError(f"{path}: not a readable .xlsx file ({exc})") from None
    table = []
    for row in root.iter(f"{{{_NS['m']}}}row"):
        cells = {}
        for c in row.findall("m:c", _NS):
            col = re.match(r"[A-Z]+", c.get("r", "")).group(0)
            kind, v = c.get("t"), c.find("m:v", _NS)
            if kind == "s" and v is not None:
                cells[col] = shared[int(v.text)]
            elif kind == "inlineStr":
                cells[col] = "".join(t.text or "" for t in c.iter(f"{{{_NS['m']}}}t"))
            elif kind == "b" and v is not None:
                cells[col] = v.text == "1"
            elif v is not None and v.text is not None:
                cells[col] = v.text if kind == "str" else _number(v.text)
        table.append(cells)
    if not table:
        return []
    header = table[0]
    order = sorted(header, key=lambda col: (len(col), col))
    return [{str(header[col]): r.get(col) for col in order} for r in table[1:]]


def _number(text: str):
    value = float(text)
    return int(value) if value.is_integer() else value


_PUNCTUATION = re.compile(r"[.()\[\],:;!*#{}]")
_ANSWER_IS = re.compile(r"(?i)(?:correct\s+)?answer\s+is\s+\**([A-D])\**")


def match_answer(prediction: str | None, options: list[str]) -> int:
    """The option VLMEvalKit's exact matching (``can_infer``, vlmeval/utils/matching_util.py at
    e8e78f05) reads in a prediction; -1 when it reads none. First the letters: with punctuation as
    spaces, exactly one option letter among the words and among the last five of them; then "answer
    is X"; then the option texts: a prediction at most twice the options' total length that contains
    exactly one option's text (case-insensitive)."""
    if prediction is None:
        return -1
    letters = LETTERS[: len(options)]
    words = _PUNCTUATION.sub(" ", prediction).split()
    found = [c for c in letters if c in words]
    if len(found) == 1 and words.index(found[0]) > len(words) - 5:
        return letters.index(found[0])
    match = _ANSWER_IS.search(prediction)
    if match and match.group(1).upper() in letters:
        return letters.index(match.group(1).upper())
    lowered = prediction.lower()
    if len(lowered) <= 2 * sum(len(o) for o in options):
        hits = [i for i, o in enumerate(options) if o.lower() in lowered]
        if len(hits) == 1:
            return hits[0]
    return -1


def find_logs(files: list[Path]) -> dict[str, dict]:
    """Per prediction file stem ``<model>_<dataset>``: its prediction file and its judge's result file
    ``<stem>_<judge>_result`` (the judge's name may hold underscores: "exact_matching")."""
    tables = [f for f in files if f.suffix in (".xlsx", ".tsv", ".csv")]
    results = [f for f in tables if f.stem.endswith("_result")]
    out: dict[str, dict] = {
        f.stem: {"prediction": f}
        for f in tables
        if f not in results and not f.stem.endswith(("_acc", "_score", "_detailed_results"))
    }
    for f in results:
        stems = [p for p in out if f.stem.startswith(p + "_")]
        if not stems:
            raise DataError(f"{f}: a VLMEvalKit result file without its prediction file <model>_<dataset>.xlsx")
        stem = max(stems, key=len)
        out[stem].update(result=f, judge=f.stem[len(stem) + 1 : -len("_result")])
    return out


def read_task(task: str, found: dict, dataset_name: str | None = None) -> TaskLog:
    pred_rows = read_table(found["prediction"])
    result_rows = read_table(found["result"]) if "result" in found else []
    name = (dataset_name or task).lower()
    circular = any(k in name for k in CIRCULAR_NAMES) or any(
        _int(r.get("index"), -1) >= CIRCULAR_STEP for r in pred_rows
    )
    log = TaskLog(
        harness=HARNESS,
        task=task,
        samples=[],
        version=None,
        layout="VLMEvalKit <model>_<dataset> prediction file" + (" + _result file" if result_rows else ""),
        files=[str(found["prediction"])] + ([str(found["result"])] if "result" in found else []),
        output_type="generate_until",
        metric="hit",
    )
    verdicts = {_int(r.get("index"), None): r for r in result_rows}
    for i, row in enumerate(pred_rows):
        sample = Sample(source=f"{found['prediction']}:row {i + 2}", doc_id=_int(row.get("index"), None))
        log.samples.append(sample)
        _fill(sample, row, verdicts, circular)
    _report(log, result_rows, circular)
    return log


def _int(value, default):
    try:
        return int(float(value))
    except (TypeError, ValueError):
        return default


def _fill(sample: Sample, row: dict, verdicts: dict, circular: bool) -> None:
    if sample.doc_id is None:
        sample.status = "no index"
        return
    options = []
    for letter in LETTERS:
        value = row.get(letter)
        if value is None or (isinstance(value, float) and value != value) or str(value).strip() in ("", "nan"):
            break
        options.append(str(value))
    if not options:
        sample.status = "no options (columns A, B, ...)"
        return
    sample.options, sample.n_options = options, len(options)
    gold = letter_index(row.get("answer"), len(options))
    if gold is None:
        sample.status = f"answer {row.get('answer')!r} is no option letter"
        return
    sample.gold = gold
    group = sample.doc_id % CIRCULAR_STEP if circular else sample.doc_id
    sample.item_id = str(sample.doc_id)
    sample.cluster_id = str(group)
    prediction = row.get("prediction")
    sample.generated = None if prediction is None else str(prediction)
    sample.pred = match_answer(sample.generated, options)
    verdict = verdicts.get(sample.doc_id)
    sample.meta["circular_group"] = group if circular else None
    if verdict is not None:
        judge_log = str(verdict.get("log") or "")
        sample.meta["judge_log"] = judge_log[:300]
        sample.meta["judge_hit"] = _int(verdict.get("hit"), None)
        if RANDOM_FALLBACK in judge_log:
            sample.meta["random_fallback"] = True
            sample.pred = -1  # the judge's option was drawn at random: the model gave no answer
            sample.harness_correct = 0.0
        elif not circular and verdict.get("hit") is not None:
            sample.harness_correct = float(_int(verdict.get("hit"), 0))


def _report(log: TaskLog, result_rows: list[dict], circular: bool) -> None:
    ok = [s for s in log.samples if s.status == "ok"]
    fallbacks = sum(bool(s.meta.get("random_fallback")) for s in ok)
    if result_rows:
        hits = [_int(r.get("hit"), 0) for r in result_rows]
        log.reported["circular_accuracy" if circular else "acc"] = sum(hits) / len(hits)
        random_hits = sum(_int(r.get("hit"), 0) for r in result_rows if RANDOM_FALLBACK in str(r.get("log") or ""))
        if fallbacks:
            log.quirks.append(
                f"{fallbacks} predictions were replaced by a random option by the judge ({RANDOM_FALLBACK!r}): "
                f"imported as no answer; {random_hits} of them were hits by chance"
            )
            log.reported["without_random_hits"] = (sum(hits) - random_hits) / len(hits)
    if circular:
        groups: dict = {}
        for s in ok:
            right = bool(s.gold == s.pred) if s.harness_correct is None else s.harness_correct >= 0.5
            groups.setdefault(s.cluster_id, []).append(right)
        if groups:
            log.reported["circular_accuracy_ours"] = sum(all(g) for g in groups.values()) / len(groups)
        log.quirks.append(
            "circular evaluation: each question's rotations are one cluster; the judge's hit is per question "
            "(every rotation right) and is compared with circular_accuracy_ours, the rows keep their own answers"
        )
    else:
        judged = [s for s in ok if s.meta.get("judge_hit") is not None and not s.meta.get("random_fallback")]
        agree = sum((s.pred == s.gold) == bool(s.meta["judge_hit"]) for s in judged)
        if judged:
            log.quirks.append(f"the parsed answer agrees with the judge's hit on {agree} of {len(judged)} rows")
    log.quirks.append("VLMEvalKit logs no probabilities: generated answers only, accuracy is the only metric")
