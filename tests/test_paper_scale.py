"""The paper-scale benchmark's FLOP count (issue 22, part 6): on the reduced model (LLaVA-1.5-7B's structure, a
few narrow layers), the analytic count of the weights' matrix products equals what torch's FLOP counter sees
in the engine's passes, for the letter readouts (one pass) and for all readouts (prefix + packed tree)."""

from __future__ import annotations

import pytest
import torch

from conftest import own_global_state
from mmcal.bench import paper_scale
from mmcal.engine.scenarios import Scenario
from mmcal.records import READOUTS


@pytest.fixture(scope="module")
def reduced(tmp_path_factory):
    if not (paper_scale.REPLICA / "tokenizer.json").exists():
        pytest.skip(f"no LLaVA-1.5 replica at {paper_scale.REPLICA} (envs/setup.sh builds it)")
    config = paper_scale.llava_config(reduced=True)
    with own_global_state():  # a seeded build
        model = paper_scale.build_model(config, "cpu", torch.float32)
    lm = paper_scale.loaded_model(model, paper_scale.REPLICA, "cpu")
    root = tmp_path_factory.mktemp("paper-scale")
    return config, lm, root, paper_scale.make_items(2, root, n_images=2)


def test_reduced_model_has_the_structure_of_llava_1_5(reduced):
    config, lm, root, items = reduced
    engine = paper_scale.engine_for(lm, ["letter_restricted"], 1, root)
    enc = engine.encode(0, items[0], Scenario())
    assert sum(t == config.image_token_id for t in enc.prefix_ids) == 576
    assert config.text_config.vocab_size == 32064 and config.vision_config.image_size == 336
    full = paper_scale.Shapes.of(paper_scale.llava_config(reduced=False))
    assert (full.d, full.inter, full.layers, full.layers_v, full.patches) == (4096, 11008, 32, 23, 576)


@pytest.mark.parametrize("readouts", [["letter_restricted", "letter_full_vocab"], list(READOUTS)])
def test_flop_count_matches_torch_counter(reduced, readouts):
    from torch.utils.flop_counter import FlopCounterMode

    config, lm, root, items = reduced
    engine = paper_scale.engine_for(lm, readouts, 1, root)
    engine.forward.tree_ok = True  # the first-use check would run extra passes under the counter
    enc = engine.encode(0, items[0], Scenario())
    with FlopCounterMode(display=False) as counter:
        engine._run_part([enc])
    counted = sum(n for op, n in counter.get_flop_counts()["Global"].items() if "attention" not in str(op))
    shapes = paper_scale.Shapes.of(config, attention=False)
    v = config.vision_config
    unused_vision_layer = 2 * (shapes.patches + 1) * (4 * v.hidden_size**2 + 2 * v.hidden_size * v.intermediate_size)
    assert counted == paper_scale.item_flops(shapes, engine, enc) + unused_vision_layer
