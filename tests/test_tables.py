"""LaTeX tables (formatting, bold best, escaping, a hand-checked table) and paper/main.tex."""

from __future__ import annotations

import json
import shutil

import numpy as np
import pandas as pd
import pytest

from mmcal.paper import tables as T
from mmcal.paper.main_tex import NOT_RUN, PARTS, compile_pdf, latex_problems, render_main_tex, write_main_tex


def summary_rows(**metrics) -> pd.DataFrame:
    """A two-model summary: ``metrics`` maps a metric to its (model-a, model-b) values; CIs +-0.01."""
    rows = []
    for i, model in enumerate(["model_a", "model_b"]):
        row = {
            "model": model,
            "dataset": "fmnist",
            "scenario": "image",
            "prompt": "default",
            "readout": "letter_restricted",
        }
        for metric, values in metrics.items():
            row.update({metric: values[i], f"{metric}_lo": values[i] - 0.01, f"{metric}_hi": values[i] + 0.01})
        rows.append(row)
    return pd.DataFrame(rows)


# ------------------------------------------------------------------------------------------------
# Cells
# ------------------------------------------------------------------------------------------------


def test_format_ci():
    assert T.format_ci(0.51234, 0.48, 0.5456) == "0.512 [0.480, 0.546]"
    assert T.format_ci(0.5, 0.4, 0.6, decimals=1) == "0.5 [0.4, 0.6]"
    assert T.format_ci(0.5, 0.4, 0.6, bold=True) == r"\textbf{0.500} [0.400, 0.600]"
    assert T.format_ci(0.5) == "0.500"
    assert T.format_ci(0.5, np.nan, np.nan) == "0.500"
    assert T.format_ci(np.nan, 0.1, 0.2) == "-- [0.100, 0.200]"
    assert T.format_ci(-0.0123, -0.02, 0.0001) == "$-$0.012 [$-$0.020, 0.000]"


def test_format_p():
    assert T.format_p(0.04567) == "0.046"
    assert T.format_p(0.0002) == "$<$0.001"
    assert T.format_p(None) == "--"


def test_latex_escape():
    assert T.latex_escape("a_b & c% #1") == r"a\_b \& c\% \#1"
    assert T.latex_escape("$x$ {y} ~ ^ \\") == r"\$x\$ \{y\} \textasciitilde{} \textasciicircum{} \textbackslash{}"


def test_metric_direction():
    assert T.metric_direction("accuracy") == "max"
    assert T.metric_direction("acc_at_cov_80") == "max"
    assert T.metric_direction("auroc") == "max"
    for metric in (
        "ece_10",
        "ece_adaptive_15",
        "ece_debiased",
        "mce_10",
        "brier",
        "brier_top",
        "nll",
        "aurc",
        "augrc",
        "smece",
        "false_idk_rate",
    ):
        assert T.metric_direction(metric) == "min", metric
    assert T.metric_direction("overconfidence") == "zero"
    assert T.metric_direction("mean_confidence") is None


def test_best_mask():
    assert T.best_mask([0.3, 0.5, 0.4], "max").tolist() == [False, True, False]
    assert T.best_mask([0.3, 0.5, 0.4], "min").tolist() == [True, False, False]
    # ties at the printed precision are all best; NaN never is
    assert T.best_mask([0.1231, 0.1234, np.nan], "min").tolist() == [True, True, False]
    assert T.best_mask([-0.05, 0.02, 0.1], "zero").tolist() == [False, True, False]
    # nothing to compare: no bold
    assert T.best_mask([0.5], "max").tolist() == [False]
    assert T.best_mask([0.5, 0.6], None).tolist() == [False, False]


# ------------------------------------------------------------------------------------------------
# Tables
# ------------------------------------------------------------------------------------------------


