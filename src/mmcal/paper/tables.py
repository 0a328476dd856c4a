"""The study's LaTeX tables (booktabs), each built from one metrics table and returned as a string.

Conventions shared by every table:

- a metric cell reads ``value [lo, hi]`` (``format_ci``), ``decimals`` digits (3 by default);
- the best value of a column is bold, compared only among rows that differ in the compared
  factor alone (``best_within``: e.g. models on the same dataset, scenario and readout); "best"
  is the maximum for accuracy-like metrics, the minimum for errors (``metric_direction``), and
  ties at the printed precision are all bold;
- identifying columns that are constant over the table are left out and named in the notes;
- a plain note paragraph under the tabular says what the intervals are and, where there are
  p-values, that they are Holm-corrected;
- names are escaped for LaTeX (``latex_escape``). A table wider than the line is shrunk to it
  with ``\\resizebox`` (needs ``graphicx``); every table needs ``booktabs``.
"""

from __future__ import annotations

import json
import unicodedata
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import pandas as pd

from mmcal.atomic import write_text_atomically
from mmcal.records import GROUP_KEYS, RUN_KEYS, select

MAIN_METRICS = ("accuracy", "ece_10", "brier", "nll", "auroc", "aurc")
SCENARIO_METRICS = ("accuracy", "mean_confidence", "ece_10", "mean_entropy")
IDK_METRICS = ("admit_rate", "false_idk_rate", "answerable_accuracy", "abstain_f1", "answered_ece_10")
RECAL_METRICS = ("accuracy", "ece_10", "ece_debiased", "nll", "brier")
# the metrics other benchmarks report (HELM; LLM-Uncertainty-Bench's conformal sets)
REPORTED_METRICS = (
    "accuracy",
    "helm_ece_10",
    "helm_acc_at_cov_10",
    "conformal_lac_coverage",
    "conformal_lac_set_size",
    "conformal_aps_coverage",
    "conformal_aps_set_size",
)

_HIGHER_IS_BETTER = {
    "accuracy",
    "auroc",
    "admit_rate",
    "answerable_accuracy",
    "abstain_precision",
    "abstain_recall",
    "abstain_f1",
}
_LOWER_IS_BETTER = {
    "smece",
    "nll",
    "aurc",
    "augrc",
    "false_idk_rate",
    "answered_ece_10",
    "confident_answer_rate_50",
    "confident_answer_rate_80",
}

METRIC_TEX = {
    "accuracy": "Acc.",
    "mean_confidence": "Conf.",
    "overconfidence": "Overconf.",
    "mean_entropy": "Entropy",
    "ece_10": "ECE$_{10}$",
    "ece_15": "ECE$_{15}$",
    "ece_adaptive_15": "aECE$_{15}$",
    "ece_debiased": "dECE",
    "smece": "smECE",
    "mce_10": "MCE$_{10}$",
    "brier": "Brier",
    "brier_top": "Brier$_{\\mathrm{top}}$",
    "nll": "NLL",
    "auroc": "AUROC",
    "aurc": "AURC",
    "augrc": "AUGRC",
    "acc_at_cov_50": "Acc@50\\%",
    "acc_at_cov_80": "Acc@80\\%",
    "acc_at_cov_90": "Acc@90\\%",
    "admit_rate": "Admit rate",
    "false_idk_rate": "False IDK",
    "answerable_accuracy": "Acc. (answerable)",
    "abstain_precision": "Abst. prec.",
    "abstain_recall": "Abst. rec.",
    "abstain_f1": "Abst. F1",
    "confident_answer_rate_50": "Conf. answer@50",
    "confident_answer_rate_80": "Conf. answer@80",
    "answered_ece_10": "ECE$_{10}$ (answered)",
    "helm_ece_10": "ECE$_{10}^{\\mathrm{HELM}}$",
    "helm_acc_at_cov_10": "Acc@10\\%$^{\\mathrm{HELM}}$",
    "conformal_lac_coverage": "LAC cov.",
    "conformal_lac_set_size": "LAC size",
    "conformal_aps_coverage": "APS cov.",
    "conformal_aps_set_size": "APS size",
    "idk_prob_unknowable": "$P$(IDK) unknowable",
    "idk_prob_answerable": "$P$(IDK) answerable",
}
ID_TEX = {
    "model": "Model",
    "dataset": "Dataset",
    "scenario": "Scenario",
    "prompt": "Prompt",
    "readout": "Readout",
    "recalibrator": "Recalibrator",
}


