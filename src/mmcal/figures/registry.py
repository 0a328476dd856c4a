"""The figure kinds of the study, each declared in one place: its plan, renderer, paper section and caption.

A kind's *plan* reads the config once, at DAG-planning time, and says which figures of that kind the
study draws (``reliability`` draws one per model), from which input files, with which options (its
*spec*: the slice of ``parts`` and of the figure options the renderer reads, nothing else). The
workflow passes the spec to the figure job as its params, so editing one ``parts:`` entry or one
figure option re-runs exactly the figures whose spec holds it. The *renderer* takes the inputs and
the spec, never the config. Everything reads records or metric tables; nothing re-runs a model.

To add a figure: write ``_plan_x``, ``_render_x`` and a caption, and add one ``KINDS`` entry.
"""

from __future__ import annotations

import copy
import json
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from mmcal import figures as F
from mmcal.plan import records_path
from mmcal.records import (
    GROUP_KEYS,
    IMPORTED_READOUTS,
    NO_CONFIDENCE_READOUTS,
    RUN_KEYS,
    in_split,
    read_records,
    select,
)

Inputs = dict[str, list[str]]


@dataclass(frozen=True)
class FigureKind:
    """``plan(config, runs)`` → {figure name: (inputs, own options)}; ``render(inputs, spec, out_stem)``
    writes the PDF and PNG; ``caption(spec)`` is the figure's caption in the report and the paper;
    ``shared`` names the study-wide options (``SHARED``) the renderer reads besides ``dpi``."""

    section: str
    plan: Callable[[dict, list[dict]], dict[str, tuple[Inputs, dict]]]
    render: Callable[[Inputs, dict, Path], list[Path]]
    caption: Callable[[dict], str]
    shared: tuple[str, ...] = ()


@dataclass(frozen=True)
class Figure:
    """One planned figure: its input files and ``spec`` (kind, dpi, model order, shared and own options)."""

    name: str
    inputs: Inputs
    spec: dict

    @property
    def kind(self) -> FigureKind:
        return KINDS[self.spec["kind"]]

    @property
    def caption(self) -> str:
        return self.kind.caption(self.spec)

    @property
    def section(self) -> str:
        return self.kind.section


# Study-wide options a kind may read (FigureKind.shared), and where the config keeps them.
SHARED = {
    "bins": lambda config: int(config["figures"]["reliability_bins"]),
    "seed": lambda config: int(config["seed"]),
    "split": lambda config: config["metrics"]["split"],
    # imported runs add the harness readouts that carry a confidence (mmcal.imports)
    "readouts": lambda config: (
        list(config["readouts"]) + (list(IMPORTED_WITH_CONFIDENCE) if config.get("imports") else [])
    ),
}
IMPORTED_WITH_CONFIDENCE = tuple(r for r in IMPORTED_READOUTS if r not in NO_CONFIDENCE_READOUTS)


def figure_plan(config: dict, runs: list[dict]) -> dict[str, Figure]:
    """Every figure the config asks for, by name (the file stem under figures/), in paper order.
    Parts without scored runs draw nothing. Specs are copies: editing the config later leaves them be."""
    out: dict[str, Figure] = {}
    for kind, fk in KINDS.items():
        for name, (inputs, own) in fk.plan(config, runs).items():
            spec = {
                "kind": kind,
                "dpi": int(config["figures"]["dpi"]),
                "model_order": [*config["models"], *(config.get("imports") or {})],
                **{key: SHARED[key](config) for key in fk.shared},
                **copy.deepcopy(own),
            }
            out[name] = Figure(name, inputs, spec)
    return out


def render_figure(inputs: Inputs, spec: dict, out_stem: Path) -> list[Path]:
    """Draw one planned figure (``Figure.inputs``, ``Figure.spec``) to ``out_stem``.pdf/.png."""
    F.set_model_order(spec["model_order"])
    return KINDS[spec["kind"]].render(inputs, spec, Path(out_stem))