HAND_CHECKED_TABULAR = r"""\begin{tabular}{lcc}
\toprule
Model & Acc. $\uparrow$ & ECE$_{10}$ $\downarrow$ \\
\midrule
model\_a & 0.600 [0.590, 0.610] & \textbf{0.050} [0.040, 0.060] \\
model\_b & \textbf{0.700} [0.690, 0.710] & 0.100 [0.090, 0.110] \\
\bottomrule
\end{tabular}"""

HAND_CHECKED_NOTES = (
    r"\parbox{\linewidth}{\footnotesize Brackets: 95\,\% cluster-bootstrap percentile intervals "
    r"(items that share an image or source are resampled together). Bold: best value of a column "
    r"($\uparrow$ higher, $\downarrow$ lower is better). All rows: dataset fmnist, scenario image, "
    r"prompt default, readout letter\_restricted.}"
)


def test_hand_checked_main_table():
    summary = summary_rows(accuracy=(0.6, 0.7), ece_10=(0.05, 0.1))
    tex = T.main_results_table(summary, metrics=["accuracy", "ece_10"], caption="Results.", label="tab:t")
    lines = tex.splitlines()
    assert lines[:6] == [
        r"\begin{table}[tbp]",
        r"\centering",
        r"\small",
        r"\setlength{\tabcolsep}{4pt}",
        r"\caption{Results.}",
        r"\label{tab:t}",
    ]
    start = tex.index(r"\begin{tabular}")
    assert tex[start : tex.index(r"\end{tabular}") + len(r"\end{tabular}")] == HAND_CHECKED_TABULAR
    # shrunk to the line width only when wider than it
    assert r"\ifdim\wd\mmcaltablebox>\linewidth" in tex
    assert lines[-2:] == [HAND_CHECKED_NOTES, r"\end{table}"]
    assert not latex_problems(tex)


def test_main_table_skips_missing_metrics_and_bolds_within_condition():
    summary = pd.concat(
        [
            summary_rows(accuracy=(0.6, 0.7), nll=(1.2, 0.9)),
            summary_rows(accuracy=(0.8, 0.3), nll=(0.5, 2.0)).assign(scenario="blind"),
        ],
        ignore_index=True,
    )
    tex = T.main_results_table(summary, metrics=["accuracy", "ece_10", "nll"])
    assert "ECE" not in tex.split(r"\midrule")[0]  # the absent metric has no column
    body = tex.split(r"\midrule")[1]
    # the best of each scenario is bold, compared only within the scenario
    assert body.count(r"\textbf{") == 4
    for best in ("0.700", "0.900", "0.800", "0.500"):
        assert rf"\textbf{{{best}}}" in body
    assert "among rows with the same scenario" in tex


def test_scenario_table_keeps_the_given_order():
    summary = pd.concat(
        [summary_rows(accuracy=(0.6, 0.7)).assign(scenario=s) for s in ("image", "blind", "text-desc")],
        ignore_index=True,
    )
    tex = T.scenario_table(summary, scenarios=["text-desc", "image", "blind"])
    body = tex.split(r"\midrule")[1]
    assert body.index("text-desc") < body.index("image") < body.index("blind")
    assert body.count("model\\_a") == 1  # repeated model names are blanked


def test_comparison_table_marks_holm_significance():
    comparisons = pd.DataFrame(
        [
            {
                "comparison": "a_vs_b",
                "metric": "ece_10",
                "a_label": "stage_1",
                "b_label": "stage_2",
                "n_paired": 50,
                "value_a": 0.2,
                "value_b": 0.1,
                "diff": -0.1,
                "diff_lo": -0.15,
                "diff_hi": -0.05,
                "p_value": 0.001,
                "p_holm": 0.002,
                "tost_p": 0.9,
                "margin": 0.02,
                "equivalent": False,
                "significant": True,
            },
            {
                "comparison": "a_vs_b",
                "metric": "accuracy",
                "a_label": "stage_1",
                "b_label": "stage_2",
                "n_paired": 50,
                "value_a": 0.7,
                "value_b": 0.705,
                "diff": 0.005,
                "diff_lo": -0.01,
                "diff_hi": 0.015,
                "p_value": 0.5,
                "p_holm": 0.5,
                "tost_p": 0.01,
                "margin": 0.02,
                "equivalent": True,
                "significant": False,
            },
        ]
    )
    tex = T.comparison_table(comparisons)
    assert r"\textbf{$-$0.100} [$-$0.150, $-$0.050]" in tex
    assert r"0.005 [$-$0.010, 0.015]" in tex and r"\textbf{0.005}" not in tex
    assert r"0.010$^{\dagger}$" in tex
    assert "Holm-corrected" in tex and "a\\_vs\\_b" in tex and "stage\\_1" in tex
    assert not latex_problems(tex)


