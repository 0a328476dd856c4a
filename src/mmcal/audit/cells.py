"""Down to a number: recompute one printed cell of a paper table from the records it came from.

The tables job writes ``paper/tables/<table>.cells.json`` beside each table (``mmcal.paper.build.cell_map``):
for every cell its printed text, the metric-file row it was formatted from (with that row's group
keys), the columns used and the method the metric file was computed with. ``audit_cell`` finds a
cell, loads the records those keys select (``data/records/{model}/{dataset}/{scenario}/{prompt}.parquet``),
recomputes the metric-file row with the same library function and settings (``summarize``,
``compare``, ``idk_table``, ``recalibrate_group``), formats it as the table does and says whether it
equals the printed text. Holm-corrected p-values are re-adjusted over the metric file's other
p-values with the recomputed one in its place. Cells that are no number from records (labels,
the prompt-search result) are read back from their source file and re-formatted.
"""

from __future__ import annotations

import functools
import hashlib
import json
import re
import sys
from pathlib import Path

import numpy as np
import pandas as pd

from mmcal.errors import DataError
from mmcal.paper import tables as T
from mmcal.records import RUN_KEYS, in_split, no_letter, read_records, select

RECORDS_PATTERN = "data/records/{model}/{dataset}/{scenario}/{prompt}.parquet"
# Recomputed values equal the metric file's to this (relative) tolerance; the printed text must match exactly.
VALUE_RTOL = 1e-9


def cell_map_path(table_path) -> Path:
    return Path(table_path).with_suffix(".cells.json")


def load_cell_map(table_path) -> dict:
    path = cell_map_path(table_path)
    if not path.exists():
        raise DataError(f"{table_path}: no cell map {path.name} beside it (re-run the tables job)")
    return json.loads(path.read_text())


def project_root(table_path) -> Path:
    """The directory the workflow ran in: tables live in ``<root>/paper/tables/``."""
    return Path(table_path).absolute().parents[2]


def _norm(text) -> str:
    text = str(text).replace("\\_", "_").replace("\\", "")
    return re.sub(r"\s*/\s*", "/", text).strip().lower()


def find_cell(cmap: dict, row, col) -> dict:
    """The cell at ``row`` (1-based index or row label as printed, identifying values joined by
    ``/``) and ``col`` (1-based index, header as printed, or the metric-file column name)."""
    cells = cmap["cells"]
    row_s, col_s = str(row).strip(), str(col).strip()
    by_row = [c for c in cells if (row_s.isdigit() and c["row_index"] == int(row_s)) or _norm(c["row"]) == _norm(row_s)]
    if not by_row:
        labels = sorted({c["row"] for c in cells}, key=lambda r: r)
        raise DataError(f"no row {row_s!r} in the table; rows: {labels}")
    if len({c["row_index"] for c in by_row}) > 1:
        raise DataError(f"row {row_s!r} is ambiguous (rows {sorted({c['row_index'] for c in by_row})}): use the index")
    for c in by_row:
        if (col_s.isdigit() and c["col_index"] == int(col_s)) or _norm(col_s) in (
            _norm(c["col"]),
            _norm(c["col_label"]),
        ):
            return c
    raise DataError(f"no column {col_s!r}; columns: {[(c['col_index'], c['col']) for c in by_row]}")


def find_cell_by_text(cmap: dict, text: str) -> dict:
    """The cell named by ``"ROW,COL"`` as a reader types it: row labels may hold commas themselves ("kept,
    counted wrong"), so every comma is tried as the separator, the last first (column headers rarely have one)."""
    commas = [i for i, ch in enumerate(text) if ch == ","]
    if not commas:
        raise DataError(f"--cell {text!r}: give ROW,COL (a row label or index, a comma, a column label or index)")
    errors = []
    for i in reversed(commas):
        try:
            return find_cell(cmap, text[:i], text[i + 1 :])
        except DataError as exc:
            errors.append(str(exc))
    raise DataError(f"--cell {text!r} names no cell: {errors[0]}")


def strip_bold(text: str) -> str:
    return re.sub(r"\\textbf\{([^{}]*)\}", r"\1", text)