def keys_varying_last(last: str) -> tuple[str, ...]:
    """The group keys with ``last`` moved to the end: rows of one model, dataset, ... then vary in
    ``last`` (scenario in the scenario table, prompt in the IDK table)."""
    return (*(c for c in GROUP_KEYS if c != last), last)


# ---------------------------------------------------------------------------------------------
# Cells


_LATEX_SPECIALS = {
    "\\": r"\textbackslash{}",
    "&": r"\&",
    "%": r"\%",
    "$": r"\$",
    "#": r"\#",
    "_": r"\_",
    "{": r"\{",
    "}": r"\}",
    "~": r"\textasciitilde{}",
    "^": r"\textasciicircum{}",
}


def latex_escape(text) -> str:
    """Text safe to put in LaTeX: ``_ & % # $ { } ~ ^ \\`` are escaped; line breaks become spaces (a blank
    line would end a table row's paragraph) and invisible control and format characters (zero-width
    spaces, bidirectional overrides: Unicode Cc/Cf) are dropped (LaTeX rejects or mis-sets them)."""
    out = []
    for ch in str(text):
        if ch in "\r\n\t":
            out.append(" ")
        elif unicodedata.category(ch) not in ("Cc", "Cf"):
            out.append(_LATEX_SPECIALS.get(ch, ch))
    return "".join(out)


def _is_missing(x) -> bool:
    if x is None:
        return True
    try:
        return bool(np.isnan(float(x)))
    except (TypeError, ValueError):
        return False


def format_number(x, decimals: int = 3) -> str:
    """``0.123``; ``--`` when missing; a minus sign set in math mode (a hyphen is too short)."""
    if _is_missing(x):
        return "--"
    text = f"{float(x):.{decimals}f}"
    if text.startswith("-"):
        # -0.000 after rounding is just zero
        text = text[1:] if float(text) == 0 else "$-$" + text[1:]
    return text


def format_ci(value, lo=None, hi=None, decimals: int = 3, bold: bool = False) -> str:
    """``value [lo, hi]`` (the value in bold if ``bold``); just the value without an interval."""
    head = format_number(value, decimals)
    if bold and head != "--":
        head = rf"\textbf{{{head}}}"
    if _is_missing(lo) or _is_missing(hi):
        return head
    return f"{head} [{format_number(lo, decimals)}, {format_number(hi, decimals)}]"


def format_p(p, decimals: int = 3) -> str:
    if _is_missing(p):
        return "--"
    return f"$<${10**-decimals:.{decimals}f}" if float(p) < 10**-decimals else f"{float(p):.{decimals}f}"


def metric_direction(metric: str) -> str | None:
    """``"max"`` / ``"min"`` (which value is best), ``"zero"`` (closest to 0 is best) or None
    (descriptive: no best, e.g. mean confidence)."""
    if metric in _HIGHER_IS_BETTER or metric.startswith(("acc_at_cov", "helm_acc_at_cov")):
        return "max"
    if metric in _LOWER_IS_BETTER or metric.startswith(("ece", "mce", "brier", "helm_ece")):
        return "min"
    if metric == "overconfidence":
        return "zero"
    return None


def metric_header(metric: str) -> str:
    arrow = {"max": r" $\uparrow$", "min": r" $\downarrow$", "zero": r" $\to 0$"}.get(metric_direction(metric), "")
    return METRIC_TEX.get(metric, latex_escape(metric)) + arrow