def test_summary_split_column_changes_no_table():
    summary = summary_rows(accuracy=(0.7, 0.8), ece_10=(0.1, 0.05))
    assert T.main_results_table(summary.assign(split="test")) == T.main_results_table(summary)
    assert T.scenario_table(summary.assign(split="test"), ["image"]) == T.scenario_table(summary, ["image"])


def test_idk_table():
    idk = summary_rows(admit_rate=(0.3, 0.6), false_idk_rate=(0.1, 0.2), answerable_accuracy=(0.8, 0.7))
    tex = T.idk_table_tex(idk)
    assert r"\textbf{0.600}" in tex and r"\textbf{0.100}" in tex and r"\textbf{0.800}" in tex
    assert "Acc. (answerable)" in tex
    assert not latex_problems(tex)


def idk_records(prompt: str, preds) -> pd.DataFrame:
    """Four IDK items (option 2 = IDK): two answerable (gold 0), two unknowable (gold 2)."""
    rows = []
    for i, pred in enumerate(preds):
        answerable = i < 2
        gold = 0 if answerable else 2
        rows.append(
            {
                "item_id": f"i{i}",
                "cluster_id": f"c{i}",
                "split": "test",
                "model": "m",
                "dataset": "idk",
                "scenario": "image",
                "prompt": prompt,
                "readout": "letter_restricted",
                "gold": gold,
                "pred": pred,
                "correct": pred == gold,
                "confidence": 0.6,
                "option_scores": [np.log(0.6 if k == pred else 0.2) for k in range(3)],
                "status": "ok",
                "meta": json.dumps(
                    {"answerable": answerable, "idk_index": 2, "kind": "control" if answerable else "unknown_class"}
                ),
            }
        )
    return pd.DataFrame(rows)


def test_idk_table_reads_the_names_the_idk_metrics_write():
    from mmcal.analysis.idk import idk_table

    records = pd.concat([idk_records("plain", [0, 1, 2, 0]), idk_records("hint", [0, 2, 2, 2])])
    idk = idk_table(records, B=50)
    # one vocabulary: every metric the table shows is a column the producer writes, with a header
    for metric in T.IDK_METRICS:
        assert {metric, f"{metric}_lo", f"{metric}_hi"} <= set(idk.columns), metric
        assert metric in T.METRIC_TEX, metric
    tex = T.idk_table_tex(idk)
    rows = [line for line in tex.split(r"\midrule")[1].splitlines() if line.endswith(r"\\")]
    values = {line.split(" & ")[0]: [cell.split(" [")[0] for cell in line[:-2].split(" & ")[1:]] for line in rows}
    # columns: admit rate, false IDK, answerable accuracy, abstain F1, ECE of the answered answerable
    # hint: admits both unknowable items, refuses i1; tp 2, fp 1, fn 0; answered: i0 (0.6, right)
    assert values["hint"] == [r"\textbf{1.000}", "0.500", r"\textbf{0.500}", r"\textbf{0.800}", "0.400"]
    # plain: admits i2 only, refuses nothing; tp 1, fp 0, fn 1; answered: i0 right, i1 wrong, both 0.6
    assert values["plain"] == ["0.500", r"\textbf{0.000}", r"\textbf{0.500}", "0.667", r"\textbf{0.100}"]