# ---- planning helpers -----------------------------------------------------------------------
def _runs_where(runs: list[dict], **where) -> list[dict]:
    """Runs matching every ``key=value`` (a list means "any of"; None means "any")."""

    def ok(run, key, value):
        return value is None or (run[key] in value if isinstance(value, (list, tuple)) else run[key] == value)

    return [r for r in runs if all(ok(r, k, v) for k, v in where.items())]


def _paths(runs: list[dict]) -> list[str]:
    return sorted({records_path(r) for r in runs})


def _part(config: dict, key: str) -> dict | None:
    return (config.get("parts") or {}).get(key)


def _main_runs(config: dict, runs: list[dict]) -> list[dict]:
    main = config["parts"]["main"]
    return _runs_where(runs, dataset=main["dataset"], scenario=main["scenario"], prompt=main["prompt"])


def _test_records(paths: list[str], split: str) -> pd.DataFrame:
    return in_split(read_records(paths), split)


def _describe(where: dict) -> str:
    return ", ".join(f"{k} {where[k]}" for k in RUN_KEYS if where.get(k))


# ---- reliability_<model>: one per model, on the main group (else the model's first run) -------
def _plan_reliability(config, runs):
    plans = {}
    # imported runs too, but VLMEvalKit's logs carry no confidence to draw
    imported = [
        r["model"] for r in runs if r.get("import") and config["imports"][r["import"]]["harness"] != "vlmevalkit"
    ]
    for model in dict.fromkeys([*config["models"], *imported]):
        mine = _runs_where(_main_runs(config, runs), model=model) or _runs_where(runs, model=model)
        if mine:
            run = mine[0]
            plans[f"reliability_{model}"] = ({"records": [records_path(run)]}, {k: run[k] for k in RUN_KEYS})
    return plans


def _render_reliability(inputs, spec, out_stem):
    rec = _test_records(inputs["records"], spec["split"])
    readouts = [r for r in spec["readouts"] if (rec["readout"] == r).any()]
    panels = [(r.replace("_", " "), rec[rec["readout"] == r]) for r in readouts]
    if not panels and rec["readout"].isin(NO_CONFIDENCE_READOUTS).any():  # a generation-only harness log
        from mmcal.figures.reported_metrics import plot_no_confidence

        return plot_no_confidence(rec, out_stem, dpi=spec["dpi"])
    return F.plot_reliability_panels(panels, out_stem, bins=spec["bins"], seed=spec["seed"], dpi=spec["dpi"])


def _caption_reliability(spec):
    return (
        f"Reliability of {spec['model']} ({_describe({**spec, 'model': None})}; {spec['split']} split), "
        f"one panel per readout: accuracy against mean confidence in {spec['bins']} equal-width "
        "confidence bins with a 95 % cluster-bootstrap band (top) and the items per bin (bottom)."
    )


# ---- the main group: confidence histograms and risk-coverage curves -----------------------------
def _plan_main_group(name: str):
    def plan(config, runs):
        main = _main_runs(config, runs)
        return {name: ({"records": _paths(main)}, {"readout": config["parts"]["main"]["readout"]})} if main else {}

    return plan


def _render_main(plot):
    def render(inputs, spec, out_stem):
        rec = select(_test_records(inputs["records"], spec["split"]), readout=spec["readout"])
        return plot(rec, out_stem, dpi=spec["dpi"])

    return render


def _caption_histograms(spec):
    return (
        f"Confidence of correct and incorrect answers on the main group ({spec['readout']} readout, "
        f"{spec['split']} split), one panel per model."
    )


def _caption_risk_coverage(spec):
    return (
        f"Risk-coverage curves on the main group ({spec['readout']} readout, {spec['split']} split): the "
        "error rate among the items answered when only the most confident are kept; AURC in the legend."
    )


# ---- the metrics other benchmarks report: the main group and every imported run ----------------------
def _reported_groups(config, runs):
    """The main group (its readout) and every imported run (readouts with a confidence)."""
    main = config["parts"]["main"]
    groups = [
        {**{k: r[k] for k in RUN_KEYS}, "readout": main.get("readout", "letter_restricted")}
        for r in _main_runs(config, runs)
    ]
    groups += [{**{k: r[k] for k in RUN_KEYS}, "readout": None} for r in runs if r.get("import")]
    return groups


