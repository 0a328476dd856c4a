"""Oracle (c): mmcal's LLaVA-1.5 stage-1 assembly (mmcal.hub.llava_stage1) against transformers' own LLaVA
conversion (convert_llava_weights_to_hf.py at huggingface/transformers@18dcde0, run once with transformers 4.37.2
on the same fake sources; fixture and procedure in tests/oracles/SOURCES.md).

Compared exactly: every copied tensor under its name (the conversion's key mapping, then transformers 5's renaming
of that layout), the vocabulary padding (32,002 tokens -> 32,064 rows), which rows are new, the config values and
the tokenizer's added ids. Compared as parameters: the distribution the new rows are drawn from (mu and 1e-5 x the
population covariance of the embedding rows). Not comparable: the drawn rows themselves (the script's draw is not
seeded, mmcal's is).
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import pytest
import torch

from conftest import own_global_state
from mmcal.hub.llava_stage1 import PROJECTOR_FILE, assemble, new_row_distribution
from tiny_models import tiny_llava_stage1_inputs

FIXTURE = json.loads((Path(__file__).parent / "fixtures" / "llava_stage1_conversion.json").read_text())
RESIZED = ("model.language_model.embed_tokens.weight", "lm_head.weight")


def _sha(t: torch.Tensor) -> str:
    return hashlib.sha256(t.detach().contiguous().numpy().tobytes()).hexdigest()


@pytest.fixture(scope="module")
def sources(tmp_path_factory):
    """The fake sources of tests/test_llava_stage1.py (same seeds and shapes), checked against the oracle's inputs."""
    import build as replicas
    from transformers import AutoModelForCausalLM

    try:
        lm_dir, processor_dir = replicas.build("vicuna-7b-v1.5"), replicas.build("llava-1.5")
    except replicas.ReplicaMissing as exc:
        pytest.skip(f"replica sources not fetched: {exc}")
    tmp = tmp_path_factory.mktemp("stage1-oracle")
    lm = AutoModelForCausalLM.from_pretrained(lm_dir)
    hidden = lm.config.hidden_size
    with own_global_state():  # the tiny CLIP seeds torch's generator; the projector is drawn after it
        vision, projector = tiny_llava_stage1_inputs(tmp, hidden, PROJECTOR_FILE)
    # the LLaVA checkpoint layout the conversion read: LM, projector, CLIP under model.vision_tower.vision_tower.
    old = {**lm.state_dict(), **projector}
    old.update({"model.vision_tower.vision_tower.vision_model." + k: v for k, v in vision.state_dict().items()})
    got = {k: _sha(v) for k, v in old.items()}
    if got != FIXTURE["input_sha256"]:
        differ = sorted(k for k in FIXTURE["input_sha256"] if got.get(k) != FIXTURE["input_sha256"][k])
        pytest.fail(f"the fake sources differ from the oracle run's inputs (seeded draws changed?): {differ[:5]}")
    folders = {"projector": tmp / "projector", "language_model": lm_dir, "vision_tower": tmp / "clip"}
    return {**folders, "processor": processor_dir, "embed": lm.state_dict()["model.embed_tokens.weight"], "tmp": tmp}


@pytest.fixture(scope="module")
def assembled(sources):
    """mmcal's assembly, reloaded as the engine loads it (tensor names as transformers 5 names them in memory)."""
    from transformers import LlavaForConditionalGeneration

    out = sources["tmp"] / "model"
    summary = assemble({k: sources[k] for k in ("projector", "language_model", "vision_tower", "processor")}, out)
    state = LlavaForConditionalGeneration.from_pretrained(out).state_dict()
    return {"summary": summary, "state": state, "config": json.loads((out / "config.json").read_text()), "out": out}


def test_every_tensor_is_the_conversions(assembled):
    state = assembled["state"]
    assert set(state) == set(FIXTURE["tensors"])  # same names after transformers 5's renaming of the v4 layout
    for name, want in FIXTURE["tensors"].items():
        assert list(state[name].shape) == want["shape"], name
        if name in RESIZED:
            assert _sha(state[name][:32000]) == want["rows_0_32000_sha256"], name
        else:
            assert _sha(state[name]) == want["sha256"], name
    assert sorted({str(v.dtype) for v in state.values()}) == FIXTURE["dtypes"]


def test_vocabulary_padding_config_and_tokens(assembled):
    from transformers import AutoProcessor

    cfg, want = assembled["config"], FIXTURE["config"]
    assert cfg["text_config"]["vocab_size"] == want["text_vocab_size"] == 32064
    for key in ("image_token_index", "vision_feature_layer", "vision_feature_select_strategy", "projector_hidden_act"):
        assert cfg[key] == want[key], key
    # the conversion sets config.pad_token_id; transformers 5 keeps it in the text config
    assert cfg["text_config"]["pad_token_id"] == want["pad_token_id"] == 32001
    tok = AutoProcessor.from_pretrained(assembled["out"]).tokenizer
    assert {t: tok.convert_tokens_to_ids(t) for t in FIXTURE["tokenizer_added"]} == FIXTURE["tokenizer_added"]
    assert len(tok) == FIXTURE["len_tokenizer"]
    assert assembled["summary"]["new_rows"] == FIXTURE["new_rows"]["embed"][1] - FIXTURE["new_rows"]["embed"][0]


def test_new_rows_come_from_the_conversions_distribution(sources, assembled):
    dist = FIXTURE["new_row_distribution"]
    mu, cov = new_row_distribution(sources["embed"])
    torch.testing.assert_close(mu, torch.tensor(dist["mu"], dtype=torch.float64), rtol=1e-5, atol=1e-7)
    torch.testing.assert_close(cov, torch.tensor(dist["covariance"], dtype=torch.float64), rtol=1e-4, atol=1e-10)
    state = assembled["state"]
    lo, hi = FIXTURE["new_rows"]["embed"]
    embed_new, head_new = state[RESIZED[0]][lo:hi], state[RESIZED[1]][lo:hi]
    assert not torch.equal(embed_new, head_new)  # two draws, as the script samples each matrix separately
    # the drawn rows lie where the distribution puts them: within a few standard deviations of mu
    z = (embed_new.double() - mu) / cov.diagonal().sqrt()
    assert z.abs().max() < 6