def test_recalibration_table():
    rows = []
    for k, method in enumerate(["temperature", "none"]):
        rows.append(
            {
                "model": "m",
                "dataset": "d",
                "scenario": "image",
                "prompt": "default",
                "readout": "letter_restricted",
                "recalibrator": method,
                "params": json.dumps({"temperature": 1.734}) if method == "temperature" else "{}",
                "accuracy": 0.7,
                "accuracy_lo": 0.65,
                "accuracy_hi": 0.75,
                "ece_10": 0.05 + 0.1 * k,
                "ece_10_lo": 0.03 + 0.1 * k,
                "ece_10_hi": 0.07 + 0.1 * k,
                "diff_ece_10": np.nan if method == "none" else -0.1,
                "diff_ece_10_lo": np.nan if method == "none" else -0.12,
                "diff_ece_10_hi": np.nan if method == "none" else -0.08,
                "p_holm": np.nan if method == "none" else 0.001,
                "accuracy_unchanged": True,
            }
        )
    tex = T.recalibration_table(pd.DataFrame(rows))
    body = tex.split(r"\midrule")[1]
    assert body.index("none") < body.index("temperature")  # 'before' comes first
    assert "T=1.73" in body
    assert r"\textbf{0.050}" in body  # lower ECE after temperature scaling
    assert r"\textbf{$-$0.100} [$-$0.120, $-$0.080]" in body
    assert r"\textbf{0.700}" in body  # equal accuracies: a tie, both bold
    assert "Holm-corrected" in tex
    assert not latex_problems(tex)


def test_best_prompts_table_escapes_prompt_text():
    tex = T.best_prompts_table(
        [
            {
                "model": "tiny_llava",
                "text": 'Answer 100% & say "A" #1',
                "calib": {"accuracy": 0.5, "ece_10": 0.1},
                "test": {"accuracy": 0.6, "accuracy_lo": 0.5, "accuracy_hi": 0.7, "ece_10": 0.08},
            }
        ]
    )
    assert r"tiny\_llava & Answer 100\% \& say " in tex
    assert r"\#1" in tex
    assert "0.600 [0.500, 0.700]" in tex and "& 0.080" in tex
    assert not latex_problems(tex)


def test_every_table_is_balanced():
    summary = summary_rows(accuracy=(0.6, 0.7), ece_10=(0.05, 0.1), brier=(0.3, 0.2))
    for tex in (T.main_results_table(summary), T.scenario_table(summary, ["image"])):
        assert not latex_problems(tex)
        assert tex.count(r"\begin{") == tex.count(r"\end{")


def test_write_table(tmp_path):
    path = T.write_table("x", tmp_path / "tables" / "main.tex")
    assert path.read_text() == "x\n"
    assert not list(path.parent.glob("*.tmp"))


def test_no_rows_is_a_clear_error():
    with pytest.raises(ValueError, match="no rows"):
        T.main_results_table(summary_rows(accuracy=(0.6, 0.7)), where={"model": "absent"})


# ------------------------------------------------------------------------------------------------
# paper/main.tex
# ------------------------------------------------------------------------------------------------


def test_latex_problems_detects_imbalance():
    assert latex_problems(r"\begin{a}{x}\end{a} 50\% \{ % { in a comment") == []
    assert latex_problems(r"\begin{a}\end{b}")
    assert latex_problems(r"\begin{a}")
    assert latex_problems("{")
    assert latex_problems("}")


def make_paper_inputs(tmp_path):
    paper = tmp_path / "paper"
    (paper / "tables").mkdir(parents=True)
    (tmp_path / "figures").mkdir()
    for name in ("main", "comparisons", "idk"):
        T.write_table(T.main_results_table(summary_rows(accuracy=(0.6, 0.7))), paper / "tables" / f"{name}.tex")
    for name in ("reliability_a", "forest", "idk_tradeoff"):
        (tmp_path / "figures" / f"{name}.pdf").write_bytes(b"%PDF-1.4\n")
    sections = [
        {
            "title": "Main results",
            "text": "Accuracy & ECE of model_a.",
            "tables": ["tables/main.tex"],
            "figures": [{"path": "../figures/reliability_a.pdf", "caption": "Reliability of model_a (50% CI?)."}],
        },
        {
            "key": "visual_ft",
            "title": "Visual fine-tuning",
            "tables": ["tables/comparisons.tex"],
            "figures": [("../figures/forest.pdf", "Paired differences.")],
        },
        {
            "title": "IDK",
            "tables": ["tables/idk.tex"],
            "figures": [{"path": "../figures/idk_tradeoff.pdf", "width": 0.5}],
        },
        {"title": "Recalibration", "tables": ["tables/recalibration.tex"]},  # never produced
    ]
    return paper, sections


