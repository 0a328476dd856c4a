"""lm-evaluation-harness ``--log_samples`` output -> :class:`~mmcal.imports.common.TaskLog`.

Files (0.4.x): ``samples_<task>_<date>.jsonl`` (one line per document and filter) and
``results_<date>.json`` (aggregates, each task's config, ``lm_eval_version``). A line holds ``doc_id``,
``doc`` (the data set row), ``target``, ``arguments`` (per request the context ``arg_0`` and the
continuation ``arg_1``), ``resps``/``filtered_resps`` and the per-sample metrics.

- ``multiple_choice``: ``filtered_resps`` is one ``[loglik, is_greedy]`` per option in
  ``doc_to_choice`` order; loglik is the **summed** log-probability of the option's continuation
  (``harness_loglik``). The harness predicts ``argmax(loglik)`` (``acc``) and ``argmax(loglik /
  len(choice))`` with the length in characters (``acc_norm``: ``harness_loglik_norm``); the choice
  text is the continuation less the task's ``target_delimiter`` (default " "). With
  ``acc_mutual_info`` the second half of the requests are unconditional and are left out.
- ``generate_until``: ``resps`` holds the generated text, ``filtered_resps`` the filtered answer;
  ``generated`` keeps the raw text and the harness's per-sample metric is the verdict.
- Values are written as strings in 0.4.x (``["-20.19", "False"]``): parsed, and said so.
"""

from __future__ import annotations

import re
from pathlib import Path

from mmcal.errors import DataError
from mmcal.imports.common import (
    Sample,
    TaskLog,
    as_bool,
    as_float,
    collect_samples,
    letter_index,
    options_in_prompt,
    parse_letter,
    read_json,
    read_jsonl,
)

HARNESS = "lm-eval"
_SAMPLES = re.compile(r"^samples_(?P<task>.+)_(?P<date>\d{4}-\d{2}-\d{2}T[\d\-\.]+)\.jsonl$")


def find_logs(files: list[Path]) -> tuple[dict[str, list[Path]], dict]:
    """Sample files by task and the merged results files (``results_*.json``)."""
    tasks: dict[str, list[Path]] = {}
    results: dict = {}
    for f in files:
        match = _SAMPLES.match(f.name)
        if match:
            tasks.setdefault(match.group("task"), []).append(f)
        elif f.suffix == ".jsonl":
            tasks.setdefault(f.stem.removeprefix("samples_"), []).append(f)
        elif f.suffix == ".json":
            data = read_json(f)
            if isinstance(data, dict) and "results" in data and "configs" in data:
                results.setdefault("files", []).append(str(f))
                for key in ("results", "configs", "versions"):
                    results.setdefault(key, {}).update(data.get(key) or {})
                for key in ("lm_eval_version", "transformers_version", "model_name"):
                    if data.get(key) is not None:
                        results[key] = data[key]
    return tasks, results


def read_task(
    task: str,
    files: list[Path],
    results: dict,
    id_field: str | None = None,
    cluster_field: str | None = None,
    metric: str | None = None,
    filter_name: str | None = None,
) -> TaskLog:
    config = (results.get("configs") or {}).get(task) or {}
    lines = [(f, lineno, obj, err) for f in files for lineno, obj, err in read_jsonl(f)]
    filters = sorted({obj.get("filter", "none") for _, _, obj, _ in lines if obj is not None})
    chosen = filter_name or (filters[0] if filters else "none")
    if filter_name and filter_name not in filters:
        raise DataError(f"lm-eval task {task!r}: no lines of filter {filter_name!r}; the logs have {filters}")
    output_type = config.get("output_type") or _guess_output_type(lines)
    log = TaskLog(
        harness=HARNESS,
        task=task,
        samples=[],
        version=results.get("lm_eval_version"),
        layout="lm-eval 0.4 samples_<task>_<date>.jsonl"
        + (" + results_<date>.json" if results else " (no results file)"),
        files=[str(f) for f in files] + list(results.get("files", [])),
        output_type=output_type,
    )
    if len(filters) > 1:
        log.quirks.append(f"filters {filters}: the lines of filter {chosen!r} are imported (choose with filter:)")
    delimiter = config.get("target_delimiter", " ")
    entries = [
        (f"{f}:{lineno}", obj, err)
        for f, lineno, obj, err in lines
        if obj is None or obj.get("filter", "none") == chosen
    ]
    stringified = collect_samples(
        log,
        entries,
        lambda sample, obj: _fill(sample, obj, output_type, delimiter, metric, log),
        id_field,
        cluster_field,
    )
    _reported(log, results.get("results", {}).get(task, {}), chosen)
    if stringified:
        log.quirks.append("numbers are logged as strings (lm-eval 0.4 writes resps as text): parsed back")
    if output_type == "multiple_choice":
        log.quirks.append(
            "per-option score = the summed log-probability of the option's continuation (harness_loglik); "
            "acc_norm divides it by the option's length in characters (harness_loglik_norm)"
        )
        _count_disagreements(log)
    return log