def _plan_reported_metrics(config, runs):
    groups = _reported_groups(config, runs)
    return {"reported_metrics": ({"summary": ["data/metrics/summary.csv"]}, {"groups": groups})} if groups else {}


def reported_rows(summary: pd.DataFrame, groups: list[dict]) -> pd.DataFrame:
    """The summary rows of ``groups`` (``readout: None``: each readout with a confidence)."""
    keep = np.zeros(len(summary), dtype=bool)
    for g in groups:
        where = {k: v for k, v in g.items() if v is not None}
        keep |= summary.index.isin(select(summary, **where).index)
    return summary[keep & ~summary["readout"].isin(NO_CONFIDENCE_READOUTS).to_numpy()]


def _render_reported_metrics(inputs, spec, out_stem):
    from mmcal.figures.reported_metrics import plot_reported_metrics

    rows = reported_rows(pd.read_csv(inputs["summary"][0]), spec["groups"])
    return plot_reported_metrics(rows, out_stem, dpi=spec["dpi"])


def _caption_reported_metrics(spec):
    imported = sorted({g["model"] for g in spec["groups"] if g["readout"] is None})
    return (
        "The uncertainty metrics other benchmarks report, on the main group"
        + (f" and the imported harness runs ({', '.join(imported)})" if imported else "")
        + ": conformal prediction sets as LLM-Uncertainty-Bench computes them (LAC filled, APS open; "
        "alpha 0.1, seeded cluster halves), coverage against mean set size, the dashed line the target; "
        "HELM's equal-mass ECE-10 against its accuracy on the 10 % most confident items. 95 % "
        "cluster-bootstrap intervals."
    )


# ---- paired comparisons ------------------------------------------------------------------------
def _plan_forest(config, runs):
    return {"forest": ({"comparisons": ["data/metrics/comparisons.csv"]}, {})} if config.get("comparisons") else {}


def _render_forest(inputs, spec, out_stem):
    return F.plot_forest(pd.read_csv(inputs["comparisons"][0]), out_stem, dpi=spec["dpi"])


def _caption_forest(spec):
    return (
        "Paired comparisons (B minus A on the same items) with 95 % cluster-bootstrap intervals, one "
        "panel per metric; filled markers: Holm-adjusted p below 0.05."
    )


# ---- visual fine-tuning: before and after, per readout -------------------------------------------
def _plan_visual_finetuning(config, runs):
    vf = _part(config, "visual_finetuning")
    if not vf:
        return {}
    pair = [
        _runs_where(runs, model=vf[side], dataset=vf["dataset"], scenario=vf["scenario"], prompt=vf["prompt"])
        for side in ("before", "after")
    ]
    if not all(pair):
        return {}
    return {"visual_finetuning": ({"before": _paths(pair[0]), "after": _paths(pair[1])}, {"part": vf})}


def _render_visual_finetuning(inputs, spec, out_stem):
    vf = spec["part"]
    before = _test_records(inputs["before"], spec["split"])
    after = _test_records(inputs["after"], spec["split"])
    panels = []
    for readout in vf["readouts"]:
        panels += [
            (f"{vf['before']}\n{readout}", before[before.readout == readout]),
            (f"{vf['after']}\n{readout}", after[after.readout == readout]),
        ]
    return F.plot_reliability_panels(panels, out_stem, bins=spec["bins"], seed=spec["seed"], dpi=spec["dpi"])


def _caption_visual_finetuning(spec):
    vf = spec["part"]
    return (
        f"Reliability of {vf['before']} (feature alignment only) and {vf['after']} (after visual "
        f"instruction tuning) on the same items ({_describe({**vf, 'model': None})}; {spec['split']} split), "
        f"for the readouts {', '.join(vf['readouts'])}; {spec['bins']} equal-width bins, 95 % "
        "cluster-bootstrap bands."
    )


