"""The scoring engine on CUDA, for three MLLM families (LLaVA, Idefics3, Qwen2-VL).

Skipped where no GPU is (CI). On a GPU machine, the tiny random-weight models need only SmolLM2's
tokenizer and config: ``MMCAL_LM_SOURCE=<folder> MMCAL_FMNIST_ROOT=<folder> pytest tests/gpu``.
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest
import torch

from mmcal.engine.loading import load_model
from mmcal.engine.prompts import PromptVariant
from mmcal.engine.scenarios import Scenario
from mmcal.engine.scoring import Engine, load_image
from mmcal.promptopt.job import answer_prefix_for
from test_scoring import READOUT_ORDER, _by, _hand_readouts
from tiny_models import build_tiny_idefics3, build_tiny_llava, build_tiny_qwen2vl

pytestmark = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")

BUILDERS = {"llava": build_tiny_llava, "idefics3": build_tiny_idefics3, "qwen2vl": build_tiny_qwen2vl}


@pytest.fixture(scope="module")
def lm_source(repo_root) -> Path:
    path = Path(os.environ.get("MMCAL_LM_SOURCE", repo_root / "data/models/smollm2-135m-instruct"))
    if not (path / "tokenizer.json").exists():
        pytest.skip(f"no SmolLM2 tokenizer at {path} (set MMCAL_LM_SOURCE)")
    return path


@pytest.fixture(scope="module", params=sorted(BUILDERS))
def family(request, lm_source, tmp_path_factory):
    if request.param == "qwen2vl":
        pytest.importorskip("torchvision", exc_type=ImportError)
    return request.param, BUILDERS[request.param](tmp_path_factory.mktemp(request.param), lm_source)


def _score(lm, items, root, batch_size, prompt=None):
    return Engine(lm, prompt or PromptVariant(), batch_size=batch_size, image_root=root).score(items, Scenario())


def test_readouts_match_hand_computation_on_cuda(family, fmnist_items):
    name, path = family
    root, items = fmnist_items
    lm = load_model(name, str(path), device="cuda", dtype="float32")
    assert next(lm.model.parameters()).is_cuda
    rows = _score(lm, items, root, batch_size=4)
    assert {r["status"] for r in rows} == {"ok"}
    for item in items[:3]:
        expected = _hand_readouts(lm, item, load_image(root / item.image), PromptVariant())
        for readout, p in zip(READOUT_ORDER, expected):
            got = np.exp(_by(rows, item.item_id, readout)["option_scores"])
            np.testing.assert_allclose(got, p, rtol=1e-3, atol=1e-4)


def test_batch_size_does_not_change_results_on_cuda(family, fmnist_items):
    name, path = family
    root, items = fmnist_items
    lm = load_model(name, str(path), device="cuda", dtype="float32")
    one, eight = _score(lm, items, root, 1), _score(lm, items, root, 8)
    for a, b in zip(one, eight):
        assert (a["item_id"], a["readout"]) == (b["item_id"], b["readout"])
        np.testing.assert_allclose(a["option_scores"], b["option_scores"], atol=1e-4)


def test_bfloat16_is_the_cuda_default_and_close_to_float32(family, fmnist_items):
    name, path = family
    root, items = fmnist_items
    bf16 = load_model(name, str(path), device="cuda")
    assert bf16.model.dtype == torch.bfloat16
    fp32 = load_model(name, str(path), device="cuda", dtype="float32")
    for a, b in zip(_score(bf16, items, root, 8), _score(fp32, items, root, 8)):
        assert a["status"] == "ok"
        pa, pb = np.exp(a["option_scores"]), np.exp(b["option_scores"])
        if a["readout"] != "letter_full_vocab":
            assert pa.sum() == pytest.approx(1.0, abs=1e-6)
        np.testing.assert_allclose(pa, pb, atol=0.02)


def test_shared_prefix_candidates_on_cuda(family, fmnist_items):
    name, path = family
    root, items = fmnist_items
    lm = load_model(name, str(path), device="cuda", dtype="float32")
    prefixes = [answer_prefix_for(w) for w in ("The answer might be", "Probably")]
    reused = Engine(
        lm, PromptVariant(), readouts=["letter_restricted"], batch_size=4, image_root=root
    ).score_answer_prefixes(items, Scenario(), prefixes)
    for pre in prefixes:
        alone = Engine(lm, PromptVariant(answer_prefix=pre), readouts=["letter_restricted"], image_root=root)
        by_id = {r["item_id"]: r for r in reused[pre]}
        for b in alone.score(items, Scenario()):
            np.testing.assert_allclose(by_id[b["item_id"]]["option_scores"], b["option_scores"], atol=1e-4)


def test_packed_pass_on_cuda(family, fmnist_items):
    """All readouts: the packed pass (letter branch + option tree behind the prefix's cache) is used where the
    family allows it and gives the per-length cached path's records within 1e-5 (fp32)."""
    name, path = family
    root, items = fmnist_items
    lm = load_model(name, str(path), device="cuda", dtype="float32")
    packed = Engine(lm, PromptVariant(), batch_size=4, image_root=root)
    rows = packed.score(items, Scenario())
    assert packed.forward.tree_ok is (True if lm.prefix_cache_ok else None)
    cached = Engine(lm, PromptVariant(), batch_size=4, image_root=root)
    cached.forward.tree_ok = False
    for a, b in zip(rows, cached.score(items, Scenario())):
        assert (a["item_id"], a["readout"]) == (b["item_id"], b["readout"])
        np.testing.assert_allclose(a["option_scores"], b["option_scores"], atol=1e-5, rtol=0)
