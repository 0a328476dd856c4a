"""LLaVA-1.5 stage 1 assembled from its three releases (mmcal.hub.llava_stage1), on CPU.

Sources, as close to the real ones as this machine allows: a projector file with the release's key
names, the Vicuna-7B-v1.5 replica (tiny Llama, Llama-2's 32,000-token layout) as the language model, a
tiny CLIPVisionModel of ViT-L/336's geometry, and the llava-1.5 replica (llava-hf's processor, chat
template and 32,064-row vocabulary) as the processor source. They reach the assembly the way the rule
gives them: through the download rule's record in local mode.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from conftest import own_global_state
from mmcal.hub.download import download_all
from mmcal.hub.llava_stage1 import NEW_ROW_SCALE, PROJECTOR_FILE, build
from tiny_models import tiny_llava_stage1_inputs

MODEL = "llava-1.5-7b-stage1"


def _replica(family: str) -> Path:
    import build as replicas

    try:
        return replicas.build(family)
    except replicas.ReplicaMissing as exc:
        pytest.skip(f"replica sources not fetched: {exc}")


@pytest.fixture(scope="module")
def assembled(tmp_path_factory):
    from transformers import AutoModelForCausalLM

    tmp = tmp_path_factory.mktemp("stage1")
    lm_dir, processor_dir = _replica("vicuna-7b-v1.5"), _replica("llava-1.5")
    hidden = AutoModelForCausalLM.from_pretrained(lm_dir).config.hidden_size
    with own_global_state():  # the tiny CLIP seeds torch's generator; the projector is drawn after it
        vision, projector = tiny_llava_stage1_inputs(tmp, hidden, PROJECTOR_FILE)
    sources = {
        "projector": {"path": str(tmp / "projector")},
        "language_model": {"path": str(lm_dir)},
        "vision_tower": {"path": str(tmp / "clip")},
        "processor": {"path": str(processor_dir)},
    }
    entries = [
        {"key": f"models.{MODEL}.sources.{role}", "type": "model", "revision": None, **entry}
        for role, entry in sources.items()
    ]
    resolved = download_all(entries, offline=False, out_path=tmp / "resolved.json")
    out = tmp / "model"
    record = build(MODEL, {"sources": sources}, resolved, out, seed=0)
    return {
        "out": out,
        "record": record,
        "projector": projector,
        "lm": lm_dir,
        "vision": vision,
        "processor": processor_dir,
        "sources": sources,
    }


@pytest.fixture(scope="module")
def reloaded(assembled):
    """The saved folder (safetensors only) through the Auto classes, as the scoring engine loads it."""
    from transformers import AutoModelForImageTextToText

    assert list(assembled["out"].glob("*.safetensors")) and not list(assembled["out"].glob("*.bin"))
    return AutoModelForImageTextToText.from_pretrained(assembled["out"]).eval()


def test_every_tensor_equals_its_source(assembled, reloaded):
    from transformers import AutoModelForCausalLM

    assert type(reloaded).__name__ == "LlavaForConditionalGeneration"
    state = reloaded.state_dict()
    lm = AutoModelForCausalLM.from_pretrained(assembled["lm"]).state_dict()
    p = assembled["projector"]
    assert torch.equal(state["model.multi_modal_projector.linear_1.weight"], p["model.mm_projector.0.weight"])
    assert torch.equal(state["model.multi_modal_projector.linear_1.bias"], p["model.mm_projector.0.bias"])
    assert torch.equal(state["model.multi_modal_projector.linear_2.weight"], p["model.mm_projector.2.weight"])
    assert torch.equal(state["model.multi_modal_projector.linear_2.bias"], p["model.mm_projector.2.bias"])
    vision = assembled["vision"].state_dict()
    for k, v in vision.items():
        assert torch.equal(state[f"model.vision_tower.{k}"], v), k
    for k, v in lm.items():
        if k in ("model.embed_tokens.weight", "lm_head.weight"):
            continue
        assert torch.equal(state[f"model.language_model.{k[len('model.') :]}"], v), k
    embed, head = state["model.language_model.embed_tokens.weight"], state["lm_head.weight"]
    assert embed.shape[0] == head.shape[0] == 32064
    assert torch.equal(embed[:32000], lm["model.embed_tokens.weight"])
    assert torch.equal(head[:32000], lm["lm_head.weight"])
    n_vision = sum(1 for k in state if k.startswith("model.vision_tower."))
    n_lm = sum(1 for k in state if k.startswith("model.language_model."))
    assert (n_vision, n_lm, len(state)) == (len(vision), len(lm) - 1, len(vision) + len(lm) + 4)


def test_new_rows_follow_llava_hf_rule(assembled, reloaded):
    """Rows 32000..32063: the two halves of one seeded draw from N(mu, 1e-5 Sigma) of the original
    input-embedding rows (llava-hf's conversion rule), rebuilt here without mmcal's code: mu and Sigma (population
    covariance) in numpy, its Cholesky factor L, and mu + L z for the seed's standard normal draws z."""
    from transformers import AutoModelForCausalLM

    state = reloaded.state_dict()
    embed = AutoModelForCausalLM.from_pretrained(assembled["lm"]).state_dict()["model.embed_tokens.weight"]
    e = embed.double().numpy()
    mu = e.mean(0)
    sigma = (e - mu).T @ (e - mu) / e.shape[0]
    chol = np.linalg.cholesky(1e-5 * sigma)
    z = torch.randn(128, e.shape[1], generator=torch.Generator().manual_seed(0), dtype=torch.float64).numpy()
    expected = mu + z @ chol.T
    got = torch.cat([state["model.language_model.embed_tokens.weight"][32000:], state["lm_head.weight"][32000:]])
    np.testing.assert_allclose(got.double().numpy(), expected, rtol=1e-5, atol=1e-6 * np.abs(expected).max())
    # and the distribution itself: the rows' spread around mu is sqrt(1e-5) of the embedding rows'
    spread = np.sqrt(((got.double().numpy() - mu) ** 2).sum(1).mean())
    assert 0.8 < spread / np.sqrt(((e - mu) ** 2).sum(1).mean() * NEW_ROW_SCALE) < 1.2


def test_config_and_sources_record(assembled):
    cfg = json.loads((assembled["out"] / "config.json").read_text())
    assert cfg["model_type"] == "llava"
    assert (cfg["image_token_index"], cfg["text_config"]["pad_token_id"], cfg["text_config"]["vocab_size"]) == (
        32000,
        32001,
        32064,
    )
    assert (cfg["vision_feature_layer"], cfg["vision_feature_select_strategy"]) == (-2, "default")
    assert cfg["image_seq_length"] == 576
    record = json.loads((assembled["out"] / "sources.json").read_text())
    assert set(record) == {"projector", "language_model", "vision_tower", "processor", "assembly"}
    assert record["language_model"]["path"] == str(assembled["lm"])
    assert record["language_model"]["mode"] == "local" and len(record["language_model"]["sha256"]) == 64


def test_reloads_and_image_tokens_match_features(assembled, reloaded):
    from transformers import AutoProcessor

    model = reloaded
    processor = AutoProcessor.from_pretrained(assembled["out"])
    reference = AutoProcessor.from_pretrained(assembled["processor"])
    assert processor.tokenizer.get_vocab() == reference.tokenizer.get_vocab()
    assert processor.chat_template == reference.chat_template
    image = Image.new("RGB", (400, 300), (120, 30, 200))
    conversation = [{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": "What is it?"}]}]
    prompt = processor.apply_chat_template(conversation, add_generation_prompt=True)
    inputs = processor(images=image, text=prompt, return_tensors="pt")
    n_image_tokens = int((inputs["input_ids"] == model.config.image_token_index).sum())
    with torch.no_grad():
        features = model.get_image_features(pixel_values=inputs["pixel_values"])
        features = features.pooler_output if hasattr(features, "pooler_output") else features
        feats = (
            torch.cat(list(features))
            if isinstance(features, (list, tuple))
            else features.reshape(-1, features.shape[-1])
        )
        logits = model(**inputs).logits
    assert n_image_tokens == feats.shape[0] == 576
    assert logits.shape == (1, inputs["input_ids"].shape[1], 32064) and torch.isfinite(logits).all()


@pytest.mark.e2e  # a Snakemake run (CI time): pytest -m e2e
@pytest.mark.slow  # two Snakemake jobs: ~25 s on 2 busy cores
def test_rules_download_then_assemble(assembled, tmp_path):
    """The two rules through Snakemake (local mode: offline, local source folders): same tensors as above."""
    import yaml
    from safetensors.torch import load_file

    from conftest import run_snakemake, workflow_copy

    wd = workflow_copy(tmp_path)
    cfg = {
        "base": "config.yaml",  # the default study's data sets and prompts, this model and run instead of its own
        "models": {
            MODEL: {"path": "data/models/llava-1.5-7b-stage1", "build": "llava_stage1", "sources": assembled["sources"]}
        },
        "runs": [{"models": [MODEL], "datasets": ["fmnist"], "scenarios": ["image"], "prompts": ["default"]}],
    }
    (wd / "config/stage1.yaml").write_text(yaml.safe_dump(cfg))
    run_snakemake(wd, "--cores", "1", "--configfile", "config/stage1.yaml", "--", "data/models/llava-1.5-7b-stage1")
    resolved = json.loads((wd / "data/downloads/resolved.json").read_text())
    assert {r["mode"] for r in resolved.values()} == {"local"} and len(resolved) == 4
    record = json.loads((wd / "data/models/llava-1.5-7b-stage1/sources.json").read_text())
    assert record == assembled["record"]
    built = load_file(wd / "data/models/llava-1.5-7b-stage1/model.safetensors")
    ref = load_file(assembled["out"] / "model.safetensors")
    assert built.keys() == ref.keys() and all(torch.equal(built[k], ref[k]) for k in ref)
