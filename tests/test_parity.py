"""Same text on both sides of a comparison (mmcal.engine.parity): checked when the DAG is planned, on the
study's own configs, through real Snakemake, and against the engine's own rendering on every family replica."""

from __future__ import annotations

import json
from dataclasses import replace

import pytest
import yaml
from snakemake.utils import validate

from conftest import ROOT, run_snakemake, workflow_copy
from mmcal.config import load_study
from mmcal.engine import parity
from mmcal.engine.prompts import PromptVariant
from mmcal.engine.scenarios import Scenario
from mmcal.engine.scoring import Engine
from mmcal.errors import ConfigError
from test_families import FAMILIES, _engine, replica_image, replicas  # noqa: F401  (fixtures)


def _config(name: str) -> dict:
    """A study's config as the Snakefile builds it (its base chain, the schema's defaults)."""
    cfg = load_study([ROOT / "config" / name], root=ROOT)
    validate(cfg, str(ROOT / "workflow/schemas/config.schema.yaml"))
    return cfg


def test_the_default_study_compares_models_on_the_same_text():
    cfg = _config("config.yaml")
    pairs = parity.same_text_pairs(cfg)
    assert {(p.comparison, p.a.model, p.b.model) for p in pairs} == {
        ("visual fine-tuning", "tiny-llava-stage1", "tiny-llava-stage2"),
        ("base LLM vs MLLM", "smollm2", "tiny-llava-stage2"),
        ("IDK training vs none", "tiny-llava-stage2", "tiny-llava-stage2-idk"),
    }
    assert parity.check_pairs(cfg, pairs) == []
    # SmolLM2's own template (a long default system prompt) cannot be known before the DAG converts it, and
    # would not be the MLLM's text anyway: without its chat_template the plan is refused
    del cfg["models"]["smollm2"]["chat_template"]
    with pytest.raises(ConfigError, match=r"comparison 'base LLM vs MLLM' needs smollm2 and tiny-llava-stage2"):
        parity.check_comparisons(cfg)


def test_the_paper_study_pairs_see_the_same_text_or_wait_for_the_download():
    cfg = _config("paper.yaml")
    later = parity.check_comparisons(cfg)
    # both sides render with their hub repositories' own templates, read by the download job
    assert [(p.comparison, p.a.model, p.b.model) for p in later] == [
        ("Qwen2 vs Qwen2-VL (text only)", "qwen2-7b", "qwen2-vl-7b")
    ]
    vicuna = parity.side_text(cfg, parity.Side("vicuna-7b", "scienceqa-text", "blind", "default"))
    llava = parity.side_text(cfg, parity.Side("llava-1.5-7b", "scienceqa-text", "blind", "default"))
    assert vicuna == llava and vicuna.startswith("A chat between a curious user") and "USER: Which" in vicuna
    sliced = parity.deferred_check_slice(cfg, later)
    assert set(sliced["models"]) == {"qwen2-7b", "qwen2-vl-7b"} and sliced["pairs"][0][0].startswith("Qwen2 vs")


def test_one_side_with_another_format_fails_naming_the_comparison():
    cfg = _config("paper.yaml")
    cfg["models"]["vicuna-7b"]["chat_template"] = "chatml"
    with pytest.raises(ConfigError) as err:
        parity.check_comparisons(cfg)
    message = str(err.value)
    assert "comparison 'Vicuna vs LLaVA-1.5 (text only)': vicuna-7b and llava-1.5-7b" in message
    assert "first difference, line 1" in message and "<|im_start|>user" in message
    # a prompt comparison shows different text by design: no pair
    cfg = _config("config.yaml")
    assert not [p for p in parity.same_text_pairs(cfg) if p.comparison == "ours vs reference protocol"]


def test_a_deferred_pair_is_checked_from_the_downloaded_files(tmp_path):
    """The download job's half: each model's own template read from its files once they are on disk."""
    chatml = (
        "{% for m in messages %}<|im_start|>{{ m['role'] }}\n{{ m['content'] }}<|im_end|>\n{% endfor %}"
        "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
    )
    with_system = "<|im_start|>system\nYou are a helpful assistant.<|im_end|>\n" + chatml
    cfg = _config("paper.yaml")
    pairs = [p for p in parity.same_text_pairs(cfg) if p.comparison.startswith("Qwen2 vs")]
    sliced = parity.deferred_check_slice(cfg, pairs)
    for name, template in (("qwen2-7b", chatml), ("qwen2-vl-7b", with_system)):
        folder = tmp_path / name
        folder.mkdir()
        (folder / "tokenizer_config.json").write_text(json.dumps({"chat_template": template, "eos_token": "x"}))
        sliced["models"][name] = {"path": str(folder), "kind": "llm"}  # string content: the templates above
    with pytest.raises(ConfigError, match=r"comparison 'Qwen2 vs Qwen2-VL \(text only\)'.*line 1"):
        parity.check_deferred(sliced)
    (tmp_path / "qwen2-7b" / "tokenizer_config.json").write_text(json.dumps({"chat_template": with_system}))
    parity.check_deferred(sliced)  # the same text: passes


def test_snakemake_refuses_the_plan_naming_the_comparison(tmp_path):
    wd = workflow_copy(tmp_path)
    paper = yaml.safe_load((wd / "config/paper.yaml").read_text())
    paper["models"]["llava-1.5-7b"]["chat_template"] = "raw"
    (wd / "config/edited.yaml").write_text(yaml.safe_dump(paper))
    proc = run_snakemake(wd, "-n", "--configfile", "config/edited.yaml", check=False)
    assert proc.returncode != 0
    out = proc.stdout + proc.stderr
    assert "comparison 'visual fine-tuning (LLaVA-1.5)': llava-1.5-7b-stage1 and llava-1.5-7b" in out
    assert "first difference, line 1" in out


@pytest.mark.parametrize("family", list(FAMILIES))
@pytest.mark.parametrize("prompt_format", ["chat", "reference"])
def test_parity_renders_what_the_engine_renders(family, prompt_format, replicas, replica_image):  # noqa: F811
    """The planning-time renderer (template text and special tokens from the files, no tokenizer) gives the
    engine's own text, on every family's real template."""
    root, image = replica_image
    engine = _engine(family, replicas, root)
    spec = FAMILIES[family]
    multimodal = spec["entry"]["kind"] == "mllm"
    prompt = PromptVariant(name=prompt_format, prompt_format=prompt_format)
    cfg = {
        "models": {family: {"path": str(replicas[family]), **spec["entry"]}},
        "prompts": {prompt_format: {"prompt_format": prompt_format}},
        "scenarios": {"s": {"image": multimodal}},
    }
    side = parity.Side(family, "d", "s", prompt_format)
    item = replace(parity.PROBE, image=image if multimodal else None)
    reference = Engine(engine.lm, prompt, image_root=root, chat_format=engine.chat_format)
    expected = reference.render(item, Scenario("s", image=multimodal))
    image_token = getattr(engine.lm.processor, "image_token", None) or "<image>"
    assert parity.side_text(cfg, side) == parity._without_images(expected, image_token)
