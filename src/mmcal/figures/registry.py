"""Which figures and tables the study renders, from which inputs — decided from config only.

``config.parts`` names, for each part of the study, the groups it shows (data set, scenarios,
models...). ``figure_plan`` turns that into ``{figure kind: {input name: paths}}`` for the DAG;
``make_figure`` and ``make_tables`` render from those inputs; ``paper_sections`` lays out main.tex.
Everything reads records or metric tables; nothing re-runs a model.
"""

from __future__ import annotations

import json
from pathlib import Path

import pandas as pd

from mmcal import figures as F
from mmcal.paper import tables as T
from mmcal.plan import records_path

RUN_KEYS = ("model", "dataset", "scenario", "prompt")


def _runs_where(runs: list[dict], **where) -> list[dict]:
    out = []
    for r in runs:
        ok = True
        for k, v in where.items():
            if v is None:
                continue
            if isinstance(v, (list, tuple)):
                ok &= r[k] in v
            else:
                ok &= r[k] == v
        if ok:
            out.append(r)
    return out


def _paths(runs) -> list[str]:
    return sorted({records_path(r) for r in runs})


def main_runs(config: dict, runs: list[dict]) -> list[dict]:
    part = config["parts"]["main"]
    return _runs_where(runs, dataset=part["dataset"], scenario=part["scenario"], prompt=part["prompt"])


def model_reliability_run(config: dict, runs: list[dict], model: str) -> dict | None:
    """The run a model's own reliability diagram shows: the main group, else its first run."""
    mine = _runs_where(main_runs(config, runs), model=model) or _runs_where(runs, model=model)
    return mine[0] if mine else None


def figure_plan(config: dict, runs: list[dict]) -> dict[str, dict[str, list[str]]]:
    """Figure kind → named input files; parts without scored runs are left out."""
    parts = config["parts"]
    plan: dict[str, dict[str, list[str]]] = {}
    for model in config["models"]:
        run = model_reliability_run(config, runs, model)
        if run:
            plan[f"reliability_{model}"] = {"records": [records_path(run)]}
    main = main_runs(config, runs)
    if main:
        plan["confidence_histograms"] = {"records": _paths(main)}
        plan["risk_coverage"] = {"records": _paths(main)}
    if config.get("comparisons"):
        plan["forest"] = {"comparisons": ["data/metrics/comparisons.csv"]}
    vf = parts.get("visual_finetuning")
    if vf:
        pair = [_runs_where(runs, model=vf[s], dataset=vf["dataset"], scenario=vf["scenario"],
                            prompt=vf["prompt"]) for s in ("before", "after")]
        if all(pair):
            plan["visual_finetuning"] = {"before": _paths(pair[0]), "after": _paths(pair[1])}
    bm = parts.get("base_vs_mllm")
    if bm and _runs_where(runs, dataset=bm["dataset"], scenario=bm["scenario"], prompt=bm["prompt"]):
        plan["base_vs_mllm"] = {"records": _paths(_runs_where(runs, dataset=bm["dataset"],
                                                              scenario=bm["scenario"], prompt=bm["prompt"]))}
    tv = parts.get("text_vs_image")
    if tv:
        tv_runs = _runs_where(runs, dataset=tv["dataset"], prompt=tv["prompt"], scenario=tv["scenarios"])
        if len({r["scenario"] for r in tv_runs}) > 1:
            plan["text_vs_image"] = {"summary": ["data/metrics/summary.csv"]}
            plan["entropy_shift"] = {"records": _paths(tv_runs)}
    oo = parts.get("option_order")
    if oo:
        oo_runs = _runs_where(runs, model=oo["model"], dataset=oo["dataset"], prompt=oo["prompt"],
                              scenario=oo["scenarios"])
        if len(oo_runs) > 1:
            plan["option_order"] = {"records": _paths(oo_runs)}
    idk = parts.get("idk")
    if idk:
        idk_runs = _runs_where(runs, dataset=idk["dataset"])
        if idk_runs:
            plan["idk_tradeoff"] = {"idk": ["data/metrics/idk.csv"]}
            plan["idk_confidence"] = {"records": _paths(idk_runs)}
    rc = parts.get("recalibration")
    if rc and _runs_where(runs, model=rc["model"], dataset=rc["dataset"], scenario=rc["scenario"], prompt=rc["prompt"]):
        plan["recalibration_reliability"] = {"recalibrated": ["data/calibration/recalibrated.parquet"]}
        plan["recalibration_ece"] = {"recalibration": ["data/metrics/recalibration.csv"]}
    po = config.get("promptopt") or {}
    if po.get("enabled", True) and po.get("model") in config["models"]:
        base = f"data/promptopt/{po['model']}/{po['dataset']}"
        plan["promptopt_trajectory"] = {"trajectory": [f"{base}/trajectory.csv"], "best": [f"{base}/best.json"]}
    return plan


