"""All of an item's continuations in one packed pass (issue 22, point 1): the token tree's layout on a real
tokenizer, and on the default study's trained-size tiny-LLaVA (SmolLM2-135M + the default vision tower, random
weights) the packed pass against one plain pass per continuation and against the per-length cached path.
Every family replica: tests/test_families.py::test_packed_readouts_equal_separate_passes."""

from __future__ import annotations

from dataclasses import replace

import numpy as np
import pytest
import torch

from conftest import own_global_state
from mmcal.engine.forward import NO_SPAN, Forward, Row
from mmcal.engine.packing import PREFIX, build_tree
from mmcal.engine.prompts import PromptVariant
from mmcal.engine.readouts import ReadoutSet
from mmcal.engine.scenarios import Scenario
from mmcal.engine.scoring import Engine
from mmcal.records import READOUTS


def test_tree_of_the_readouts_on_a_real_tokenizer(smollm2_dir):
    """SmolLM2: "Answer: (" is [Answer, :, Ġ(]; each option is "Answer:" + its text. The shared "Answer", ":" are
    input once, each option's last token is not input (no logits follow it), read nodes come first, and a node
    sees exactly its ancestors."""
    from transformers import AutoTokenizer

    from mmcal.engine.forward import Encoded
    from mmcal.items import MCItem

    tok = AutoTokenizer.from_pretrained(smollm2_dir)
    readouts = ReadoutSet(tok, PromptVariant(), READOUTS)
    item = MCItem("i", "i", "?", ["Ankle boot", "T-shirt/top", "Bag"], 0, "test", "fmnist")
    rows = readouts.continuations(Encoded(0, item, [1, 2, 3]), 0)
    answer, head = readouts.joined("Answer: ("), readouts.joined("Answer:")
    assert answer[:2] == head and len(head) == 2
    tree = build_tree(rows)
    options = [r.ids[r.span_from :] for r in rows[1:]]
    # input: Answer, :, (, and every option token but its last
    assert len(tree.tokens) == 3 + sum(len(o) - 1 for o in options)
    assert tree.tokens.count(head[0]) == 1 and tree.tokens.count(head[1]) == 1
    letter = tree.last[0]
    assert tree.tokens[letter] == answer[2] and tree.depths[letter] == 2
    assert all(last is None for last in tree.last[1:])
    colon = tree.tokens.index(head[1])
    for opt, scored in zip(options, tree.scored[1:]):
        assert [t for _, t in scored] == opt
        assert scored[0][0] == colon  # the option's first token is predicted after "Answer:"
    read = {letter} | {n for s in tree.scored for n, _ in s}
    assert read == set(range(tree.n_read))  # read nodes first: a batch keeps its first n_read positions
    allowed = tree.allowed()
    for q in range(len(tree.tokens)):
        chain, k = set(), q
        while k != PREFIX:
            chain.add(k)
            k = tree.parents[k]
        assert set(np.flatnonzero(allowed[q])) == chain
        assert tree.depths[q] == len(chain) - 1


def test_tree_reads_prefix_logits_for_empty_and_first_tokens():
    """A row with no tokens reads the prefix's last logits; a span starting at 0 is predicted from the prefix."""
    tree = build_tree([Row(0, [], NO_SPAN), Row(0, [7, 8, 9], 0, last=False), Row(0, [7, 5], NO_SPAN)])
    assert tree.last == [PREFIX, None, tree.tokens.index(5)]
    assert [n for n, _ in tree.scored[1]] == [PREFIX, tree.tokens.index(7), tree.tokens.index(8)]
    assert 9 not in tree.tokens and tree.tokens.count(7) == 1


@pytest.fixture(scope="module")
def default_size_llava(tmp_path_factory, smollm2_dir):
    """The default study's tiny-LLaVA architecture at its exact size, with random weights."""
    from mmcal.bench.random_model import build_random_tiny_llava
    from mmcal.engine.loading import load_model

    with own_global_state():  # a seeded build
        folder = build_random_tiny_llava(smollm2_dir, tmp_path_factory.mktemp("default-size-llava"))
    return load_model("default-size", str(folder), device="cpu", dtype="float32")