def best_mask(values, direction: str | None, decimals: int = 3) -> np.ndarray:
    """Which values are best (ties at the printed precision all count); none when fewer than
    two values can be compared or the metric has no direction."""
    v = pd.to_numeric(pd.Series(values), errors="coerce").to_numpy(dtype=float)
    finite = np.isfinite(v)
    if direction is None or finite.sum() < 2:
        return np.zeros(len(v), dtype=bool)
    key = np.round(np.abs(v) if direction == "zero" else v, decimals)
    best = np.nanmax(key[finite]) if direction == "max" else np.nanmin(key[finite])
    return finite & (key == best)


# ---------------------------------------------------------------------------------------------
# Table assembly


def booktabs_table(
    header: Sequence[str],
    rows: Sequence[Sequence[str]],
    *,
    n_id_cols: int = 0,
    align: str | None = None,
    caption: str | None = None,
    label: str | None = None,
    notes: Sequence[str] = (),
    resize: bool = True,
) -> str:
    """A ``table`` float with a booktabs tabular. The first ``n_id_cols`` columns identify rows:
    repeated leading values are blanked and a new first value starts after a small gap.
    Cells must already be LaTeX (escaped); ``caption`` and ``notes`` too. With ``resize`` the
    tabular is shrunk to the line width when (and only when) it is wider."""
    n_cols = len(header)
    align = align or "l" * n_id_cols + "c" * (n_cols - n_id_cols)
    body, previous = [], None
    for cells in rows:
        if len(cells) != n_cols:
            raise ValueError(f"row has {len(cells)} cells, header has {n_cols}")
        shown = list(cells)
        if previous is not None and n_id_cols > 1:
            if cells[0] != previous[0]:
                body.append(r"\addlinespace")
            for j in range(n_id_cols - 1):  # blank a leading cell only while all cells before it repeat
                if cells[: j + 1] != previous[: j + 1]:
                    break
                shown[j] = ""
        body.append(" & ".join(shown) + r" \\")
        previous = list(cells)
    tabular = "\n".join(
        [
            rf"\begin{{tabular}}{{{align}}}",
            r"\toprule",
            " & ".join(header) + r" \\",
            r"\midrule",
            *body,
            r"\bottomrule",
            r"\end{tabular}",
        ]
    )
    if resize:
        # Measure first, scale only if too wide: narrow tables keep their natural size.
        tabular = "\n".join(
            [
                r"\ifdefined\mmcaltablebox\else\newsavebox{\mmcaltablebox}\fi",
                r"\sbox{\mmcaltablebox}{%",
                tabular + "%",
                "}",
                r"\ifdim\wd\mmcaltablebox>\linewidth",
                r"\resizebox{\linewidth}{!}{\usebox{\mmcaltablebox}}%",
                r"\else",
                r"\usebox{\mmcaltablebox}%",
                r"\fi",
            ]
        )
    lines = [r"\begin{table}[tbp]", r"\centering", r"\small", r"\setlength{\tabcolsep}{4pt}"]
    if caption:
        lines.append(rf"\caption{{{caption}}}")
    if label:
        lines.append(rf"\label{{{latex_escape(label)}}}")
    lines.append(tabular)
    if notes:
        lines += [r"\par\smallskip", r"\parbox{\linewidth}{\footnotesize " + " ".join(notes) + "}"]
    lines.append(r"\end{table}")
    return "\n".join(lines) + "\n"


def ci_note(level: float = 0.95) -> str:
    return (
        rf"Brackets: {100 * level:g}\,\% cluster-bootstrap percentile intervals (items that "
        r"share an image or source are resampled together)."
    )


def _bold_note(best_within: Sequence[str]) -> str:
    within = ", ".join(ID_TEX.get(c, c).lower() for c in best_within)
    scope = f" among rows with the same {within}" if within else ""
    return rf"Bold: best value of a column{scope} ($\uparrow$ higher, $\downarrow$ lower is better)."


def _constant_note(df: pd.DataFrame, cols: Sequence[str]) -> str:
    parts = [f"{ID_TEX.get(c, c).lower()} {latex_escape(df[c].iloc[0])}" for c in cols]
    return ("All rows: " + ", ".join(parts) + ".") if parts else ""


