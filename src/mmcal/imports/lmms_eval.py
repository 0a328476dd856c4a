"""lmms-eval ``--log_samples`` output -> :class:`~mmcal.imports.common.TaskLog`, every known layout.

Layouts (read from lmms-eval's source at each tag):

- v0.1.0 - v0.2.3: ``<task>.json`` = ``{"args", "model_configs", "logs": [...], "time"}``; each log
  entry has ``doc_id``, ``target``, ``doc``, ``arguments`` (per request ``[context, continuation,
  doc_id, task, split]``), ``resps``, ``filtered_resps`` (numbers as numbers) and the metrics; the
  aggregates are in ``results.json`` (no version field).
- v0.2.4 - v0.3.x: ``<date>_samples_<task>.jsonl`` + ``<date>_results.json``; numbers stringified
  (``sanitize_list``), ``input`` = the first request's arguments, ``doc`` kept.
- v0.4 on: the same files without ``doc`` and ``arguments`` (``input`` = the first context): the
  options and gold come from the data set, joined by ``doc_id`` (``items``: an mmcal ``items.jsonl``
  whose ``metadata.row`` is the harness's row, e.g. built by ``hub_mcq`` from the same source);
  v0.7 writes ``lmms_eval_version`` into the results and flattens one-request lines
  (``filtered_resps`` a string for generation).

``multiple_choice`` (image MCQ, e.g. ``seedbench_ppl``): the per-option value is what the model's
``loglikelihood`` returned, the **mean token NLL** of the continuation (``loss``) for llava_hf and
the other LLaVA-style models: ``harness_loglik`` = -NLL. Up to v0.2.4 the task predicted ``argmax``
of those losses (issue #370; ``argmin`` since PR #389, v0.3.0): the importer always predicts the
argmin, and counts the lines where the logged ``acc`` follows the other convention. Logged values
that are all <= 0 are log-likelihoods already (a model returning -loss) and are taken as they are.
"""

from __future__ import annotations

import re
from pathlib import Path

import numpy as np

from mmcal.errors import DataError
from mmcal.imports.common import (
    ItemIndex,
    Sample,
    TaskLog,
    as_float,
    collect_samples,
    letter_index,
    options_in_prompt,
    parse_letter,
    read_json,
    read_jsonl,
)

HARNESS = "lmms-eval"
FIXED_IN = (0, 3, 0)  # argmin of the NLL from this version on (PR #389)
_SAMPLES = re.compile(r"^(?P<date>[\d_T:\-\.]+)_samples_(?P<task>.+)\.jsonl$")
_NOT_METRICS = {"doc_id", "doc", "target", "arguments", "resps", "filtered_resps", "input", "doc_hash"}
_NOT_METRICS |= {"token_counts", "input_media", "prompt_hash", "target_hash", "filter", "metrics"}


def find_logs(files: list[Path]) -> tuple[dict[str, list[tuple[Path, str]]], dict]:
    """Per task its log files with their layout (``jsonl`` or ``logs-json``) and the merged results."""
    tasks: dict[str, list[tuple[Path, str]]] = {}
    results: dict = {}
    for f in files:
        match = _SAMPLES.match(f.name)
        if match:
            tasks.setdefault(match.group("task"), []).append((f, "jsonl"))
            continue
        if f.suffix != ".json":
            continue
        data = read_json(f)
        if not isinstance(data, dict):
            continue
        if "logs" in data and isinstance(data["logs"], list):  # <= v0.2.3: <task>.json
            tasks.setdefault(f.stem, []).append((f, "logs-json"))
        elif "results" in data:
            results.setdefault("files", []).append(str(f))
            for key in ("results", "configs", "versions"):
                results.setdefault(key, {}).update(data.get(key) or {})
            if data.get("lmms_eval_version"):
                results["lmms_eval_version"] = data["lmms_eval_version"]
    return tasks, results


def _version_tuple(version: str | None) -> tuple[int, ...] | None:
    """(major, minor, patch) of a release number; None for anything else. lmms-eval 0.7 writes
    ``lmms_eval_version`` as ``<git branch>@<commit>`` ("unknown@unknown" for a pip install)."""
    match = re.match(r"^v?(\d+)\.(\d+)(?:\.(\d+))?$", str(version or "").strip())
    return tuple(int(n or 0) for n in match.groups()) if match else None