def _read_records(paths) -> pd.DataFrame:
    return pd.concat([pd.read_parquet(p) for p in paths], ignore_index=True)


def _test(df: pd.DataFrame, split: str) -> pd.DataFrame:
    return df[df["split"] == split] if split else df


def make_figure(kind: str, inputs: dict, out_stem: Path, config: dict) -> list[Path]:
    """Render one figure kind from its inputs (see ``figure_plan``)."""
    F.set_model_order(list(config["models"]))
    parts, opts = config["parts"], config["figures"]
    dpi, bins, split = int(opts["dpi"]), int(opts["reliability_bins"]), config["metrics"]["split"]
    seed = int(config["seed"])
    if kind.startswith("reliability_"):
        rec = _test(_read_records(inputs["records"]), split)
        readouts = [r for r in config["readouts"] if (rec["readout"] == r).any()]
        panels = [(r.replace("_", " "), rec[rec["readout"] == r]) for r in readouts]
        return F.plot_reliability_panels(panels, out_stem, bins=bins, seed=seed, dpi=dpi)
    if kind in ("confidence_histograms", "risk_coverage"):
        rec = _test(_read_records(inputs["records"]), split)
        rec = rec[rec["readout"] == parts["main"]["readout"]]
        fn = F.plot_confidence_histograms if kind == "confidence_histograms" else F.plot_risk_coverage
        return fn(rec, out_stem, dpi=dpi)
    if kind == "forest":
        return F.plot_forest(pd.read_csv(inputs["comparisons"][0]), out_stem, dpi=dpi)
    if kind == "visual_finetuning":
        vf = parts["visual_finetuning"]
        before = _test(_read_records(inputs["before"]), split)
        after = _test(_read_records(inputs["after"]), split)
        panels = []
        for readout in vf["readouts"]:
            panels += [(f"{vf['before']}\n{readout}", before[before.readout == readout]),
                       (f"{vf['after']}\n{readout}", after[after.readout == readout])]
        return F.plot_reliability_panels(panels, out_stem, bins=bins, seed=seed, dpi=dpi)
    if kind == "base_vs_mllm":
        rec = _test(_read_records(inputs["records"]), split)
        readout = parts["base_vs_mllm"]["readout"]
        panels = [(m, g[g.readout == readout]) for m, g in rec.groupby("model", sort=False)]
        return F.plot_reliability_panels(panels, out_stem, bins=bins, seed=seed, dpi=dpi)
    if kind == "text_vs_image":
        tv = parts["text_vs_image"]
        return F.plot_text_vs_image(pd.read_csv(inputs["summary"][0]), out_stem, scenarios=tv["scenarios"],
                                    readout=tv["readout"], dataset=tv["dataset"], prompt=tv["prompt"], dpi=dpi)
    if kind == "entropy_shift":
        tv = parts["text_vs_image"]
        rec = _test(_read_records(inputs["records"]), split)
        return F.plot_entropy_shift(rec, out_stem, baseline=tv["scenarios"][0], readout=tv["readout"],
                                    seed=seed, dpi=dpi)
    if kind == "option_order":
        oo = parts["option_order"]
        rec = _test(_read_records(inputs["records"]), split)
        return F.plot_position_bias(rec, out_stem, scenarios=oo["scenarios"], baseline=oo["scenarios"][0],
                                    readout=oo["readout"], seed=seed, dpi=dpi)
    if kind == "idk_tradeoff":
        return F.plot_idk_tradeoff(pd.read_csv(inputs["idk"][0]), out_stem, readout=parts["idk"]["readout"], dpi=dpi)
    if kind == "idk_confidence":
        rec = _test(_read_records(inputs["records"]), split)
        return F.plot_idk_confidence(rec, out_stem, readout=parts["idk"]["readout"], dpi=dpi)
    if kind == "recalibration_reliability":
        rc = parts["recalibration"]
        df = pd.read_parquet(inputs["recalibrated"][0])
        sel = df
        for k in RUN_KEYS + ("readout",):
            sel = sel[sel[k] == rc[k]]
        before = sel[sel["recalibrator"] == "none"]
        after = sel[sel["recalibrator"] == rc["method"]]
        return F.plot_recalibration_reliability(before, after, out_stem, label=rc["method"], bins=bins,
                                                seed=seed, dpi=dpi)
    if kind == "recalibration_ece":
        return F.plot_recalibration_ece(pd.read_csv(inputs["recalibration"][0]), out_stem, dpi=dpi)
    if kind == "promptopt_trajectory":
        best = json.loads(Path(inputs["best"][0]).read_text())
        return F.plot_prompt_trajectory(pd.read_csv(inputs["trajectory"][0]), out_stem, best=best, seed=seed, dpi=dpi)
    raise ValueError(f"unknown figure kind {kind!r}")