# ---- base LLM vs MLLM ------------------------------------------------------------------------
def _plan_base_vs_mllm(config, runs):
    bm = _part(config, "base_vs_mllm")
    found = bm and _runs_where(runs, dataset=bm["dataset"], scenario=bm["scenario"], prompt=bm["prompt"])
    return {"base_vs_mllm": ({"records": _paths(found)}, {"part": bm})} if found else {}


def _render_base_vs_mllm(inputs, spec, out_stem):
    rec = _test_records(inputs["records"], spec["split"])
    readout = spec["part"]["readout"]
    panels = [(m, g[g.readout == readout]) for m, g in rec.groupby("model", sort=False)]
    return F.plot_reliability_panels(panels, out_stem, bins=spec["bins"], seed=spec["seed"], dpi=spec["dpi"])


def _caption_base_vs_mllm(spec):
    bm = spec["part"]
    return (
        f"Reliability of the base LLM and the MLLMs built on it on the same text-only questions "
        f"({_describe(bm)}; {bm['readout']} readout, {spec['split']} split), one panel per model; "
        f"{spec['bins']} equal-width bins, 95 % cluster-bootstrap bands."
    )


# ---- text vs image: summary metrics per scenario and the entropy shift ---------------------------
def _text_vs_image_runs(config, runs):
    tv = _part(config, "text_vs_image")
    if not tv:
        return None, []
    found = _runs_where(runs, dataset=tv["dataset"], prompt=tv["prompt"], scenario=tv["scenarios"])
    return tv, (found if len({r["scenario"] for r in found}) > 1 else [])


def _plan_text_vs_image(config, runs):
    tv, found = _text_vs_image_runs(config, runs)
    return {"text_vs_image": ({"summary": ["data/metrics/summary.csv"]}, {"part": tv})} if found else {}


def _render_text_vs_image(inputs, spec, out_stem):
    tv = spec["part"]
    return F.plot_text_vs_image(
        pd.read_csv(inputs["summary"][0]),
        out_stem,
        scenarios=tv["scenarios"],
        readout=tv["readout"],
        dataset=tv["dataset"],
        prompt=tv["prompt"],
        dpi=spec["dpi"],
    )


def _caption_text_vs_image(spec):
    tv = spec["part"]
    return (
        f"Accuracy, mean confidence and mean entropy per scenario ({', '.join(tv['scenarios'])}) and model "
        f"on {tv['dataset']} ({tv['readout']} readout), with 95 % cluster-bootstrap intervals."
    )


def _plan_entropy_shift(config, runs):
    tv, found = _text_vs_image_runs(config, runs)
    return {"entropy_shift": ({"records": _paths(found)}, {"part": tv})} if found else {}


def _render_entropy_shift(inputs, spec, out_stem):
    tv = spec["part"]
    rec = _test_records(inputs["records"], spec["split"])
    return F.plot_entropy_shift(
        rec, out_stem, baseline=tv["scenarios"][0], readout=tv["readout"], seed=spec["seed"], dpi=spec["dpi"]
    )


def _caption_entropy_shift(spec):
    tv = spec["part"]
    return (
        f"Change of each item's answer entropy against the {tv['scenarios'][0]} scenario, per model and "
        f"scenario ({tv['readout']} readout, {spec['split']} split): items as points, the mean with its "
        "95 % cluster-bootstrap interval; below zero the model became surer."
    )


# ---- option order ------------------------------------------------------------------------
def _plan_option_order(config, runs):
    oo = _part(config, "option_order")
    if not oo:
        return {}
    found = _runs_where(runs, model=oo["model"], dataset=oo["dataset"], prompt=oo["prompt"], scenario=oo["scenarios"])
    return {"option_order": ({"records": _paths(found)}, {"part": oo})} if len(found) > 1 else {}


def _render_option_order(inputs, spec, out_stem):
    oo = spec["part"]
    rec = _test_records(inputs["records"], spec["split"])
    return F.plot_position_bias(
        rec,
        out_stem,
        scenarios=oo["scenarios"],
        baseline=oo["scenarios"][0],
        readout=oo["readout"],
        seed=spec["seed"],
        dpi=spec["dpi"],
    )