def _guess_output_type(lines) -> str:
    for _, _, obj, _ in lines:
        if obj is None:
            continue
        fr = obj.get("filtered_resps")
        if isinstance(fr, list) and fr and isinstance(fr[0], list) and len(fr[0]) == 2:
            return "multiple_choice"
        return "generate_until"
    return "multiple_choice"


def _fill(sample: Sample, obj: dict, output_type: str, delimiter: str, metric: str | None, log: TaskLog) -> bool:
    """Parse one line into ``sample``; returns whether numbers were strings."""
    where = sample.source
    if "doc_id" not in obj:
        raise DataError(f"{where}: no doc_id")
    sample.doc_id = int(obj["doc_id"])
    continuations, prompt = _arguments(obj.get("arguments"))
    if output_type == "multiple_choice":
        resps = obj.get("filtered_resps")
        if not isinstance(resps, list) or not resps:
            raise DataError(f"{where}: no filtered_resps")
        if "acc_mutual_info" in obj and len(resps) % 2 == 0:  # then the unconditional requests
            half = len(resps) // 2
            resps, continuations = resps[:half], continuations[:half]
        pairs = [r[0] if isinstance(r, list) and len(r) == 1 and isinstance(r[0], list) else r for r in resps]
        if not all(isinstance(p, list) and len(p) == 2 for p in pairs):
            raise DataError(f"{where}: filtered_resps is not one [loglik, is_greedy] per option")
        stringified = any(isinstance(p[0], str) for p in pairs)
        sample.loglik = [as_float(p[0], where) for p in pairs]
        sample.meta["is_greedy"] = [as_bool(p[1]) for p in pairs]
        sample.n_options = len(pairs)
        options = [c[len(delimiter) :] if c.startswith(delimiter) else c for c in continuations]
        if len(options) == sample.n_options:
            sample.options = options
            if "acc_norm" in obj:
                sample.loglik_norm = [ll / max(len(o), 1) for ll, o in zip(sample.loglik, options)]
        sample.gold = _gold(obj.get("target"), sample.options, sample.n_options, where)
        sample.harness_correct = _verdict(obj.get("acc"))
        sample.harness_correct_norm = _verdict(obj.get("acc_norm"))
        log.metric = "acc"
        return stringified
    # generate_until
    raw = obj.get("resps")
    filtered = obj.get("filtered_resps")
    sample.generated = _first_text(raw) if raw is not None else _first_text(filtered)
    answer = _first_text(filtered)
    sample.n_options = options_in_prompt(prompt)
    sample.gold = _gold(obj.get("target"), None, sample.n_options, where)
    sample.pred = parse_letter(answer, sample.n_options)
    if sample.pred < 0:
        sample.pred = parse_letter(sample.generated, sample.n_options)
    name = metric or _first_metric(obj)
    log.metric = name
    if name is None:
        raise DataError(f"{where}: no per-sample metric to take the harness's verdict from")
    sample.harness_correct = _verdict(obj.get(name))
    sample.meta["filtered_answer"] = answer
    return False


