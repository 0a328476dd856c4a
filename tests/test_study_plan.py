"""Planning from config alone: runs, build paths, figure plan, clear config errors."""

from __future__ import annotations

import pytest
import yaml

from mmcal import plan as study
from mmcal.figures import registry as report
from mmcal.errors import ConfigError


@pytest.fixture
def config(repo_root):
    cfg = yaml.safe_load((repo_root / "config/config.yaml").read_text())
    cfg.setdefault("metrics", {}).setdefault("split", "test")
    return cfg


def test_runs_expand_the_grid_and_merge_splits(config):
    runs = study.expand_runs(config)
    combos = {(r["model"], r["dataset"], r["scenario"], r["prompt"]) for r in runs}
    assert ("tiny-llava-stage2", "fmnist", "image-desc-conflicting", "default") in combos
    assert ("smollm2", "fmnist-text", "blind", "default") in combos
    assert len(combos) == len(runs)
    image = next(r for r in runs if r["model"] == "tiny-llava-stage2" and r["scenario"] == "image"
                 and r["dataset"] == "fmnist")
    assert image["splits"] == ["calib", "test"]
    config["runs"].append({"models": ["tiny-llava-stage2"], "datasets": ["fmnist"],
                           "scenarios": ["blind"], "prompts": ["default"], "splits": ["calib"]})
    blind = next(r for r in study.expand_runs(config) if r["model"] == "tiny-llava-stage2"
                 and r["scenario"] == "blind")
    assert blind["splits"] == ["calib", "test"]


def test_text_only_model_with_image_scenario_is_a_config_error(config):
    config["runs"] = [{"models": ["smollm2"], "datasets": ["fmnist"], "scenarios": ["image"], "prompts": ["default"]}]
    with pytest.raises(ConfigError, match="smollm2.*text-only"):
        study.expand_runs(config)


def test_unknown_names_are_config_errors(config):
    config["runs"] = [{"models": ["nope"], "datasets": ["fmnist"], "scenarios": ["image"], "prompts": ["default"]}]
    with pytest.raises(ConfigError, match="unknown models"):
        study.expand_runs(config)


def test_built_models_must_live_where_the_dag_builds_them(config):
    config["models"]["tiny-llava-stage2"]["path"] = "elsewhere"
    with pytest.raises(ConfigError, match="data/models/tiny-llava-stage2"):
        study.model_dir(config, "tiny-llava-stage2")


def test_figure_plan_covers_every_part(config):
    plan = report.figure_plan(config, study.expand_runs(config))
    for kind in ("reliability_tiny-llava-stage2", "reliability_smollm2", "confidence_histograms",
                 "risk_coverage", "forest", "visual_finetuning", "base_vs_mllm", "text_vs_image",
                 "entropy_shift", "option_order", "idk_tradeoff", "idk_confidence",
                 "recalibration_reliability", "recalibration_ece", "promptopt_trajectory"):
        assert kind in plan, kind
    assert plan["reliability_smollm2"]["records"] == ["data/records/smollm2/fmnist-text/blind/default.parquet"]
