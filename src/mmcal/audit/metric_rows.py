"""From a number in ``data/metrics/*.csv`` to the records it came from and the table cells that print it.

``mmcal audit data/metrics/summary.csv --row 12`` (the 1-based data row) or ``--row "model=tiny-llava-stage2,
readout=letter_restricted"`` (column values that select exactly one row; a value may hold commas): the row's
keys and its metrics with their intervals, the records files its keys select (with their hashes), and every
cell of ``paper/tables/*.tex`` formatted from that row, each with the ``mmcal audit TABLE --cell`` command
that recomputes it from the records (:mod:`mmcal.audit.cells`).
"""

from __future__ import annotations

import json
import re
from pathlib import Path

import pandas as pd

from mmcal.audit.cells import RECORDS_PATTERN, sha256
from mmcal.errors import DataError
from mmcal.records import GROUP_KEYS, RUN_KEYS

KEY_COLUMNS = (*GROUP_KEYS, "split", "comparison", "metric", "recalibrator", "method", "a_label", "b_label")


def project_root(csv_path) -> Path:
    """The directory the workflow ran in: metric files live in ``<root>/data/metrics/``."""
    return Path(csv_path).absolute().parents[2]


def parse_row_spec(spec: str, columns) -> dict | int:
    """``"12"`` -> 11 (0-based); ``"a=x,b=y, z"`` -> {a: "x", b: "y, z"}: a comma starts a new key only when
    a column name and "=" follow it."""
    spec = spec.strip()
    if spec.isdigit():
        return int(spec) - 1
    names = "|".join(re.escape(c) for c in sorted(columns, key=len, reverse=True))
    parts = re.split(rf",\s*(?=(?:{names})=)", spec)
    out = {}
    for part in parts:
        key, sep, value = part.partition("=")
        if not sep or key.strip() not in columns:
            raise DataError(f"--row {spec!r}: {part!r} is not COLUMN=VALUE with a column of the file")
        out[key.strip()] = value.strip()
    return out


def select_row(frame: pd.DataFrame, spec: str, path) -> int:
    """The 0-based index of the one row ``spec`` names."""
    wanted = parse_row_spec(spec, frame.columns)
    if isinstance(wanted, int):
        if not 0 <= wanted < len(frame):
            raise DataError(f"{path}: no data row {wanted + 1} (the file has {len(frame)})")
        return wanted
    mask = pd.Series(True, index=frame.index)
    for key, value in wanted.items():
        mask &= frame[key].astype(str) == value
    hits = list(frame.index[mask])
    if len(hits) != 1:
        keys = [k for k in KEY_COLUMNS if k in frame.columns and k not in wanted]
        raise DataError(f"{path}: {wanted} selects {len(hits)} rows, not one; add keys among {keys}")
    return int(hits[0])


def cells_from_row(root: Path, csv_path, row_index: int) -> list[dict]:
    """Every table cell whose cell map says it was formatted from ``csv_path``'s data row ``row_index``."""
    target = Path(csv_path).resolve()
    out = []
    for cmap_path in sorted((root / "paper" / "tables").glob("*.cells.json")):
        cmap = json.loads(cmap_path.read_text())
        if (root / cmap["source"]).resolve() != target:
            continue
        table = cmap_path.with_name(cmap_path.name.removesuffix(".cells.json") + ".tex")
        for cell in cmap["cells"]:
            if cell["source_row"] == row_index:
                out.append({"table": str(table.relative_to(root)), **{k: cell[k] for k in ("row", "col", "printed")}})
    return out


def _interval_metrics(row: pd.Series) -> dict:
    return {
        k: [row[k], row[f"{k}_lo"], row[f"{k}_hi"]]
        for k in row.index
        if f"{k}_lo" in row.index and f"{k}_hi" in row.index and pd.notna(row[k])
    }


def metric_row_report(csv_path, spec: str) -> dict:
    csv_path = Path(csv_path)
    if not csv_path.is_file():
        raise DataError(f"{csv_path}: no such metric file")
    frame = pd.read_csv(csv_path)
    index = select_row(frame, spec, csv_path)
    row = frame.loc[index]
    root = project_root(csv_path)
    keys = {k: row[k] for k in KEY_COLUMNS if k in frame.columns and pd.notna(row[k])}
    records = []
    if all(k in keys for k in RUN_KEYS):
        path = root / RECORDS_PATTERN.format(**{k: keys[k] for k in RUN_KEYS})
        records.append({"path": str(path.relative_to(root)), "sha256": sha256(path) if path.exists() else None})
    cells = cells_from_row(root, csv_path, index)
    return {
        "metric_file": str(csv_path),
        "row": index + 1,
        "keys": {k: str(v) for k, v in keys.items()},
        "n": None if "n" not in frame.columns else int(row["n"]),
        "metrics": {k: [float(x) for x in v] for k, v in _interval_metrics(row).items()},
        "records": records,
        "cells": cells,
    }


def audit_metric_row(csv_path, spec: str, as_json: bool = False) -> int:
    """``mmcal audit METRICS.csv --row ROW``: print the report; exit 1 when the row's records are gone."""
    report = metric_row_report(csv_path, spec)
    if as_json:
        print(json.dumps(report, indent=2, default=str))
    else:
        out = [f"{report['metric_file']}  data row {report['row']}", f"  keys:     {report['keys']}"]
        if report["n"] is not None:
            out.append(f"  n:        {report['n']}")
        for name, (value, lo, hi) in list(report["metrics"].items())[:12]:
            out.append(f"  {name + ':':<22}{value:.4g} [{lo:.4g}, {hi:.4g}]")
        for r in report["records"]:
            out.append(f"  records:  {r['path']}  sha256 {r['sha256'] or 'MISSING'}")
        if not report["cells"]:
            out.append("  printed in no table of paper/tables/")
        for c in report["cells"]:
            out.append(f"  printed:  {c['table']}  row {c['row']!r}, column {c['col']!r}: {c['printed']}")
            out.append(f'            recompute: mmcal audit {c["table"]} --cell "{c["row"]},{c["col"]}"')
        print("\n".join(out))
    return 1 if any(r["sha256"] is None for r in report["records"]) else 0