def test_main_tex_is_balanced_and_includes_everything(tmp_path):
    paper, sections = make_paper_inputs(tmp_path)
    path = write_main_tex(paper / "main.tex", sections, commit="0123abc", config_hash="cfg_hash", date="2025-01-31")
    tex = path.read_text()
    assert latex_problems(tex) == []
    assert tex.startswith(r"\documentclass")
    for package in ("booktabs", "graphicx"):
        assert rf"\usepackage{{{package}}}" in tex
    assert "mmcal: calibration of multimodal LLMs --- regenerated study" in tex
    for table in ("tables/main.tex", "tables/comparisons.tex", "tables/idk.tex"):
        assert rf"\input{{{table}}}" in tex
    for fig in ("reliability_a", "forest"):
        assert rf"\includegraphics{{../figures/{fig}.pdf}}" in tex  # natural size, shrunk if too wide
    assert r"\includegraphics[width=0.5\linewidth]{../figures/idk_tradeoff.pdf}" in tex
    assert r"\caption{Reliability of model\_a (50\% CI?).}" in tex
    assert "Accuracy \\& ECE of model\\_a." in tex
    # provenance
    assert r"\texttt{0123abc}" in tex and r"\texttt{cfg\_hash}" in tex and "2025-01-31" in tex
    # one section per part, in the study's order, the missing ones saying so
    titles = [line[len(r"\section{") : -1] for line in tex.splitlines() if line.startswith(r"\section{")]
    assert titles == [title for _, title, _ in PARTS]
    sections_text = tex.split(r"\section{")
    not_run = {s.split("}")[0] for s in sections_text[1:] if NOT_RUN in s}
    assert not_run == {
        "Base LLM vs MLLM",
        "Text vs image",
        "Option order",
        "Recalibration",
        "Prompt search",
        "Reference protocol",
        "Additional results",
    }
    assert r"\input{tables/recalibration.tex}" not in tex  # missing file left out, not \input
    assert r"\texttt{recalibration.tex}" in tex


def test_main_tex_without_file_checks_keeps_every_input():
    tex = render_main_tex(
        [{"title": "Main results", "tables": ["tables/x.tex"]}, {"title": "Extra part", "text": "Only words."}],
        commit=None,
        config_hash=None,
        date=None,
    )
    assert r"\input{tables/x.tex}" in tex
    assert "unknown (not a git checkout)" in tex
    extra = tex.split(r"\section{Extra part}")[1].split(r"\section{")[0]
    assert "Only words." in extra and NOT_RUN not in extra  # a text-only section is not "not run"
    assert tex.index(r"\section{Extra part}") < tex.index(r"\appendix")
    assert latex_problems(tex) == []


@pytest.mark.skipif(shutil.which("pdflatex") is None, reason="pdflatex is not installed")
def test_main_tex_compiles(tmp_path):
    paper, sections = make_paper_inputs(tmp_path)
    for name in ("reliability_a", "forest", "idk_tradeoff"):  # real PDFs for \includegraphics
        import matplotlib.pyplot as plt

        from mmcal.figures.style import save_figure

        save_figure(plt.figure(figsize=(1, 1)), tmp_path / "figures" / name, dpi=50)
    path = write_main_tex(paper / "main.tex", sections, commit="c", config_hash="h", date="d")
    assert compile_pdf(path).exists()