def _where(df: pd.DataFrame, where: dict | None) -> pd.DataFrame:
    """The rows of a table that ``where`` (``column: value or values``) selects."""
    return select(df, **(where or {}))


def _split_id_cols(df: pd.DataFrame, row_cols: Sequence[str]) -> tuple[list[str], list[str]]:
    """(shown, constant) identifying columns: only those that vary are worth a column."""
    present = [c for c in row_cols if c in df.columns]
    shown = [c for c in present if df[c].nunique(dropna=False) > 1]
    constant = [c for c in present if c not in shown]
    return (shown or present[:1]), [c for c in constant if c not in (shown or present[:1])]


def _metric_cells(
    df: pd.DataFrame, metrics: Sequence[str], best_within: Sequence[str], decimals: int, bold: bool = True
) -> list[list[str]]:
    """Formatted ``value [lo, hi]`` cells, best values bold within each ``best_within`` group."""
    within = [c for c in best_within if c in df.columns]
    cells = [[None] * len(metrics) for _ in range(len(df))]
    positions = np.arange(len(df))
    groups = (
        [positions]
        if not within
        else [
            positions[idx]
            for idx in df.reset_index(drop=True).groupby(within, sort=False, dropna=False).indices.values()
        ]
    )
    for j, metric in enumerate(metrics):
        for idx in groups:
            part = df.iloc[idx]
            best = best_mask(part[metric], metric_direction(metric), decimals) if bold else np.zeros(len(part), bool)
            for pos, (_, row), is_best in zip(idx, part.iterrows(), best):
                cells[pos][j] = format_ci(
                    row[metric], row.get(f"{metric}_lo"), row.get(f"{metric}_hi"), decimals, bold=bool(is_best)
                )
    return cells


def _order_rows(df: pd.DataFrame, cols: Sequence[str], orders: dict | None = None) -> pd.DataFrame:
    """Sort by ``cols``; a column with an explicit order in ``orders`` keeps that order, others
    keep their first-appearance order (so a table reads in the order the study lists things)."""
    orders = orders or {}
    keys = {}
    for c in cols:
        order = orders.get(c) or list(dict.fromkeys(df[c]))
        keys[c] = df[c].map({v: i for i, v in enumerate(order)})
    if not keys:
        return df
    return (
        df.assign(**{f"_k{i}": keys[c] for i, c in enumerate(cols)})
        .sort_values([f"_k{i}" for i in range(len(cols))], kind="stable")
        .drop(columns=[f"_k{i}" for i in range(len(cols))])
    )


def metrics_table(
    df: pd.DataFrame,
    metrics: Sequence[str],
    *,
    row_cols: Sequence[str] = GROUP_KEYS,
    best_within: Sequence[str] = (),
    orders: dict | None = None,
    decimals: int = 3,
    level: float = 0.95,
    caption: str | None = None,
    label: str | None = None,
    extra_notes: Sequence[str] = (),
    resize: bool = True,
) -> str:
    """The generic metrics table: id columns that vary, then one ``value [lo, hi]`` column per
    metric present (missing metrics are skipped)."""
    if df.empty:
        raise ValueError("no rows to tabulate")
    metrics = [m for m in metrics if m in df.columns]
    if not metrics:
        raise ValueError("none of the requested metrics is in the table")
    shown, constant = _split_id_cols(df, row_cols)
    df = _order_rows(df, shown, orders)
    within = [c for c in best_within if c in shown]  # constant columns do not split the comparison
    cells = _metric_cells(df, metrics, within, decimals)
    rows = [[latex_escape(v) for v in ids] + m for ids, m in zip(df[shown].itertuples(index=False), cells)]
    header = [ID_TEX.get(c, latex_escape(c)) for c in shown] + [metric_header(m) for m in metrics]
    notes = [ci_note(level), _bold_note(within), *extra_notes, _constant_note(df, constant)]
    return booktabs_table(
        header, rows, n_id_cols=len(shown), caption=caption, label=label, notes=[n for n in notes if n], resize=resize
    )


# ---------------------------------------------------------------------------------------------
# The study's tables