def read_task(
    task: str,
    files: list[tuple[Path, str]],
    results: dict,
    items: ItemIndex | None = None,
    metric: str | None = None,
    id_field: str | None = None,
    cluster_field: str | None = None,
) -> TaskLog:
    config = (results.get("configs") or {}).get(task) or {}
    entries = []  # (where, object or None, error)
    layouts = set()
    for f, layout in files:
        layouts.add(layout)
        if layout == "logs-json":
            for i, obj in enumerate(read_json(f)["logs"]):
                entries.append((f"{f}:logs[{i}]", obj if isinstance(obj, dict) else None, "not a JSON object"))
        else:
            entries += [(f"{f}:{lineno}", obj, err) for lineno, obj, err in read_jsonl(f)]
    has_doc = any(obj is not None and "doc" in obj for _, obj, _ in entries)
    output_type = config.get("output_type") or _guess_output_type(entries)
    version = results.get("lmms_eval_version")
    layout = _layout_name(layouts, has_doc) + (" (results with lmms_eval_version: 0.7 on)" if version else "")
    log = TaskLog(
        harness=HARNESS,
        task=task,
        samples=[],
        version=version,
        layout=layout,
        files=[str(f) for f, _ in files] + list(results.get("files", [])),
        output_type=output_type,
    )
    stringified = collect_samples(
        log,
        entries,
        lambda sample, obj: _fill(sample, obj, output_type, items, metric, log),
        id_field,
        cluster_field,
    )
    _reported(log, results.get("results", {}).get(task, {}))
    if stringified:
        log.quirks.append("numbers are logged as strings (sanitize_list, v0.2.4 on): parsed back")
    if version and _version_tuple(version) is None:
        log.quirks.append(f"lmms_eval_version is {version!r} (git branch@commit, not a release number)")
    if not has_doc and items is None:
        log.quirks.append(
            "the lines carry no doc (v0.4 on) and no items were given: the gold from the target, the number "
            "of options from the prompt's lettered lines"
        )
    elif not has_doc:
        log.quirks.append(f"the lines carry no doc (v0.4 on): joined to {items.path} by doc_id = metadata.row")
    if output_type == "multiple_choice":
        _nll_convention(log)
    return log


def _layout_name(layouts: set[str], has_doc: bool) -> str:
    if "logs-json" in layouts:
        return "lmms-eval <= 0.2.3: <task>.json with logs"
    if has_doc:
        return "lmms-eval 0.2.4-0.3.x: <date>_samples_<task>.jsonl with doc and arguments"
    return "lmms-eval >= 0.4: <date>_samples_<task>.jsonl without doc and arguments"


def _guess_output_type(entries) -> str:
    for _, obj, _ in entries:
        if obj is None:
            continue
        fr = obj.get("filtered_resps")
        if isinstance(fr, list) and fr and all(_pair(r) is not None for r in fr):
            return "multiple_choice"
        return "generate_until"
    return "multiple_choice"


def _pair(value):
    """``[value, is_greedy]``, also wrapped once more (``[[value, is_greedy]]``), else None."""
    while isinstance(value, list) and len(value) == 1 and isinstance(value[0], (list, tuple)):
        value = value[0]
    return list(value) if isinstance(value, (list, tuple)) and len(value) == 2 else None


def _fill(sample: Sample, obj: dict, output_type: str, items: ItemIndex | None, metric, log: TaskLog) -> bool:
    where = sample.source
    if "doc_id" not in obj:
        raise DataError(f"{where}: no doc_id")
    sample.doc_id = int(obj["doc_id"])
    prompt, continuations = _prompt_and_continuations(obj)
    target = obj.get("target")
    if items is not None:
        items.join(sample, prompt)
        if sample.status != "ok":
            return False
    if output_type == "multiple_choice":
        resps = obj.get("filtered_resps")
        pairs = [_pair(r) for r in resps] if isinstance(resps, list) else None
        if not pairs or any(p is None for p in pairs):
            raise DataError(f"{where}: filtered_resps is not one [value, is_greedy] per option")
        stringified = any(isinstance(p[0], str) for p in pairs)
        values = [as_float(p[0], where) for p in pairs]
        if sample.options is None and len(continuations) == len(values):
            sample.options = [c[1:] if c.startswith(" ") else c for c in continuations]
        if sample.options is not None and len(sample.options) != len(values):
            raise DataError(f"{where}: {len(values)} logged options, the data set's item has {len(sample.options)}")
        sample.n_options = len(values)
        sample.meta["logged_values"] = values
        if sample.gold < 0:
            sample.gold = _gold(target, sample.options, sample.n_options, where)
        elif target is not None and sample.options and str(target) in sample.options:
            if sample.options.index(str(target)) != sample.gold:
                raise DataError(f"{where}: the logged target {target!r} is not the joined item's gold option")
        sample.harness_correct = _number(obj.get("acc"))
        sample.harness_correct_norm = _number(obj.get("acc_norm"))
        log.metric = "acc"
        return stringified
    generated = obj.get("filtered_resps")
    while isinstance(generated, list) and generated:
        generated = generated[0]
    sample.generated = None if generated is None else str(generated)
    if sample.n_options == 0:
        sample.n_options = options_in_prompt(prompt)
    if sample.gold < 0:
        sample.gold = _gold(target, sample.options, sample.n_options, where)
    name = metric or log.metric or _first_metric(obj)
    log.metric = name
    verdict = obj.get(name) if name else None
    if isinstance(verdict, dict) and verdict.get("pred") is not None:  # e.g. seedbench: {pred, answer, ...}
        sample.pred = parse_letter(str(verdict["pred"]), sample.n_options, sample.options)
        answer = verdict.get("answer")
        sample.harness_correct = float(str(verdict["pred"]).lower().strip() == str(answer).lower().strip())
    else:
        sample.pred = parse_letter(sample.generated, sample.n_options, sample.options)
        sample.harness_correct = _number(verdict)
    if sample.harness_correct is None:
        raise DataError(f"{where}: no per-sample verdict {name!r} in the line")
    return False