def render(fmt: str, values: list) -> str:
    """A cell's text from its column values, as ``mmcal.paper.tables`` formats it (bold aside)."""
    if fmt == "ci":
        return T.format_ci(*values)
    if fmt == "number":
        return T.format_number(values[0])
    if fmt == "p":
        return T.format_p(values[0])
    if fmt == "p_floor":
        return T.format_p_floor(values[0], values[1])
    if fmt == "p_tost":
        equivalent = values[1] is not None and not T._is_missing(values[1]) and bool(values[1])
        return T.format_p(values[0]) + (r"$^{\dagger}$" if equivalent else "")
    if fmt == "params":
        return T.format_params(values[0])
    if fmt == "count":
        return str(int(values[0]))
    if fmt == "yesno":
        return "yes" if bool(values[0]) else "no"
    if fmt == "label":
        return T.latex_escape(values[0])
    if fmt == "metric_label":
        return T.METRIC_TEX.get(values[0], T.latex_escape(values[0]))
    raise ValueError(f"unknown cell format {fmt!r}")


def sha256(path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def _records_path(root: Path, keys: dict) -> Path:
    path = root / RECORDS_PATTERN.format(**{k: keys[k] for k in RUN_KEYS})
    if not path.exists():
        raise DataError(f"records file {path} for {keys} is missing")
    return path


def _source_frame(root: Path, cmap: dict) -> pd.DataFrame:
    path = root / cmap["source"]
    if cmap["source_kind"] == "best":
        return pd.json_normalize([json.loads(path.read_text())])
    return pd.read_csv(path)


# ---------------------------------------------------------------------------------------------
# Recomputation, one metric-file row at a time (cached: a table's cells share their rows; the
# cache key holds each records file's size and mtime, so a changed file is read again)


def _stamp(*paths) -> tuple:
    return tuple((str(p), Path(p).stat().st_size, Path(p).stat().st_mtime_ns) for p in paths)


@functools.lru_cache(maxsize=64)
def _summary_rows(path: str, stamp: tuple, B: int, seed: int, level: float, split: str, no_letter: str) -> pd.DataFrame:
    from mmcal.analysis.summary import summarize

    return summarize(
        read_records(path), B=B, seed=seed, level=level, split=split, smece_test=False, no_letter=no_letter
    )


@functools.lru_cache(maxsize=64)
def _no_letter_rows(path: str, stamp: tuple, B: int, seed: int, level: float, split: str) -> pd.DataFrame:
    from mmcal.analysis.summary import no_letter_summary

    return no_letter_summary(read_records(path), B=B, seed=seed, level=level, split=split)


@functools.lru_cache(maxsize=64)
def _idk_rows(path: str, stamp: tuple, B: int, seed: int, level: float, split: str, thresholds: tuple) -> pd.DataFrame:
    from mmcal.analysis.idk import idk_table

    return idk_table(read_records(path), split=split, B=B, seed=seed, level=level, thresholds=thresholds)


@functools.lru_cache(maxsize=64)
def _recal_rows(path: str, stamp: tuple, readout: str, methods: tuple, B: int, seed: int, level: float) -> pd.DataFrame:
    from mmcal.calibration.study import recalibrate_group

    rows, _, _ = recalibrate_group(read_records(path), readout, list(methods), B, seed, level)
    return pd.DataFrame(rows)


@functools.lru_cache(maxsize=16)
def _comparison_rows(
    paths: tuple, stamp: tuple, spec_json: str, B: int, seed: int, level: float, margin, split, no_letter
) -> pd.DataFrame:
    from mmcal.analysis.summary import compare

    return compare(
        read_records(list(paths)),
        [json.loads(spec_json)],
        B=B,
        seed=seed,
        level=level,
        margin_default=margin,
        split=split,
        no_letter=no_letter,
    )


def _holm_with(pvalues: pd.Series, index, p_new: float) -> float:
    """Holm's adjustment of ``p_new`` put in place of ``pvalues[index]`` among the other values."""
    from mmcal.analysis.stats import holm

    p = pvalues.copy()
    p.loc[index] = p_new
    mask = p.notna()
    return float(pd.Series(holm(p[mask].to_numpy(dtype=float)), index=p[mask].index).loc[index])


def _comparison_files(root: Path, spec: dict) -> list[Path]:
    """Records files whose run keys can match either side of a comparison (by their path)."""
    not_filters = {"name", "a", "b", "where", "margin", "a_label", "b_label"}
    shared = {**spec.get("where", {}), **{k: v for k, v in spec.items() if k not in not_filters}}
    sides = [{**shared, **spec["a"]}, {**shared, **spec["b"]}]
    files = []
    for path in sorted((root / "data/records").glob("*/*/*/*.parquet")):
        keys = dict(zip(RUN_KEYS, path.relative_to(root / "data/records").with_suffix("").parts))
        frame = pd.DataFrame([keys])
        if any(len(select(frame, **{k: v for k, v in side.items() if k in RUN_KEYS})) for side in sides):
            files.append(path)
    return files


def recompute(root: Path, cmap: dict, cell: dict) -> dict:
    """The cell's columns recomputed: ``{"values", "records", "filters", "n", "how"}``."""
    kind, method, keys = cmap["source_kind"], cmap["method"], cell["keys"]
    source = _source_frame(root, cmap)
    row = source.loc[cell["source_row"]]
    if cell["format"] in ("label", "metric_label") or kind == "best":
        how = "read back from the source file" + (
            " (the prompt-search result; not recomputed)" if kind == "best" else ""
        )
        return {"values": [row.get(c) for c in cell["columns"]], "records": [], "filters": {}, "n": None, "how": how}
    B, seed, level, split = int(method["B"]), int(method["seed"]), float(method["level"]), method["split"]
    filters = {"split": split, "status": "ok (scorable)"}
    if kind == "protocol" and row["from"] == "no_letter":  # a reference row, under one no-letter policy
        path = _records_path(root, keys)
        got = select(
            _no_letter_rows(str(path), _stamp(path), B, seed, level, split),
            readout=keys["readout"],
            no_letter_policy=row["no_letter_policy"],
        ).iloc[0]
        filters.update(readout=keys["readout"], no_letter_policy=row["no_letter_policy"])
        return {
            "values": [got[c] for c in cell["columns"]],
            "records": [path],
            "filters": filters,
            "n": int(got["n"]),
            "how": "recomputed from records (mmcal.analysis.summary.no_letter_summary)",
        }
    if kind in ("summary", "protocol"):  # a protocol table's own row is a summary row
        path = _records_path(root, keys)
        rows = _summary_rows(str(path), _stamp(path), B, seed, level, split, method.get("no_letter", "keep"))
        got = select(rows, readout=keys["readout"]).iloc[0].copy()
        if kind == "protocol":  # the table also prints how many of the row's items had no letter
            group = in_split(select(read_records(path), readout=keys["readout"]), split)
            got["n_no_letter"] = int(no_letter(group).sum())
        filters["readout"] = keys["readout"]
        return {
            "values": [got[c] for c in cell["columns"]],
            "records": [path],
            "filters": filters,
            "n": int(got["n"]),
            "how": "recomputed from records",
        }
    if kind == "idk":
        path = _records_path(root, keys)
        got = select(
            _idk_rows(str(path), _stamp(path), B, seed, level, split, tuple(method["thresholds"])),
            readout=keys["readout"],
        )
        got = got.iloc[0]
        filters["readout"] = keys["readout"]
        return {
            "values": [got[c] for c in cell["columns"]],
            "records": [path],
            "filters": filters,
            "n": int(got["n_items"]),
            "how": "recomputed from records",
        }
    if kind == "recalibration":
        path = _records_path(root, keys)
        group = select(source, **{k: keys[k] for k in (*RUN_KEYS, "readout")})
        methods = tuple(m for m in dict.fromkeys(group["recalibrator"]) if m != "none")
        got = select(
            _recal_rows(str(path), _stamp(path), keys["readout"], methods, B, seed, level),
            recalibrator=keys["recalibrator"],
        )
        got = got.iloc[0].copy()
        if "p_ece_10" in got and not T._is_missing(got["p_ece_10"]):
            tested = source["p_ece_10"]
            got["p_holm"] = _holm_with(tested, cell["source_row"], float(got["p_ece_10"]))
            got["p_holm_floor"] = min(1.0, int(tested.notna().sum()) * float(got["p_ece_10_floor"]))
        filters.update(readout=keys["readout"], fit_on="calib", split="test")
        return {
            "values": [got.get(c) for c in cell["columns"]],
            "records": [path],
            "filters": filters,
            "n": None,
            "how": "recomputed from records (fit on calib, evaluated on test)",
        }
    if kind == "comparisons":
        spec = next(c for c in method["comparisons"] if c["name"] == row["comparison"])
        paths = tuple(str(p) for p in _comparison_files(root, spec))
        table = _comparison_rows(
            paths,
            _stamp(*paths),
            json.dumps(spec, sort_keys=True),
            B,
            seed,
            level,
            method.get("margin"),
            split,
            method.get("no_letter", "keep"),
        )
        got = select(table, metric=row["metric"]).iloc[0].copy()
        # Holm's adjustment runs within the comparison's family (``holm_family``, default "main")
        family = spec.get("holm_family", "main")
        members = [c["name"] for c in method["comparisons"] if c.get("holm_family", "main") == family]
        in_family = source.loc[source["comparison"].isin(members), "p_value"]
        got["p_holm"] = _holm_with(in_family, cell["source_row"], float(got["p_value"]))
        filters.update(spec)
        return {
            "values": [got.get(c) for c in cell["columns"]],
            "records": [Path(p) for p in paths],
            "filters": filters,
            "n": int(got["n_paired"]),
            "how": "recomputed from records (paired bootstrap)",
        }
    raise DataError(f"cell map {cmap['source']}: unknown source kind {kind!r}")


def _plain(x):
    if isinstance(x, (np.integer, np.bool_)):
        return x.item()
    if isinstance(x, (float, np.floating)):
        return None if np.isnan(x) else float(x)
    return x


def _same(a, b) -> bool:
    if T._is_missing(a) and T._is_missing(b):
        return True
    if isinstance(a, (int, float, np.number)) and isinstance(b, (int, float, np.number)):
        return bool(np.isclose(float(a), float(b), rtol=VALUE_RTOL, atol=1e-12))
    return str(a) == str(b)


def audit_one(table_path, row, col=None) -> dict:
    """Find, recompute and compare one cell; the report as a dict. ``col`` None: ``row`` is the whole
    ``"ROW,COL"`` text (:func:`find_cell_by_text`)."""
    cmap = load_cell_map(table_path)
    root = project_root(table_path)
    cell = find_cell_by_text(cmap, row) if col is None else find_cell(cmap, row, col)
    got = recompute(root, cmap, cell)
    source_row = _source_frame(root, cmap).loc[cell["source_row"]]
    stored = [source_row.get(c) for c in cell["columns"]]
    text = render(cell["format"], got["values"])
    printed = strip_bold(cell["printed"])
    return {
        "table": str(table_path),
        "row": cell["row"],
        "col": cell["col"],
        "printed": cell["printed"],
        "recomputed_text": text,
        "columns": cell["columns"],
        "recomputed": [_plain(v) for v in got["values"]],
        "metric_file": cmap["source"],
        "metric_file_row": cell["source_row"],
        "metric_file_values": [_plain(v) for v in stored],
        "matches_metric_file": all(_same(a, b) for a, b in zip(got["values"], stored)),
        "keys": cell["keys"],
        "records": [{"path": str(Path(p).relative_to(root)), "sha256": sha256(p)} for p in got["records"]],
        "filters": got["filters"],
        "n": got["n"],
        "method": cmap["method"],
        "how": got["how"],
        "equal": text == printed,
    }


def audit_cell(table_path, row, col=None, as_json: bool = False) -> int:
    """``mmcal audit TABLE --cell ROW,COL``: print the cell's sources and recomputation; exit 1 when
    the recomputed text differs from the printed one."""
    report = audit_one(table_path, row, col)
    if as_json:
        print(json.dumps(report, indent=2, default=str))
    else:
        out = [
            f"{report['table']}  row {report['row']!r}, column {report['col']!r}",
            f"  printed:     {report['printed']}",
            f"  recomputed:  {report['recomputed_text']}   ({report['how']})",
            f"  equal:       {'yes' if report['equal'] else 'NO'}",
            f"  metric file: {report['metric_file']} row {report['metric_file_row']} "
            f"columns {report['columns']} = {report['metric_file_values']}"
            f"{'' if report['matches_metric_file'] else '  (differs from the recomputation)'}",
            f"  keys:        {report['keys']}",
        ]
        for r in report["records"]:
            out.append(f"  records:     {r['path']}  sha256 {r['sha256']}")
        if report["filters"]:
            out.append(f"  filters:     {report['filters']}")
        if report["n"] is not None:
            out.append(f"  n:           {report['n']}")
        out.append(f"  method:      {report['method'] if report['records'] else report['method'].get('function')}")
        print("\n".join(out), file=sys.stdout)
    return 0 if report["equal"] else 1