def main_results_table(
    summary: pd.DataFrame,
    metrics: Sequence[str] = MAIN_METRICS,
    *,
    where: dict | None = None,
    row_cols: Sequence[str] = GROUP_KEYS,
    best_within: Sequence[str] = ("dataset", "scenario", "prompt", "readout"),
    decimals: int = 3,
    level: float = 0.95,
    caption: str = "Accuracy and calibration of each model.",
    label: str = "tab:main",
) -> str:
    """Main results: one row per (model, dataset, scenario, prompt, readout) of ``summary``
    (``where`` selects rows, e.g. ``{"scenario": "image"}``); models compared on the same condition."""
    return metrics_table(
        _where(summary, where),
        metrics,
        row_cols=row_cols,
        best_within=best_within,
        decimals=decimals,
        level=level,
        caption=caption,
        label=label,
    )


def scenario_table(
    summary: pd.DataFrame,
    scenarios: Sequence[str],
    metrics: Sequence[str] = SCENARIO_METRICS,
    *,
    where: dict | None = None,
    row_cols: Sequence[str] = keys_varying_last("scenario"),
    best_within: Sequence[str] = keys_varying_last("scenario")[:-1],
    decimals: int = 3,
    level: float = 0.95,
    caption: str = "The same items under different scenarios.",
    label: str = "tab:scenarios",
) -> str:
    """Scenario comparison: rows in the order of ``scenarios`` within each model; scenarios are
    compared within a model (and dataset, prompt, readout)."""
    rows = _where(summary, {**(where or {}), "scenario": list(scenarios)})
    return metrics_table(
        rows,
        metrics,
        row_cols=row_cols,
        best_within=best_within,
        orders={"scenario": list(scenarios)},
        decimals=decimals,
        level=level,
        caption=caption,
        label=label,
    )


def idk_table_tex(
    idk: pd.DataFrame,
    metrics: Sequence[str] = IDK_METRICS,
    *,
    where: dict | None = None,
    row_cols: Sequence[str] = keys_varying_last("prompt"),
    best_within: Sequence[str] = ("dataset", "scenario", "readout"),
    decimals: int = 3,
    level: float = 0.95,
    caption: str = r"Admitting ``I don't know'': rates on unknowable and answerable items.",
    label: str = "tab:idk",
) -> str:
    """IDK results (``mmcal.analysis.idk``'s table), one row per model x prompt; all model-prompt
    pairs on the same data compared."""
    rows = _where(idk, where)
    counts = ""
    if {"n_unknowable", "n_answerable"} <= set(rows.columns) and len(rows):
        counts = (
            f"Items per row: {int(rows['n_unknowable'].max())} unknowable, "
            f"{int(rows['n_answerable'].max())} answerable (at most)."
        )
    notes = [
        r"Admit rate: share of unknowable items answered with the IDK option; false IDK: "
        r"share of answerable items answered with it.",
        counts,
    ]
    return metrics_table(
        rows,
        metrics,
        row_cols=row_cols,
        best_within=best_within,
        decimals=decimals,
        level=level,
        caption=caption,
        label=label,
        extra_notes=[n for n in notes if n],
    )


def format_params(params) -> str:
    """A recalibrator's fitted parameters, short: ``T=1.70``; vectors by their length."""
    if _is_missing(params) or params in ("", "{}"):
        return "--"
    if isinstance(params, str):
        try:
            params = json.loads(params)
        except ValueError:
            return latex_escape(params)
    if not isinstance(params, dict) or not params:
        return "--"
    short = {"temperature": "T"}
    parts = []
    for key, value in params.items():
        name = latex_escape(short.get(key, key))
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            parts.append(f"{name}={format_number(value, 2)}")
        elif isinstance(value, (list, tuple)):
            parts.append(f"{name}: {len(value)} values")
        else:
            parts.append(f"{name}={latex_escape(value)}")
    return ", ".join(parts)