def _caption_option_order(spec):
    oo = spec["part"]
    return (
        f"Letter-position bias of {oo['model']} on {oo['dataset']} with the options rotated "
        f"({', '.join(oo['scenarios'])}; {oo['readout']} readout, {spec['split']} split): accuracy and mean "
        "confidence by the gold option's letter, and per rotation against the permutation-averaged "
        "prediction, with 95 % cluster-bootstrap intervals."
    )


# ---- IDK -------------------------------------------------------------------------------
def _idk_runs(config, runs):
    idk = _part(config, "idk")
    return idk, (_runs_where(runs, dataset=idk["dataset"]) if idk else [])


def _plan_idk_tradeoff(config, runs):
    idk, found = _idk_runs(config, runs)
    return {"idk_tradeoff": ({"idk": ["data/metrics/idk.csv"]}, {"part": idk})} if found else {}


def _render_idk_tradeoff(inputs, spec, out_stem):
    return F.plot_idk_tradeoff(
        pd.read_csv(inputs["idk"][0]), out_stem, readout=spec["part"]["readout"], dpi=spec["dpi"]
    )


def _caption_idk_tradeoff(spec):
    return (
        f"IDK trade-off on {spec['part']['dataset']} ({spec['part']['readout']} readout): the rate of "
        "admitting ignorance on unknowable items against the rate of wrongly choosing IDK on answerable "
        "ones, per model (colour) and prompt (marker), with 95 % intervals; top left is best."
    )


def _plan_idk_confidence(config, runs):
    idk, found = _idk_runs(config, runs)
    return {"idk_confidence": ({"records": _paths(found)}, {"part": idk})} if found else {}


def _render_idk_confidence(inputs, spec, out_stem):
    rec = _test_records(inputs["records"], spec["split"])
    return F.plot_idk_confidence(rec, out_stem, readout=spec["part"]["readout"], dpi=spec["dpi"])


def _caption_idk_confidence(spec):
    return (
        f"Confidence on unknowable and answerable items of {spec['part']['dataset']} "
        f"({spec['part']['readout']} readout, {spec['split']} split), one panel per model and prompt, "
        "as shares of each item type."
    )


# ---- recalibration ------------------------------------------------------------------------
def _recalibration_part(config, runs):
    rc = _part(config, "recalibration")
    return rc if rc and _runs_where(runs, **{k: rc[k] for k in RUN_KEYS}) else None


def _plan_recalibration_reliability(config, runs):
    rc = _recalibration_part(config, runs)
    return (
        {"recalibration_reliability": ({"recalibrated": ["data/calibration/recalibrated.parquet"]}, {"part": rc})}
        if rc
        else {}
    )


def _render_recalibration_reliability(inputs, spec, out_stem):
    rc = spec["part"]
    rows = select(pd.read_parquet(inputs["recalibrated"][0]), **{k: rc[k] for k in GROUP_KEYS})
    before = rows[rows["recalibrator"] == "none"]
    after = rows[rows["recalibrator"] == rc["method"]]
    return F.plot_recalibration_reliability(
        before, after, out_stem, label=rc["method"], bins=spec["bins"], seed=spec["seed"], dpi=spec["dpi"]
    )


def _caption_recalibration_reliability(spec):
    rc = spec["part"]
    return (
        f"Reliability of {rc['model']} ({_describe({**rc, 'model': None})}; {rc['readout']} readout) on "
        f"the test items before and after {rc['method']} recalibration fitted on the calibration split; "
        f"{spec['bins']} equal-width bins, 95 % cluster-bootstrap bands."
    )


def _plan_recalibration_ece(config, runs):
    rc = _recalibration_part(config, runs)
    return {"recalibration_ece": ({"recalibration": ["data/metrics/recalibration.csv"]}, {})} if rc else {}


