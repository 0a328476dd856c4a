"""Planning from config alone: runs, build paths, figure plan, clear config errors."""

from __future__ import annotations

import pytest

from mmcal import plan
from mmcal.config import load_study
from mmcal.errors import ConfigError
from mmcal.figures.registry import KINDS, figure_plan
from mmcal.paper.build import TABLE_PARTS, paper_sections, table_parts
from mmcal.paper.main_tex import PARTS


@pytest.fixture
def config(repo_root):
    return load_study([repo_root / "config/config.yaml"], root=repo_root)


def test_runs_expand_the_grid_and_merge_splits(config):
    runs = plan.expand_runs(config)
    combos = {(r["model"], r["dataset"], r["scenario"], r["prompt"]) for r in runs}
    assert ("tiny-llava-stage2", "fmnist", "image-desc-conflicting", "default") in combos
    assert ("smollm2", "fmnist-text", "blind", "default") in combos
    assert len(combos) == len(runs)
    image = next(
        r for r in runs if r["model"] == "tiny-llava-stage2" and r["scenario"] == "image" and r["dataset"] == "fmnist"
    )
    assert image["splits"] == ["calib", "test"]
    config["runs"].append(
        {
            "models": ["tiny-llava-stage2"],
            "datasets": ["fmnist"],
            "scenarios": ["blind"],
            "prompts": ["default"],
            "splits": ["calib"],
        }
    )
    blind = next(r for r in plan.expand_runs(config) if r["model"] == "tiny-llava-stage2" and r["scenario"] == "blind")
    assert blind["splits"] == ["calib", "test"]


def test_text_only_model_with_image_scenario_is_a_config_error(config):
    config["runs"] = [{"models": ["smollm2"], "datasets": ["fmnist"], "scenarios": ["image"], "prompts": ["default"]}]
    with pytest.raises(ConfigError, match="smollm2.*text-only"):
        plan.expand_runs(config)


def test_unknown_names_are_config_errors(config):
    config["runs"] = [{"models": ["nope"], "datasets": ["fmnist"], "scenarios": ["image"], "prompts": ["default"]}]
    with pytest.raises(ConfigError, match="unknown models"):
        plan.expand_runs(config)


def test_built_models_must_live_where_the_dag_builds_them(config):
    config["models"]["tiny-llava-stage2"]["path"] = "elsewhere"
    with pytest.raises(ConfigError, match="data/models/tiny-llava-stage2"):
        plan.model_dir(config, "tiny-llava-stage2")


def test_figure_plan_covers_every_part(config):
    figures = figure_plan(config, plan.expand_runs(config))
    for name in (
        "reliability_tiny-llava-stage2",
        "reliability_smollm2",
        "confidence_histograms",
        "risk_coverage",
        "forest",
        "visual_finetuning",
        "base_vs_mllm",
        "text_vs_image",
        "entropy_shift",
        "option_order",
        "idk_tradeoff",
        "idk_confidence",
        "recalibration_reliability",
        "recalibration_ece",
        "promptopt_trajectory",
    ):
        assert name in figures, name
    assert figures["reliability_smollm2"].inputs == {
        "records": ["data/records/smollm2/fmnist-text/blind/default.parquet"]
    }


def test_a_figure_spec_holds_only_what_its_renderer_reads(config):
    figures = figure_plan(config, plan.expand_runs(config))
    assert figures["idk_tradeoff"].spec == {
        "kind": "idk_tradeoff",
        "dpi": 200,
        "model_order": list(config["models"]),
        "part": {"dataset": "idk", "readout": "letter_restricted"},
    }
    assert figures["reliability_smollm2"].spec == {
        "kind": "reliability",
        "dpi": 200,
        "model_order": list(config["models"]),
        "bins": 10,
        "seed": 0,
        "split": "test",
        "readouts": config["readouts"],
        "model": "smollm2",
        "dataset": "fmnist-text",
        "scenario": "blind",
        "prompt": "default",
    }
    # a parts entry reaches only the figures that show it; the bin count only the reliability diagrams
    config["parts"]["idk"]["readout"] = "option_loglik"
    config["figures"]["reliability_bins"] = 15
    edited = figure_plan(config, plan.expand_runs(config))
    changed = {name for name in figures if figures[name].spec != edited[name].spec}
    assert changed == {
        "idk_tradeoff",
        "idk_confidence",
        "reliability_smollm2",
        "reliability_tiny-llava-stage1",
        "reliability_tiny-llava-stage2",
        "reliability_tiny-llava-stage2-idk",
        "visual_finetuning",
        "base_vs_mllm",
        "recalibration_reliability",
    }


def test_every_figure_has_a_caption_and_a_paper_section(config):
    figures = figure_plan(config, plan.expand_runs(config))
    sections = {key for key, *_ in PARTS}
    for name, fig in figures.items():
        assert fig.section in sections, name
        assert name.replace("_", " ") not in fig.caption and len(fig.caption) > 60, (name, fig.caption)
    assert figures["reliability_smollm2"].caption.startswith(
        "Reliability of smollm2 (dataset fmnist-text, scenario blind, prompt default; test split)"
    )
    assert set(KINDS) >= {fig.spec["kind"] for fig in figures.values()}


def test_paper_sections_place_each_figure_and_table_in_its_part(config):
    figures = figure_plan(config, plan.expand_runs(config))
    sections = paper_sections(
        [{"name": n, "section": f.section, "caption": f.caption} for n, f in figures.items()],
        ["paper/tables/main_results.tex", "paper/tables/idk.tex", "paper/tables/best_prompts.tex"],
    )
    by_key = {s["key"]: s for s in sections}
    assert by_key["main"]["tables"] == ["tables/main_results.tex"]
    assert by_key["appendix"]["tables"] == ["tables/best_prompts.tex"]
    assert [f["path"] for f in by_key["idk"]["figures"]] == [
        "../figures/idk_tradeoff.pdf",
        "../figures/idk_confidence.pdf",
    ]
    assert by_key["idk"]["figures"][0]["caption"] == figures["idk_tradeoff"].caption


def test_the_tables_read_only_their_parts(config):
    assert set(table_parts(config["parts"])) == set(TABLE_PARTS)
    assert "idk" not in table_parts(config["parts"]) and "recalibration" not in table_parts(config["parts"])