# ---- tables ---------------------------------------------------------------------------------
def _read_csv(path) -> pd.DataFrame:
    try:
        return pd.read_csv(path)
    except pd.errors.EmptyDataError:
        return pd.DataFrame()


def make_tables(inputs: dict, out_dir: Path, config: dict) -> list[Path]:
    """Every LaTeX table of the study; inputs: summary, comparisons, idk, recalibration, best."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    parts, level = config["parts"], float(config["metrics"]["level"])
    summary = _read_csv(inputs["summary"])
    written = []

    def put(name, tex):
        path = out_dir / f"{name}.tex"
        T.write_table(tex, path)
        written.append(path)

    main = parts["main"]
    put("main_results", T.main_results_table(summary, where={"dataset": main["dataset"], "scenario": main["scenario"],
                                                              "prompt": main["prompt"]}))  # label tab:main
    bm = parts.get("base_vs_mllm")
    if bm and ((summary["dataset"] == bm["dataset"]) & (summary["scenario"] == bm["scenario"])).any():
        put("base_vs_mllm", T.main_results_table(
            summary, where={"dataset": bm["dataset"], "scenario": bm["scenario"], "prompt": bm["prompt"]},
            caption="Base LLM vs the MLLMs built on it, on the same text-only questions.", label="tab:base-vs-mllm"))
    vf = parts.get("visual_finetuning")
    if vf:
        put("visual_finetuning", T.main_results_table(summary, where={
            "dataset": vf["dataset"], "scenario": vf["scenario"], "prompt": vf["prompt"],
            "model": [vf["before"], vf["after"]]},
            caption="Before (feature alignment) vs after visual instruction tuning, same items.",
            label="tab:visual-ft"))
    tv = parts.get("text_vs_image")
    if tv and summary["scenario"].isin(tv["scenarios"][1:]).any():
        put("text_vs_image", T.scenario_table(summary[summary["dataset"] == tv["dataset"]], tv["scenarios"]))
    oo = parts.get("option_order")
    if oo and summary["scenario"].isin(oo["scenarios"][1:]).any():
        put("option_order", T.scenario_table(summary[(summary["dataset"] == oo["dataset"])
                                                     & (summary["model"] == oo["model"])], oo["scenarios"]))
    comparisons = _read_csv(inputs["comparisons"])
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
        put("best_prompts", T.best_prompts_table([best], level=level))
    return written


def paper_sections(figures: list[str], tables: list[str]) -> list[dict]:
    """main.tex sections: each part with the tables and figures it owns (paths relative to paper/)."""
    owners = {
        "main": (["main_results"], ["reliability_", "confidence_histograms", "risk_coverage"]),
        "visual_ft": (["visual_finetuning"], ["visual_finetuning"]),
        "base_vs_mllm": (["base_vs_mllm"], ["base_vs_mllm"]),
        "text_vs_image": (["text_vs_image"], ["text_vs_image", "entropy_shift"]),
        "option_order": (["option_order"], ["option_order"]),
        "idk": (["idk"], ["idk_tradeoff", "idk_confidence"]),
        "recalibration": (["recalibration", "comparisons"], ["recalibration_reliability", "recalibration_ece", "forest"]),
        "prompt_search": ([], ["promptopt_trajectory"]),
        "appendix": (["best_prompts"], []),
    }
    sections = []
    for key, (tabs, figs) in owners.items():
        sec_tables = [f"tables/{Path(t).name}" for t in tables if Path(t).stem in tabs]
        sec_figs = [{"path": f"../figures/{Path(f).name}", "caption": Path(f).stem.replace("_", " ")}
                    for f in figures if any(Path(f).stem.startswith(p) for p in figs)]
        sections.append({"key": key, "tables": sec_tables, "figures": sec_figs})
    return sections