def format_p_floor(p, floor=None, decimals: int = 3) -> str:
    """A p-value that cannot go below ``floor`` (a bootstrap test's resolution): at the floor it reads
    ``$<$floor``, the floor rounded up so that the bound stays true; otherwise as ``format_p``."""
    if _is_missing(p) or _is_missing(floor) or float(floor) >= 1 or float(p) > float(floor) * (1 + 1e-9):
        return format_p(p, decimals)
    scale = 10**decimals
    return f"$<${np.ceil(float(floor) * scale - 1e-9) / scale:.{decimals}f}"


def recalibration_table(
    recal: pd.DataFrame,
    metrics: Sequence[str] = RECAL_METRICS,
    *,
    where: dict | None = None,
    decimals: int = 3,
    level: float = 0.95,
    alpha: float = 0.05,
    caption: str = "Recalibration on the test split (fitted on the calibration split).",
    label: str = "tab:recalibration",
) -> str:
    """One row per group x recalibrator ('none' first): metrics, the paired ECE change vs 'none'
    with its CI and Holm p-value, and whether accuracy is unchanged."""
    df = _where(recal, where)
    if df.empty:
        raise ValueError("no rows to tabulate")
    if "recalibrator" not in df.columns:
        raise ValueError("the recalibration table needs a 'recalibrator' column ('none' = before)")
    metrics = [m for m in metrics if m in df.columns]
    shown, constant = _split_id_cols(df, GROUP_KEYS)
    methods = list(dict.fromkeys(df["recalibrator"]))
    methods = (["none"] if "none" in methods else []) + [m for m in methods if m != "none"]
    df = _order_rows(df, [*shown, "recalibrator"], {"recalibrator": methods})
    cells = _metric_cells(df, metrics, shown, decimals)
    rows = []
    for (_, row), metric_cells in zip(df.iterrows(), cells):
        ids = [latex_escape(row[c]) for c in shown] + [latex_escape(row["recalibrator"])]
        extra = [format_params(row.get("params"))] if "params" in df.columns else []
        extra += metric_cells
        if "diff_ece_10" in df.columns:
            is_none = row["recalibrator"] == "none"
            significant = not is_none and not _is_missing(row.get("p_holm")) and float(row["p_holm"]) < alpha
            extra.append(
                "--"
                if is_none
                else format_ci(
                    row["diff_ece_10"], row.get("diff_ece_10_lo"), row.get("diff_ece_10_hi"), decimals, bold=significant
                )
            )
            extra.append("--" if is_none else format_p_floor(row.get("p_holm"), row.get("p_holm_floor")))
        if "accuracy_unchanged" in df.columns:
            extra.append("yes" if bool(row["accuracy_unchanged"]) else "no")
        rows.append(ids + extra)
    header = [ID_TEX[c] for c in shown] + ["Recalibrator"]
    header += ["Params"] if "params" in df.columns else []
    header += [metric_header(m) for m in metrics]
    if "diff_ece_10" in df.columns:
        header += [r"$\Delta$ECE$_{10}$", r"$p_{\mathrm{Holm}}$"]
    if "accuracy_unchanged" in df.columns:
        header += ["Acc. kept"]
    notes = [ci_note(level), _bold_note(shown)]
    if "diff_ece_10" in df.columns:
        notes.append(
            rf"$\Delta$ECE$_{{10}}$: paired change against no recalibration on the same "
            rf"items (negative = better calibrated), bold where the Holm-corrected "
            rf"$p < {alpha:g}$; $p$-values are Holm-corrected over all recalibrators and groups."
        )
    if "p_holm_floor" in df.columns and df["p_holm_floor"].notna().any():
        notes.append(
            r"$p$ ``$<x$'': no bootstrap replicate crossed zero; $x$ is the smallest $p$ the test "
            r"can give, rounded up."
        )
    notes.append(_constant_note(df, constant))
    return booktabs_table(
        header, rows, n_id_cols=len(shown) + 1, caption=caption, label=label, notes=[n for n in notes if n]
    )