def _render_recalibration_ece(inputs, spec, out_stem):
    return F.plot_recalibration_ece(pd.read_csv(inputs["recalibration"][0]), out_stem, dpi=spec["dpi"])


def _caption_recalibration_ece(spec):
    return (
        "ECE (10 equal-width bins) on the test split per recalibrator (none: before recalibration), "
        "grouped by model, with 95 % cluster-bootstrap intervals."
    )


# ---- prompt search ------------------------------------------------------------------------
def _plan_promptopt(config, runs):
    po = config.get("promptopt") or {}
    if not (po.get("enabled", True) and po.get("model") in config["models"]):
        return {}
    base = f"data/promptopt/{po['model']}/{po['dataset']}"
    inputs = {"trajectory": [f"{base}/trajectory.csv"], "best": [f"{base}/best.json"]}
    return {"promptopt_trajectory": (inputs, {"model": po["model"], "dataset": po["dataset"]})}


def _render_promptopt(inputs, spec, out_stem):
    best = json.loads(Path(inputs["best"][0]).read_text())
    return F.plot_prompt_trajectory(
        pd.read_csv(inputs["trajectory"][0]), out_stem, best=best, seed=spec["seed"], dpi=spec["dpi"]
    )


def _caption_promptopt(spec):
    return (
        f"Prompt search for {spec['model']} on {spec['dataset']}: ECE (top) and accuracy (bottom) of every "
        "candidate per round on the calibration items (survivors outlined) and of each round's best "
        "(line); the final point is the best prompt on the test split with its 95 % interval."
    )


KINDS: dict[str, FigureKind] = {
    "reliability": FigureKind(
        "main", _plan_reliability, _render_reliability, _caption_reliability, ("bins", "seed", "split", "readouts")
    ),
    "confidence_histograms": FigureKind(
        "main",
        _plan_main_group("confidence_histograms"),
        _render_main(F.plot_confidence_histograms),
        _caption_histograms,
        ("split",),
    ),
    "risk_coverage": FigureKind(
        "main",
        _plan_main_group("risk_coverage"),
        _render_main(F.plot_risk_coverage),
        _caption_risk_coverage,
        ("split",),
    ),
    "visual_finetuning": FigureKind(
        "visual_ft",
        _plan_visual_finetuning,
        _render_visual_finetuning,
        _caption_visual_finetuning,
        ("bins", "seed", "split"),
    ),
    "base_vs_mllm": FigureKind(
        "base_vs_mllm", _plan_base_vs_mllm, _render_base_vs_mllm, _caption_base_vs_mllm, ("bins", "seed", "split")
    ),
    "text_vs_image": FigureKind("text_vs_image", _plan_text_vs_image, _render_text_vs_image, _caption_text_vs_image),
    "entropy_shift": FigureKind(
        "text_vs_image", _plan_entropy_shift, _render_entropy_shift, _caption_entropy_shift, ("seed", "split")
    ),
    "option_order": FigureKind(
        "option_order", _plan_option_order, _render_option_order, _caption_option_order, ("seed", "split")
    ),
    "idk_tradeoff": FigureKind("idk", _plan_idk_tradeoff, _render_idk_tradeoff, _caption_idk_tradeoff),
    "idk_confidence": FigureKind(
        "idk", _plan_idk_confidence, _render_idk_confidence, _caption_idk_confidence, ("split",)
    ),
    "recalibration_reliability": FigureKind(
        "recalibration",
        _plan_recalibration_reliability,
        _render_recalibration_reliability,
        _caption_recalibration_reliability,
        ("bins", "seed"),
    ),
    "recalibration_ece": FigureKind(
        "recalibration", _plan_recalibration_ece, _render_recalibration_ece, _caption_recalibration_ece
    ),
    "reported_metrics": FigureKind("main", _plan_reported_metrics, _render_reported_metrics, _caption_reported_metrics),
    "forest": FigureKind("recalibration", _plan_forest, _render_forest, _caption_forest),
    "promptopt_trajectory": FigureKind(
        "prompt_search", _plan_promptopt, _render_promptopt, _caption_promptopt, ("seed",)
    ),
}
