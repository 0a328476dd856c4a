"""Evaluation-harness logs -> mmcal records: ``mmcal import {lm-eval,lmms-eval,vlmevalkit} PATH ...``.

One module per harness turns its files into :class:`~mmcal.imports.common.TaskLog` objects (every
line a :class:`~mmcal.imports.common.Sample`, the version and layout the files show, the quirks
found); :mod:`mmcal.imports.common` turns those into records (``mmcal.records``'s contract, imported
readouts) and a report. docs/imports.md says what each harness logs and what is checked.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from pathlib import Path

import pandas as pd

from mmcal.errors import DataError
from mmcal.hashing import path_sha256
from mmcal.imports import lm_eval, lmms_eval, vlmevalkit
from mmcal.imports.common import ItemIndex, TaskLog, assign_ids_and_splits, expand_paths, summary, to_records
from mmcal.plan import IMPORT_DEFAULT_SCENARIO

HARNESSES = (lm_eval.HARNESS, lmms_eval.HARNESS, vlmevalkit.HARNESS)
DEFAULT_SCENARIO = IMPORT_DEFAULT_SCENARIO
DEFAULT_CALIB_FRACTION = 0.3


@dataclass
class Imported:
    """One task of the logs as records, with its report (``summary``)."""

    log: TaskLog
    records: pd.DataFrame
    summary: dict
    run: dict  # model, dataset, scenario, prompt

    @property
    def relpath(self) -> str:
        from mmcal.plan import RECORDS

        return RECORDS.format(**self.run)


def read_logs(harness: str, paths, task: str | None = None, **options) -> list[TaskLog]:
    """Every task (or the one named) of the logs under ``paths`` (files or folders)."""
    if harness not in HARNESSES:
        raise DataError(f"unknown harness {harness!r}; known: {', '.join(HARNESSES)}")
    files = expand_paths(paths)
    items = ItemIndex(options.pop("items")) if options.get("items") else None
    options.pop("items", None)
    if harness == lm_eval.HARNESS:
        tasks, results = lm_eval.find_logs(files)
        kw = _only(options, "id_field", "cluster_field", "metric", "filter_name")

        def read(t):
            return lm_eval.read_task(t, tasks[t], results, **kw)

    elif harness == lmms_eval.HARNESS:
        tasks, results = lmms_eval.find_logs(files)
        kw = _only(options, "metric", "id_field", "cluster_field")

        def read(t):
            return lmms_eval.read_task(t, tasks[t], results, items, **kw)

    else:
        tasks = vlmevalkit.find_logs(files)

        def read(t):
            return vlmevalkit.read_task(t, tasks[t], options.get("dataset_name"))

    if not tasks:
        raise DataError(f"no {harness} sample logs among {[str(p) for p in paths]}")
    if task is not None:
        if task not in tasks:
            raise DataError(f"task {task!r} is not in the {harness} logs; they hold {sorted(tasks)}")
        return [read(task)]
    return [read(t) for t in sorted(tasks)]


def _only(options: dict, *keys) -> dict:
    return {k: options[k] for k in keys if options.get(k) is not None}


def import_logs(
    harness: str,
    paths,
    name: str,
    task: str | None = None,
    dataset: str | None = None,
    scenario: str | None = None,
    prompt: str | None = None,
    calib_fraction: float = DEFAULT_CALIB_FRACTION,
    **options,
) -> list[Imported]:
    """The records of every task (or ``task``) of the logs: model ``name``, dataset ``dataset`` (default:
    the task), scenario (default: image, blind for lm-eval), prompt (default: the harness)."""
    logs = read_logs(harness, paths, task, **options)
    if dataset is not None and len(logs) > 1:
        raise DataError(f"dataset {dataset!r} names one task's records, but the logs hold {[lg.task for lg in logs]}")
    out = []
    for log in logs:
        assign_ids_and_splits(log, calib_fraction)
        run = {
            "model": name,
            "dataset": dataset or log.task,
            "scenario": scenario or DEFAULT_SCENARIO[harness],
            "prompt": prompt or harness,
        }
        frame = to_records(log, **run, fingerprint=fingerprint(log))
        out.append(Imported(log, frame, summary(log, frame), run))
    return out


def fingerprint(log: TaskLog) -> str:
    """The records' model fingerprint: the harness and a hash of the log files' contents."""
    digest = hashlib.sha256("".join(sorted(path_sha256(f) for f in log.files)).encode()).hexdigest()
    return f"{log.harness}:{digest[:16]}"


def write_import(imported: Imported, out_path: str | Path) -> Path:
    """Write one task's records (the contract's writer) and return the path."""
    from mmcal.records import write_records

    write_records(imported.records, out_path)
    return Path(out_path)


def run_import_entry(
    name: str, entry: dict, run: dict, out_path: str | Path, report_path: str | Path, items: str | None = None
) -> dict:
    """The DAG's import job: the config entry ``imports.<name>`` (its run keys from
    ``mmcal.plan.import_runs``) -> one records file and its report (JSON)."""
    import json

    options = {k: entry[k] for k in ("id_field", "cluster_field", "metric") if entry.get(k) is not None}
    if entry.get("filter") is not None:
        options["filter_name"] = entry["filter"]
    imported = import_logs(
        entry["harness"],
        entry["paths"],
        run["model"],
        task=entry.get("task"),
        dataset=run["dataset"],
        scenario=run["scenario"],
        prompt=run["prompt"],
        calib_fraction=float(entry.get("calib_fraction", DEFAULT_CALIB_FRACTION)),
        items=items,
        dataset_name=entry.get("task"),
        **options,
    )
    if len(imported) != 1:
        raise DataError(
            f"imports.{name}: the logs hold the tasks {[i.log.task for i in imported]}; name one with task:"
        )
    write_import(imported[0], out_path)
    report = {**imported[0].summary, "records": str(out_path)}
    Path(report_path).parent.mkdir(parents=True, exist_ok=True)
    Path(report_path).write_text(json.dumps(report, indent=1, sort_keys=True) + "\n", encoding="utf-8")
    return report
