"""The paper's tables and the layout of ``main.tex``, from explicit inputs (no config dict).

``make_tables`` writes every LaTeX table from the metric tables and the ``parts`` entries that pick
their rows (``TABLE_PARTS``); ``paper_sections`` puts each table (``TABLE_SECTIONS``) and each
figure (its registry section and caption) in its part of ``main.tex``.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd

from mmcal.atomic import write_text_atomically
from mmcal.figures.registry import reported_rows
from mmcal.paper import tables as T
from mmcal.paper.main_tex import PARTS
from mmcal.records import GROUP_KEYS, RUN_KEYS, select

# The ``parts`` entries make_tables reads: the tables job's params, so editing another part
# (idk, recalibration) never re-writes the tables.
TABLE_PARTS = ("main", "visual_finetuning", "base_vs_mllm", "text_vs_image", "option_order", "protocol")

# Table (file stem under paper/tables/) → the part of main.tex that shows it.
TABLE_SECTIONS = {
    "main_results": "main",
    "reported_metrics": "main",
    "visual_finetuning": "visual_ft",
    "base_vs_mllm": "base_vs_mllm",
    "text_vs_image": "text_vs_image",
    "option_order": "option_order",
    "idk": "idk",
    "recalibration": "recalibration",
    "comparisons": "recalibration",
    "best_prompts": "appendix",
    "protocol": "protocol",
}


def table_inputs(figures: dict) -> dict[str, str]:
    """The metric files the tables read: always the summary, comparisons and no-letter policies (empty
    without letter_greedy runs); the IDK, recalibration and prompt-search results when the study draws
    their figures (``figure_plan``'s names)."""
    inputs = {
        "summary": "data/metrics/summary.csv",
        "comparisons": "data/metrics/comparisons.csv",
        "no_letter": "data/metrics/no_letter.csv",
    }
    if "idk_tradeoff" in figures:
        inputs["idk"] = "data/metrics/idk.csv"
    if "recalibration_ece" in figures:
        inputs["recalibration"] = "data/metrics/recalibration.csv"
    if "promptopt_trajectory" in figures:
        inputs["best"] = figures["promptopt_trajectory"].inputs["best"][0]
    return inputs


def table_parts(parts: dict, imported: list[dict] | None = None) -> dict:
    """The ``parts`` entries the tables read, and (``imports``) the run keys of imported runs, which the
    table of reported metrics shows beside the main group."""
    out = {key: parts[key] for key in TABLE_PARTS if parts.get(key)}
    if imported:
        out["imports"] = [{k: r[k] for k in RUN_KEYS} for r in imported]
    return out


def _read_csv(path) -> pd.DataFrame:
    try:
        return pd.read_csv(path)
    except pd.errors.EmptyDataError:
        return pd.DataFrame()


def table_methods(config: dict) -> dict:
    """How each metric file the tables read was computed (function and settings, as its rule ran it):
    written into the cell maps so that ``mmcal audit --cell`` recomputes a number the same way."""
    m, seed = config["metrics"], int(config["seed"])
    common = {"seed": seed, "level": float(m["level"]), "split": m["split"], "no_letter": m.get("no_letter", "keep")}
    recal = config.get("recalibration", {})
    return {
        "summary": {"function": "mmcal.analysis.summary.summarize", "B": int(m["bootstrap"]), **common},
        "comparisons": {
            "function": "mmcal.analysis.summary.compare",
            "B": int(m["comparison_bootstrap"]),
            "margin": m.get("margin"),
            "comparisons": [dict(c) for c in config.get("comparisons", [])],
            **common,
        },
        "idk": {
            "function": "mmcal.analysis.idk.idk_table",
            "B": int(m["bootstrap"]),
            "thresholds": list(config.get("idk", {}).get("thresholds", [])),
            **common,
        },
        "recalibration": {
            "function": "mmcal.calibration.study.recalibrate_group",
            "B": int(m["bootstrap"]),
            "methods": list(recal.get("methods", [])),
            **common,
        },
        "best": {"function": "mmcal.promptopt (prompt search result, read as written)"},
        # rows of summary.csv (ours) and no_letter.csv (the reference under both no-letter policies)
        "protocol": {
            "function": "mmcal.analysis.summary.summarize / no_letter_summary",
            "B": int(m["bootstrap"]),
            **common,
        },
    }


def make_tables(inputs: dict, out_dir: Path, parts: dict, level: float, methods: dict | None = None) -> list[Path]:
    """Every LaTeX table of the study under ``out_dir``. ``inputs``: paths of summary, comparisons and,
    when present, idk, recalibration, best; ``parts``: the ``TABLE_PARTS`` entries; ``level``: the CI
    level of the best-prompt table. A table whose rows are absent is not written.

    Beside each ``<name>.tex`` goes ``<name>.cells.json`` (``cell_map``): every cell's printed text,
    the metric-file row it came from (with its group keys) and ``methods[source]``, how that file
    was computed (``table_methods``)."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    summary = _read_csv(inputs["summary"])
    methods = methods or {}
    written = []

    def put(name, tex, source, frame, source_path=None):
        """``frame``: the rows of ``inputs[source]`` (or ``source_path``) the table was made from (original
        row numbers)."""
        path = out_dir / f"{name}.tex"
        T.write_table(tex, path)
        cells = cell_map(tex, frame, source, source_path or inputs[source], methods.get(source, {}))
        write_text_atomically(out_dir / f"{name}.cells.json", json.dumps(cells, indent=1, default=_jsonable) + "\n")
        written.append(path)

    main = parts["main"]
    where = {"dataset": main["dataset"], "scenario": main["scenario"], "prompt": main["prompt"]}
    put("main_results", T.main_results_table(summary, where=where), "summary", select(summary, **where))  # tab:main
    groups = [{**where, "readout": main.get("readout", "letter_restricted")}]
    groups += [{**g, "readout": None} for g in parts.get("imports", [])]
    reported = reported_rows(summary, groups)
    if not reported.empty and "conformal_lac_coverage" in reported.columns:
        tex = T.metrics_table(
            reported,
            T.REPORTED_METRICS,
            caption="The uncertainty metrics other benchmarks report: HELM's equal-mass ECE-10 and accuracy of "
            "the 10\\% most confident; conformal prediction sets as LLM-Uncertainty-Bench computes them "
            "(alpha 0.1: coverage and mean set size of LAC and APS).",
            label="tab:reported",
        )
        put("reported_metrics", tex, "summary", reported)
    bm = parts.get("base_vs_mllm")
    if bm and ((summary["dataset"] == bm["dataset"]) & (summary["scenario"] == bm["scenario"])).any():
        where = {"dataset": bm["dataset"], "scenario": bm["scenario"], "prompt": bm["prompt"]}
        put(
            "base_vs_mllm",
            T.main_results_table(
                summary,
                where=where,
                caption="Base LLM vs the MLLMs built on it, on the same text-only questions.",
                label="tab:base-vs-mllm",
            ),
            "summary",
            select(summary, **where),
        )
    vf = parts.get("visual_finetuning")
    vf_where = vf and {
        "dataset": vf["dataset"],
        "scenario": vf["scenario"],
        "prompt": vf["prompt"],
        "model": [vf["before"], vf["after"]],
    }
    if vf and not select(summary, **vf_where).empty:  # a study without those runs (imports only) has no table
        where = vf_where
        put(
            "visual_finetuning",
            T.main_results_table(
                summary,
                where=where,
                caption="Before (feature alignment) vs after visual instruction tuning, same items.",
                label="tab:visual-ft",
            ),
            "summary",
            select(summary, **where),
        )
    tv = parts.get("text_vs_image")
    rows = select(summary, dataset=tv["dataset"], prompt=tv["prompt"]) if tv else summary.iloc[:0]
    if tv and rows["scenario"].isin(tv["scenarios"][1:]).any():
        put("text_vs_image", T.scenario_table(rows, tv["scenarios"]), "summary", rows)
    oo = parts.get("option_order")
    rows = select(summary, dataset=oo["dataset"], model=oo["model"], prompt=oo["prompt"]) if oo else summary.iloc[:0]
    if oo and rows["scenario"].isin(oo["scenarios"][1:]).any():
        put("option_order", T.scenario_table(rows, oo["scenarios"]), "summary", rows)
    comparisons = _read_csv(inputs["comparisons"])
    pr = parts.get("protocol")
    no_letter = _read_csv(inputs["no_letter"]) if inputs.get("no_letter") else pd.DataFrame()
    if pr and not no_letter.empty:
        # the protocol's paired test is shown with its table, not among the study's comparisons
        mine = comparisons["comparison"] == pr.get("comparison") if not comparisons.empty else None
        paired = comparisons[mine] if mine is not None else None
        tex = T.protocol_table(summary, no_letter, pr, paired, level=float(level))
        # its rows come from two metric files: written out as one, each row naming its file and row
        rows_path = out_dir / "protocol.rows.csv"
        T.protocol_rows(summary, no_letter, pr).to_csv(rows_path, index=False)
        put("protocol", tex, "protocol", pd.read_csv(rows_path), source_path=rows_path)
        comparisons = comparisons[~mine] if mine is not None else comparisons
    if not comparisons.empty:
        put("comparisons", T.comparison_table(comparisons), "comparisons", comparisons)
    if inputs.get("idk"):
        idk = _read_csv(inputs["idk"])
        if not idk.empty:
            put("idk", T.idk_table_tex(idk), "idk", idk)
    if inputs.get("recalibration"):
        recal = _read_csv(inputs["recalibration"])
        if not recal.empty:
            put("recalibration", T.recalibration_table(recal), "recalibration", recal)
    if inputs.get("best"):
        best = json.loads(Path(inputs["best"]).read_text())
        put("best_prompts", T.best_prompts_table([best], level=float(level)), "best", pd.json_normalize([best]))
    return written


# ---------------------------------------------------------------------------------------------
# Cell maps: every printed cell → the metric-file row and columns it was formatted from

# Header label → (source column, how the table formatted it) for columns that are not a metric
# header (``T.metric_header``) or an identifying column (``T.ID_TEX``).
_SPECIAL_COLUMNS = {
    "Comparison": ("comparison", "label"),
    "A": ("a_label", "label"),
    "B": ("b_label", "label"),
    "Metric": ("metric", "metric_label"),
    "A value": ("value_a", "number"),
    "B value": ("value_b", "number"),
    r"$\Delta$ (B$-$A)": ("diff", "ci"),
    r"TOST $p$": ("tost_p", "p_tost"),
    "Params": ("params", "params"),
    r"$\Delta$ECE$_{10}$": ("diff_ece_10", "ci"),
    "Acc. kept": ("accuracy_unchanged", "yesno"),
    "Prompt": ("prompt", "label"),
    r"Calib.\ acc.": ("calib.accuracy", "number"),
    r"Calib.\ ECE$_{10}$": ("calib.ece_10", "number"),
    "Test acc.": ("test.accuracy", "ci"),
    "Test ECE$_{10}$": ("test.ece_10", "ci"),
    "Protocol": ("protocol", "label"),
    "Prompt, readout": ("prompt_readout", "label"),
    "No-letter items": ("no_letter_items", "label"),
    "$n$": ("n", "count"),
    "No letter": ("n_no_letter", "count"),
}
_P_HOLM = r"$p_{\mathrm{Holm}}$"
_ID_FORMATS = ("label", "metric_label")


def _jsonable(x):
    if isinstance(x, (np.integer, np.bool_)):
        return x.item()
    if isinstance(x, np.floating):
        return None if np.isnan(x) else float(x)
    raise TypeError(f"cannot write {type(x).__name__} to a cell map")


def _column_of(label: str, frame: pd.DataFrame, source: str) -> tuple[str, str]:
    """(source column, format) of a header label."""
    ids = {tex: col for col, tex in T.ID_TEX.items()}
    if label == "Prompt" and "text" in frame.columns:  # the best-prompt table prints the prompt's text
        return "text", "label"
    if label in ids and ids[label] in frame.columns:
        return ids[label], "label"
    if label in _SPECIAL_COLUMNS:
        return _SPECIAL_COLUMNS[label]
    if label == _P_HOLM:
        return "p_holm", ("p_floor" if "p_holm_floor" in frame.columns else "p")
    for metric in frame.columns:
        if T.metric_header(metric) == label:
            return metric, "ci"
    raise ValueError(f"table from {source}: no column of the metric file prints as header {label!r}")


def _tabular_rows(tex: str) -> tuple[list[str], list[list[str]]]:
    """Header and body cells of the booktabs tabular, as printed."""
    lines = tex.split(r"\toprule", 1)[1].split(r"\bottomrule", 1)[0].strip().splitlines()

    def cells(line):
        # a leading blanked cell leaves the line starting with "& "
        return [c.strip() for c in (" " + line.rstrip().removesuffix(r"\\")).split(" & ")]

    header = cells(lines[0])
    body = [cells(line) for line in lines[2:] if line.strip() and line.strip() != r"\addlinespace"]
    return header, body


def _id_text(value, fmt: str) -> str:
    return T.METRIC_TEX.get(value, T.latex_escape(value)) if fmt == "metric_label" else T.latex_escape(value)


def cell_map(tex: str, frame: pd.DataFrame, source: str, source_path, method: dict) -> dict:
    """Every cell of a table written by ``make_tables``: its row and column labels, the printed
    text, and where it came from: ``source_path`` row ``source_row`` (0-based data row; for a JSON
    source, its flattened fields), that row's group keys, the column(s) formatted and how
    (``format``; ``columns`` lists value, lo, hi for an interval). Rows are matched to the metric
    file by their identifying cells, which must select exactly one row."""
    header, body = _tabular_rows(tex)
    columns = [_column_of(label, frame, source) for label in header]
    id_cols = [j for j, (_, fmt) in enumerate(columns) if fmt in _ID_FORMATS]
    keyed: dict[tuple, list] = {}
    for idx, row in frame.iterrows():
        keyed.setdefault(tuple(_id_text(row[columns[j][0]], columns[j][1]) for j in id_cols), []).append(idx)
    cells, previous = [], None
    for i, printed in enumerate(body, start=1):
        # booktabs_table blanks repeated leading identifying cells: fill them back in
        filled = [p if p or previous is None or j not in id_cols else previous[j] for j, p in enumerate(printed)]
        previous = filled
        matches = keyed.get(tuple(filled[j] for j in id_cols), [])
        if len(matches) != 1:
            raise ValueError(f"table from {source}: row {i} ({filled[: len(id_cols)]}) matches {len(matches)} rows")
        row = frame.loc[matches[0]]
        keys = {k: row[k] for k in (*GROUP_KEYS, "split", "recalibrator", "comparison", "metric") if k in frame.columns}
        label = " / ".join(str(row[columns[j][0]]) for j in id_cols)
        for j, (column, fmt) in enumerate(columns):
            used = [column] + [
                f"{column}_{b}" for b in ("lo", "hi") if fmt == "ci" and f"{column}_{b}" in frame.columns
            ]
            used += {"p_floor": ["p_holm_floor"], "p_tost": ["equivalent"]}.get(fmt, [])
            cells.append(
                {
                    "row": label,
                    "col": column,
                    "row_index": i,
                    "col_index": j + 1,
                    "col_label": header[j],
                    "printed": filled[j],
                    "format": fmt,
                    "columns": used,
                    "values": [None if T._is_missing(v) else v for v in (row.get(c) for c in used)],
                    "source_row": int(matches[0]),
                    "keys": keys,
                }
            )
    return {"source": str(source_path), "source_kind": source, "method": method, "header": header, "cells": cells}


def paper_sections(figures: list[dict], tables: list[str]) -> list[dict]:
    """main.tex sections in ``PARTS`` order. ``figures``: ``{"name", "section", "caption"}`` per
    figure (figures/<name>.pdf); ``tables``: the written table files. Paths are relative to paper/."""
    sections = []
    for key, _, _ in PARTS:
        sections.append(
            {
                "key": key,
                "tables": [f"tables/{Path(t).name}" for t in tables if TABLE_SECTIONS.get(Path(t).stem) == key],
                "figures": [
                    {"path": f"../figures/{f['name']}.pdf", "caption": f["caption"], "label": f"fig:{f['name']}"}
                    for f in figures
                    if f["section"] == key
                ],
            }
        )
    return sections
