"""The training-plan sweep (mmcal.tinyllava.plan_sweep): which settings make a stage, what the workflow would
pass it, and a probe run on the real SmolLM2 with the CI preset's tiny vision tower."""

from __future__ import annotations

import json
from pathlib import Path

import yaml

from conftest import own_global_state
from mmcal.tinyllava.config import TINY_TEST_CONFIG
from mmcal.tinyllava.plan_sweep import IDK_TRAIN, KNOWN, main, stage_config, stage_key

REPO = Path(__file__).resolve().parents[1]


def chain_keys(training: dict) -> list[str]:
    keys, parent = [], None
    for stage in ("vision", "stage1", "stage2"):
        parent = stage_key(stage_config(training, stage), stage, parent)
        keys.append(parent)
    return keys


def test_a_stage_is_its_settings_and_its_parents():
    shipped = chain_keys({})
    assert chain_keys({"stage2": {"train_layers": None, "steps": 300}}) == shipped  # defaults spelled out
    top8 = chain_keys({"stage2": {"train_layers": 8}})
    assert top8[:2] == shipped[:2] and top8[2] != shipped[2]  # a stage-2 change trains only stage 2 again
    s1 = chain_keys({"stage1": {"steps": 100}})
    assert s1[0] == shipped[0] and s1[1] != shipped[1] and s1[2] != shipped[2]  # a new parent: a new stage 2
    shared = chain_keys({"threads": 1})
    assert all(a != b for a, b in zip(shared, shipped))  # a shared key belongs to every stage


def test_the_sweep_trains_what_the_default_study_trains():
    """The sweep's classes and seed are the default study's; the IDK variant gets its section on top of
    stage 2's, as workflow/rules/common.smk's training_cfg builds it."""
    config = yaml.safe_load((REPO / "config" / "config.yaml").read_text())
    assert KNOWN == config["classes"]["known"] and IDK_TRAIN == config["classes"]["idk_train"]
    assert config.get("seed", 0) == 0
    training = {"threads": 2, "stage2": {"steps": 300, "lr_lm": 3e-4}, "stage2_idk": {"steps": 80}}
    idk = stage_config(training, "stage2_idk")
    assert idk["stage2"] == {"seed": 0, "steps": 80, "lr_lm": 3e-4, "idk_train_classes": IDK_TRAIN}
    assert idk["threads"] == 2 and idk["train_classes"] == KNOWN and "stage2_idk" not in idk


def test_a_probe_times_each_stage_once_and_reuses_it(smollm2_dir, tmp_path, capsys):
    tiny = {k: v for k, v in TINY_TEST_CONFIG.items()}
    candidates = tmp_path / "candidates.yaml"
    candidates.write_text(yaml.safe_dump([{"name": "tiny", "training": tiny}]))
    args = ["--candidates", str(candidates), "--lm", str(smollm2_dir), "--out", str(tmp_path / "sweep")]
    args += ["--probe-steps", "2", "--stages", "vision", "stage1", "--no-pins"]
    with own_global_state():  # training seeds the global generators and sets torch's threads
        main(args)
    lines = [json.loads(line) for line in (tmp_path / "sweep" / "results.jsonl").read_text().splitlines()]
    assert [r["stage"] for r in lines] == ["vision", "stage1"]
    for r in lines:
        assert r["summary"]["steps"] == 2 and r["summary"]["median_step_seconds"] > 0
        assert len(r["weights_sha256"]) == 64 and r["cpu"] and r["torch_threads"] >= 1
    assert "tiny: vision" in capsys.readouterr().out
    folders = {p.parent.name: p.stat().st_mtime_ns for p in (tmp_path / "sweep").glob("*/model.safetensors")}
    with own_global_state():
        main(args)  # the same candidate again: every stage found done, nothing trained
    again = [json.loads(line) for line in (tmp_path / "sweep" / "results.jsonl").read_text().splitlines()][2:]
    assert [(r["stage"], r["key"], r["weights_sha256"]) for r in again] == [
        (r["stage"], r["key"], r["weights_sha256"]) for r in lines
    ]
    assert {p.parent.name: p.stat().st_mtime_ns for p in (tmp_path / "sweep").glob("*/model.safetensors")} == folders
