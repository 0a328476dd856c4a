"""The paper's tables and the layout of ``main.tex``, from explicit inputs (no config dict).

``make_tables`` writes every LaTeX table from the metric tables and the ``parts`` entries that pick
their rows (``TABLE_PARTS``); ``paper_sections`` puts each table (``TABLE_SECTIONS``) and each
figure (its registry section and caption) in its part of ``main.tex``.
"""

from __future__ import annotations

import json
from pathlib import Path

import pandas as pd

from mmcal.paper import tables as T
from mmcal.paper.main_tex import PARTS

# The ``parts`` entries make_tables reads: the tables job's params, so editing another part
# (idk, recalibration) never re-writes the tables.
TABLE_PARTS = ("main", "visual_finetuning", "base_vs_mllm", "text_vs_image", "option_order", "protocol")

# Table (file stem under paper/tables/) → the part of main.tex that shows it.
TABLE_SECTIONS = {
    "main_results": "main",
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


def table_parts(parts: dict) -> dict:
    return {key: parts[key] for key in TABLE_PARTS if parts.get(key)}


def _read_csv(path) -> pd.DataFrame:
    try:
        return pd.read_csv(path)
    except pd.errors.EmptyDataError:
        return pd.DataFrame()


def make_tables(inputs: dict, out_dir: Path, parts: dict, level: float) -> list[Path]:
    """Every LaTeX table of the study under ``out_dir``. ``inputs``: paths of summary, comparisons and,
    when present, idk, recalibration, best; ``parts``: the ``TABLE_PARTS`` entries; ``level``: the CI
    level of the best-prompt table. A table whose rows are absent is not written."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    summary = _read_csv(inputs["summary"])
    written = []

    def put(name, tex):
        path = out_dir / f"{name}.tex"
        T.write_table(tex, path)
        written.append(path)

    main = parts["main"]
    put(
        "main_results",
        T.main_results_table(
            summary, where={"dataset": main["dataset"], "scenario": main["scenario"], "prompt": main["prompt"]}
        ),
    )  # label tab:main
    bm = parts.get("base_vs_mllm")
    if bm and ((summary["dataset"] == bm["dataset"]) & (summary["scenario"] == bm["scenario"])).any():
        put(
            "base_vs_mllm",
            T.main_results_table(
                summary,
                where={"dataset": bm["dataset"], "scenario": bm["scenario"], "prompt": bm["prompt"]},
                caption="Base LLM vs the MLLMs built on it, on the same text-only questions.",
                label="tab:base-vs-mllm",
            ),
        )
    vf = parts.get("visual_finetuning")
    if vf:
        put(
            "visual_finetuning",
            T.main_results_table(
                summary,
                where={
                    "dataset": vf["dataset"],
                    "scenario": vf["scenario"],
                    "prompt": vf["prompt"],
                    "model": [vf["before"], vf["after"]],
                },
                caption="Before (feature alignment) vs after visual instruction tuning, same items.",
                label="tab:visual-ft",
            ),
        )
    tv = parts.get("text_vs_image")
    if tv and summary["scenario"].isin(tv["scenarios"][1:]).any():
        put(
            "text_vs_image",
            T.scenario_table(summary, tv["scenarios"], where={"dataset": tv["dataset"], "prompt": tv["prompt"]}),
        )
    oo = parts.get("option_order")
    if oo and summary["scenario"].isin(oo["scenarios"][1:]).any():
        put(
            "option_order",
            T.scenario_table(
                summary, oo["scenarios"], where={"dataset": oo["dataset"], "model": oo["model"], "prompt": oo["prompt"]}
            ),
        )
    comparisons = _read_csv(inputs["comparisons"])
    pr = parts.get("protocol")
    no_letter = _read_csv(inputs["no_letter"]) if inputs.get("no_letter") else pd.DataFrame()
    if pr and not no_letter.empty:
        # the protocol's paired test is shown with its table, not among the study's comparisons
        mine = comparisons["comparison"] == pr.get("comparison") if not comparisons.empty else None
        paired = comparisons[mine] if mine is not None else None
        put("protocol", T.protocol_table(summary, no_letter, pr, paired, level=float(level)))
        comparisons = comparisons[~mine] if mine is not None else comparisons
    if not comparisons.empty:
        put("comparisons", T.comparison_table(comparisons))
    if inputs.get("idk"):
        idk = _read_csv(inputs["idk"])
        if not idk.empty:
            put("idk", T.idk_table_tex(idk))
    if inputs.get("recalibration"):
        recal = _read_csv(inputs["recalibration"])
        if not recal.empty:
            put("recalibration", T.recalibration_table(recal))
    if inputs.get("best"):
        best = json.loads(Path(inputs["best"]).read_text())
        put("best_prompts", T.best_prompts_table([best], level=float(level)))
    return written


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