def comparison_table(
    comparisons: pd.DataFrame,
    metrics: Sequence[str] | None = None,
    *,
    decimals: int = 3,
    level: float = 0.95,
    alpha: float = 0.05,
    caption: str = "Paired comparisons on the same items (difference = B $-$ A).",
    label: str = "tab:comparisons",
) -> str:
    """One row per comparison x metric: A and B, their values, the paired difference with its
    CI (bold when the Holm-corrected p < ``alpha``), Holm p and the TOST equivalence p."""
    df = comparisons if metrics is None else comparisons[comparisons["metric"].isin(list(metrics))]
    if df.empty:
        raise ValueError("no rows to tabulate")
    df = _order_rows(df, ["comparison", "metric"], {"metric": list(metrics) if metrics else None})
    rows = []
    for _, row in df.iterrows():
        p_holm = row.get("p_holm")
        significant = not _is_missing(p_holm) and float(p_holm) < alpha
        tost = format_p(row.get("tost_p"))
        if "equivalent" in row and not _is_missing(row["equivalent"]) and bool(row["equivalent"]):
            tost += r"$^{\dagger}$"
        rows.append(
            [
                latex_escape(row["comparison"]),
                latex_escape(row.get("a_label", "")),
                latex_escape(row.get("b_label", "")),
                METRIC_TEX.get(row["metric"], latex_escape(row["metric"])),
                format_number(row.get("value_a"), decimals),
                format_number(row.get("value_b"), decimals),
                format_ci(row["diff"], row.get("diff_lo"), row.get("diff_hi"), decimals, bold=significant),
                format_p(p_holm),
                tost,
            ]
        )
    header = [
        "Comparison",
        "A",
        "B",
        "Metric",
        "A value",
        "B value",
        r"$\Delta$ (B$-$A)",
        r"$p_{\mathrm{Holm}}$",
        r"TOST $p$",
    ]
    margins = sorted({float(m) for m in df.get("margin", pd.Series(dtype=float)) if not _is_missing(m)})
    margin_text = ", ".join(format_number(m, decimals) for m in margins) or "the configured margin"
    notes = [
        ci_note(level),
        rf"$p$-values are two-sided bootstrap $p$-values, Holm-corrected over all comparisons "
        rf"and metrics; bold differences have $p_{{\mathrm{{Holm}}}} < {alpha:g}$.",
        rf"TOST: equivalence test with margin $\pm${margin_text}; $^{{\dagger}}$: equivalent at "
        rf"level {alpha:g}.",
    ]
    return booktabs_table(header, rows, n_id_cols=4, caption=caption, label=label, notes=notes)


def best_prompts_table(
    best_prompts: Sequence[dict],
    *,
    decimals: int = 3,
    level: float = 0.95,
    text_width: str = "0.38\\linewidth",
    caption: str = "Answer prompts found by the prompt search (one per model).",
    label: str = "tab:best-prompts",
) -> str:
    """Appendix: each model's best prompt text with its calibration-split and test-split
    accuracy / ECE. Entries: ``{model, text, calib: {...}, test: {..., _lo/_hi}}``."""
    if not best_prompts:
        raise ValueError("no prompts to tabulate")
    rows = []
    for entry in best_prompts:
        calib, test = entry.get("calib") or {}, entry.get("test") or {}
        rows.append(
            [
                latex_escape(entry.get("model", entry.get("name", ""))),
                latex_escape(entry.get("text", "")),
                format_number(calib.get("accuracy"), decimals),
                format_number(calib.get("ece_10"), decimals),
                format_ci(test.get("accuracy"), test.get("accuracy_lo"), test.get("accuracy_hi"), decimals),
                format_ci(test.get("ece_10"), test.get("ece_10_lo"), test.get("ece_10_hi"), decimals),
            ]
        )
    header = ["Model", "Prompt", "Calib.\\ acc.", "Calib.\\ ECE$_{10}$", "Test acc.", "Test ECE$_{10}$"]
    notes = [
        ci_note(level) + " Intervals on the test split only: the calibration split chose the prompt.",
        "Rows are different models and are not compared, so no value is bold.",
    ]
    return booktabs_table(
        header,
        rows,
        n_id_cols=1,
        align=f"lp{{{text_width}}}cccc",
        caption=caption,
        label=label,
        notes=notes,
        resize=True,
    )