def _arguments(arguments) -> tuple[list[str], str | None]:
    """The continuations (arg_1) of every request and the first context (arg_0)."""
    conts, prompt = [], None
    if isinstance(arguments, dict):  # 0.4.x: {"gen_args_0": {"arg_0": ctx, "arg_1": cont}, ...}
        for key in sorted(arguments, key=lambda k: int(re.sub(r"\D", "", k) or 0)):
            args = arguments[key]
            if isinstance(args, dict):
                prompt = prompt if prompt is not None else args.get("arg_0")
                if isinstance(args.get("arg_1"), str):
                    conts.append(args["arg_1"])
    elif isinstance(arguments, list):  # older 0.4: [[ctx, cont], ...]
        for args in arguments:
            if isinstance(args, list) and args:
                prompt = prompt if prompt is not None else args[0]
                if len(args) > 1 and isinstance(args[1], str):
                    conts.append(args[1])
    return conts, prompt


def _first_text(value) -> str | None:
    while isinstance(value, list) and value:
        value = value[0]
    return None if value is None or isinstance(value, list) else str(value)


def _gold(target, options, n_options: int, where: str) -> int:
    if isinstance(target, list):
        raise DataError(f"{where}: several gold options ({target}); one is needed")
    if options and isinstance(target, str) and target in options and not target.strip().isdigit():
        return options.index(target)
    index = letter_index(target, n_options)
    if index is None and options and str(target) in options:
        index = options.index(str(target))
    if index is None:
        raise DataError(f"{where}: target {target!r} is no option index, letter or option text")
    return index


def _verdict(value) -> float | None:
    if value is None:
        return None
    if isinstance(value, dict):  # {"pred": ..., "answer": ...} (lmms-eval style)
        pred, answer = value.get("pred"), value.get("answer")
        if pred is None or answer is None:
            return None
        return float(str(pred).lower().strip() == str(answer).lower().strip())
    try:
        return float(value)
    except (TypeError, ValueError):
        return None


_NOT_METRICS = {"doc_id", "doc", "target", "arguments", "resps", "filtered_resps", "filter", "metrics"}


def _first_metric(obj: dict) -> str | None:
    names = obj.get("metrics")
    if isinstance(names, list) and names:
        return str(names[0])
    for key, value in obj.items():
        if key not in _NOT_METRICS and not key.endswith("_hash") and isinstance(value, (int, float)):
            return key
    return None


def _reported(log: TaskLog, task_results: dict, filter_name: str) -> None:
    """The harness's own aggregates of this task: ``acc``/``acc_norm`` (multiple choice) or the
    mean of the per-sample metric (generation), under the chosen filter."""
    for key, value in task_results.items():
        name, _, flt = key.partition(",")
        if flt != filter_name or name.endswith("_stderr") or not isinstance(value, (int, float)):
            continue
        if log.output_type == "multiple_choice" and name in ("acc", "acc_norm"):
            log.reported[name] = float(value)
        elif log.output_type != "multiple_choice" and name == log.metric:
            log.reported["acc"] = float(value)


def _count_disagreements(log: TaskLog) -> None:
    """argmax of the logged scores against the logged acc/acc_norm, line by line."""
    import numpy as np

    for attr, norm in (("harness_correct", False), ("harness_correct_norm", True)):
        ok = [s for s in log.samples if s.status == "ok" and getattr(s, attr) is not None]
        scores = [(s.loglik_norm if norm else s.loglik) for s in ok]
        pairs = [(s, sc) for s, sc in zip(ok, scores) if sc is not None]
        if not pairs:
            continue
        bad = sum((int(np.argmax(sc)) == s.gold) != bool(getattr(s, attr) >= 0.5) for s, sc in pairs)
        name = "acc_norm" if norm else "acc"
        agree = len(pairs) - bad
        log.quirks.append(
            f"{name}: argmax of the logged scores agrees with the logged {name} on {agree} of {len(pairs)} lines"
        )