def _prompt_and_continuations(obj: dict) -> tuple[str | None, list[str]]:
    """The logged prompt and, when the line has them, every request's continuation. Up to 0.2.3
    ``arguments`` is every request's serialisable arguments in one flat list ((context, continuation,
    doc_id, task, split) per request); 0.2.4-0.3.x keep ``input`` (the first context) and replace
    ``arguments`` with the characters of the first continuation (``enumerate`` of a string)."""
    args = obj.get("arguments")
    continuations = []
    prompt = obj.get("input") if isinstance(obj.get("input"), str) else None
    n = len(obj["filtered_resps"]) if isinstance(obj.get("filtered_resps"), list) else 0
    if isinstance(args, list) and args and all(isinstance(a, (list, tuple)) for a in args):  # per request
        prompt = prompt or (args[0][0] if args[0] and isinstance(args[0][0], str) else None)
        continuations = [a[1] for a in args if len(a) > 1 and isinstance(a[1], str)]
    elif isinstance(args, list) and n and len(args) % n == 0 and len(args) // n >= 2:  # <= 0.2.3: flat
        width = len(args) // n
        requests = [args[i : i + width] for i in range(0, len(args), width)]
        if all(isinstance(r[0], str) and isinstance(r[1], str) for r in requests):
            prompt = prompt or requests[0][0]
            continuations = [r[1] for r in requests]
    return prompt, continuations


def _gold(target, options, n_options: int, where: str) -> int:
    if target is None:
        raise DataError(f"{where}: no target and no data set to take the gold answer from")
    text = str(target)
    if options and text in options:
        return options.index(text)
    index = letter_index(text, n_options)
    if index is None:
        raise DataError(f"{where}: target {text!r} is no option letter, index or (known) option text")
    return index


def _number(value) -> float | None:
    try:
        return None if value is None else float(value)
    except (TypeError, ValueError):
        return None


def _first_metric(obj: dict) -> str | None:
    for key, value in obj.items():
        if key not in _NOT_METRICS and not key.endswith("_hash") and isinstance(value, (int, float, dict)):
            return key
    return None


def _reported(log: TaskLog, task_results: dict) -> None:
    for key, value in task_results.items():
        name, _, _ = key.partition(",")
        if name.endswith("_stderr") or "stderr" in name or not isinstance(value, (int, float)):
            continue
        if log.output_type == "multiple_choice" and name in ("acc", "acc_norm"):
            log.reported[name] = float(value)
        elif log.output_type != "multiple_choice" and name == log.metric:
            log.reported["acc"] = float(value)


def _nll_convention(log: TaskLog) -> None:
    """Turn the logged values into log-likelihoods and check which prediction the logged acc used."""
    ok = [s for s in log.samples if s.status == "ok"]
    values = [v for s in ok for v in s.meta["logged_values"]]
    as_loglik = bool(values) and max(values) <= 0 < -min(values) and min(values) < 0
    for s in ok:
        v = np.asarray(s.meta.pop("logged_values"))
        s.loglik = (v if as_loglik else -v).tolist()
        if s.harness_correct_norm is not None and s.options:
            lengths = np.array([max(len(o), 1) for o in s.options], dtype=float)
            s.loglik_norm = (np.asarray(s.loglik) / lengths).tolist()
    if as_loglik:
        log.quirks.append("every logged value is <= 0: taken as log-likelihoods (not the usual mean NLL)")
    else:
        log.quirks.append(
            "per-option value = the mean token NLL of the continuation (the model's loss): harness_loglik = -NLL"
        )
    judged = [s for s in ok if s.harness_correct is not None and s.gold >= 0]
    if not judged:
        return
    by_min = sum((int(np.argmax(s.loglik)) == s.gold) == (s.harness_correct >= 0.5) for s in judged)
    by_max = sum((int(np.argmin(s.loglik)) == s.gold) == (s.harness_correct >= 0.5) for s in judged)
    version = _version_tuple(log.version)
    buggy = version < FIXED_IN if version else by_max > by_min
    if buggy:
        log.quirks.append(
            f"the logged acc takes the argmax of the NLL (lmms-eval <= 0.2.4, issue #370; fixed in PR #389): "
            f"the prediction is recomputed as the most likely option; {len(judged) - by_min} of {len(judged)} "
            "lines disagree with the logged acc"
        )
        # the harness's number is the buggy one: kept under its own name, never compared as "acc"
        log.reported = {f"{k}_as_logged": v for k, v in log.reported.items()}
        buggy_rule = float(np.mean([int(np.argmin(s.loglik)) == s.gold for s in judged]))
        log.quirks.append(
            f"the logged rule (argmax of the NLL) recomputed from the logged values: accuracy {buggy_rule:.6g}"
        )
    else:
        log.quirks.append(f"the logged acc takes the most likely option: agrees on {by_min} of {len(judged)} lines")