_POLICY_TEXT = {"keep": "kept, counted wrong", "drop": "dropped"}


def protocol_rows(summary: pd.DataFrame, no_letter: pd.DataFrame, part: dict) -> pd.DataFrame:
    """The protocol table's rows (``parts.protocol``: model, dataset, scenario, ``ours`` and ``reference`` as
    {prompt, readout}): our row from the summary, the reference's under both no-letter policies (keep:
    counted wrong; drop: left out) from no_letter.csv; each row names its file (``from``) and row there."""
    cond = {k: part[k] for k in RUN_KEYS if k in part}  # model, dataset, scenario
    ours = _where(summary, {**cond, **part["ours"]})
    ref = _where(no_letter, {**cond, **part["reference"]})
    if len(ours) != 1 or len(ref) != 2:
        raise ValueError(f"protocol table: expected 1 summary row and 2 no-letter rows for {part}")
    ref = ref.sort_values("no_letter_policy", key=lambda c: c.map({"keep": 0, "drop": 1}))
    ours = ours.assign(protocol="ours", no_letter_items="--", no_letter_policy="", n_no_letter=0, **{"from": "summary"})
    ref = ref.assign(
        protocol="reference", no_letter_items=ref["no_letter_policy"].map(_POLICY_TEXT), **{"from": "no_letter"}
    )
    rows = pd.concat([ours, ref]).rename_axis("from_row").reset_index()
    rows["prompt_readout"] = rows["prompt"] + ", " + rows["readout"]
    return rows


def protocol_table(
    summary: pd.DataFrame,
    no_letter: pd.DataFrame,
    part: dict,
    paired: pd.DataFrame | None = None,
    metrics: Sequence[str] = ("accuracy", "ece_10"),
    decimals: int = 3,
    level: float = 0.95,
) -> str:
    """Our protocol vs the reference study's, on one model and condition (rows: :func:`protocol_rows`).
    ``paired``: the comparisons.csv rows of their paired test (``parts.protocol.comparison``), in a note."""
    rows = [
        [latex_escape(r["protocol"]), latex_escape(r["prompt_readout"]), latex_escape(r["no_letter_items"])]
        + [str(int(r["n"])), str(int(r["n_no_letter"]))]
        + [format_ci(r[m], r.get(f"{m}_lo"), r.get(f"{m}_hi"), decimals) for m in metrics]
        for _, r in protocol_rows(summary, no_letter, part).iterrows()
    ]
    header = ["Protocol", "Prompt, readout", "No-letter items", "$n$", "No letter"] + [
        metric_header(m) for m in metrics
    ]
    notes = [
        ci_note(level),
        "Reference: the released code's raw prompt (no chat template) and greedy loop (at most 20 tokens, "
        "full-vocabulary probability of the first decoded option letter).",
        f"All rows: model {latex_escape(part['model'])}, dataset {latex_escape(part['dataset'])}, "
        f"scenario {latex_escape(part['scenario'])}.",
    ]
    if paired is not None and not paired.empty:
        tests = [
            f"{METRIC_TEX.get(r['metric'], latex_escape(r['metric']))} "
            + format_ci(r["diff"], r["diff_lo"], r["diff_hi"], decimals)
            + rf", $p_{{\mathrm{{Holm}}}}$ {format_p(r['p_holm'])}"
            for _, r in paired[paired["metric"].isin(list(metrics))].iterrows()
        ]
        notes.append(
            f"Paired over {int(paired['n_paired'].iloc[0])} items, {latex_escape(paired['b_label'].iloc[0])} "
            f"$-$ {latex_escape(paired['a_label'].iloc[0])}: " + "; ".join(tests) + "."
        )
    return booktabs_table(
        header,
        rows,
        n_id_cols=3,
        caption="Our protocol vs the reference study's on the same model and items.",
        label="tab:protocol",
        notes=notes,
    )


def write_table(tex: str, path) -> Path:
    """Write ``tex`` to ``path`` (parents created; replaced atomically so \\input never sees half a file)."""
    return write_text_atomically(path, tex if tex.endswith("\n") else tex + "\n", "table")