def test_packed_pass_on_the_trained_size_tiny_llava(default_size_llava, fmnist_items):
    """Real Fashion-MNIST items in one batch: the packed tree equals one plain pass per continuation within
    1e-5 (fp32), and the records equal those of the per-length cached path (the path before packing)."""
    lm = default_size_llava
    root, items = fmnist_items
    engine = Engine(lm, PromptVariant(), readouts=READOUTS, batch_size=8, image_root=root)
    encs = [e for e in engine.encode_many(items, Scenario()) if e.status == "ok"]
    # a batch holds equal prefix lengths: the other items take the first one's prefix, with their own options
    batch = [encs[0]] + [replace(e, prefix_ids=encs[0].prefix_ids, extra=encs[0].extra) for e in encs[1:4]]
    rows = [r for j, e in enumerate(batch) for r in engine.readout_set.continuations(e, j)]
    forward = Forward(lm)
    outs = forward.run_rows(batch, rows)
    assert forward.tree_ok
    worst = 0.0
    with torch.no_grad():
        for row, out in zip(rows, outs):
            enc = batch[row.enc_index]
            ids = torch.tensor([enc.prefix_ids + row.ids])
            logits = lm.model(input_ids=ids, attention_mask=torch.ones_like(ids), **enc.extra).logits[0]
            lp = torch.log_softmax(logits.double(), -1)
            if row.last:
                worst = max(worst, float((torch.log_softmax(out.last_logits.double(), -1) - lp[-1]).abs().max()))
            n = len(enc.prefix_ids)
            scored = sum(
                float(lp[n + j - 1, row.ids[j]]) for j in range(min(row.span_from, len(row.ids)), len(row.ids))
            )
            worst = max(worst, abs(out.span_logprob - scored))
    assert worst <= 1e-5, worst

    packed = engine.score(items, Scenario())
    assert engine.forward.tree_ok
    before = Engine(lm, PromptVariant(), readouts=READOUTS, batch_size=8, image_root=root)
    before.forward.tree_ok = False  # the per-length cached path
    cached = before.score(items, Scenario())
    assert [(r["item_id"], r["readout"], r["pred"]) for r in packed] == [
        (r["item_id"], r["readout"], r["pred"]) for r in cached
    ]
    for a, b in zip(packed, cached):
        np.testing.assert_allclose(a["option_scores"], b["option_scores"], atol=1e-5, rtol=0)
        np.testing.assert_allclose(a["option_logits"], b["option_logits"], atol=1e-5, rtol=0)
        assert a["confidence"] == pytest.approx(b["confidence"], abs=1e-5)


def test_fallbacks_are_logged_once_and_give_the_cached_records(tiny_llava_dir, fmnist_items, caplog, monkeypatch):
    """A prompt longer than a sliding window, and a packed pass that disagrees with separate passes on its first
    batch, both fall back to one cached pass per continuation length: said once per engine, the cached path's
    records."""
    import logging

    from mmcal.engine.loading import load_model

    root, items = fmnist_items
    lm = load_model("tiny", str(tiny_llava_dir))
    packed = Engine(lm, PromptVariant(), batch_size=2, image_root=root)
    expected = packed.score(items, Scenario())
    assert packed.forward.tree_ok

    def same(rows, expected):
        for a, b in zip(rows, expected):
            assert (a["item_id"], a["readout"]) == (b["item_id"], b["readout"])
            np.testing.assert_allclose(a["option_scores"], b["option_scores"], atol=1e-5, rtol=0)

    lm.model.config.text_config.sliding_window = 8  # the model's own masks now slide: a tree mask would not
    cached = Engine(lm, PromptVariant(), batch_size=2, image_root=root)
    cached.forward.tree_ok = False
    cached_rows = cached.score(items, Scenario())
    windowed = Engine(lm, PromptVariant(), batch_size=2, image_root=root)
    with caplog.at_level(logging.INFO, logger="mmcal.engine.forward"):
        same(windowed.score(items, Scenario()), cached_rows)
    assert windowed.forward.tree_ok is None  # never tried
    assert sum("sliding window (8)" in r.getMessage() for r in caplog.records) == 1
    del lm.model.config.text_config.sliding_window

    run_tree = Forward._run_tree

    def off_by_a_bit(self, *args):
        return [replace(o, span_logprob=o.span_logprob + 0.01) for o in run_tree(self, *args)]

    monkeypatch.setattr(Forward, "_run_tree", off_by_a_bit)
    caplog.clear()
    wrong = Engine(lm, PromptVariant(), batch_size=2, image_root=root)
    with caplog.at_level(logging.INFO, logger="mmcal.engine.forward"):
        same(wrong.score(items, Scenario()), expected)
    assert wrong.forward.tree_ok is False
    assert [r.levelname for r in caplog.records if "differ from separate passes" in r.getMessage()] == ["WARNING"]
