"""Systematic failures fail the job; one item's bad input stays a recorded row."""

from __future__ import annotations

import dataclasses

import pandas as pd
import pytest
import torch
from transformers import LlavaForConditionalGeneration

from conftest import own_items_file
from mmcal.engine.forward import ForwardError
from mmcal.engine.job import JobSpec, check_unscorable, score_to_records
from mmcal.engine.loading import load_model
from mmcal.engine.prompts import PromptVariant
from mmcal.engine.scenarios import Scenario
from mmcal.engine.scoring import Engine
from mmcal.errors import MmcalError

READOUTS = ["letter_restricted", "letter_full_vocab", "option_loglik"]


def _score(entry, items_path, out, **kw):
    return score_to_records(
        "tiny",
        entry,
        "fm",
        items_path,
        out,
        Scenario(),
        PromptVariant(),
        readouts=READOUTS,
        splits=["calib", "test"],
        device="cpu",
        dtype="float32",
        batch_size=kw.pop("batch_size", 4),
        progress=False,
        **kw,
    )


def test_a_forward_that_always_raises_fails_the_job(tiny_llava_dir, fmnist_items, tmp_path, monkeypatch):
    root, items = fmnist_items
    items_path = own_items_file(fmnist_items, tmp_path / "fm")

    def broken(self, *a, **kw):
        raise RuntimeError("Image features and image tokens do not match: tokens: 575, features 576")

    monkeypatch.setattr(LlavaForConditionalGeneration, "forward", broken)
    with pytest.raises(ForwardError) as err:
        _score({"path": str(tiny_llava_dir)}, items_path, tmp_path / "r.parquet")
    msg = str(err.value)
    assert "dataset 'fm'" in msg and "model 'tiny'" in msg and "scenario 'image'" in msg
    assert "575" in msg and items[0].item_id in msg
    assert isinstance(err.value.__cause__, RuntimeError)
    assert not (tmp_path / "r.parquet").exists()


def test_out_of_memory_halves_the_batch_down_to_one(tiny_llava_dir, fmnist_items, monkeypatch):
    root, items = fmnist_items
    # four copies of one item: same prefix length, so they form one batch of 4
    same = [dataclasses.replace(items[0], item_id=f"copy{i}") for i in range(4)]
    lm = load_model("tiny", str(tiny_llava_dir))
    expected = Engine(lm, PromptVariant(), batch_size=1, image_root=root).score(same, Scenario())
    sizes = []
    real_forward = LlavaForConditionalGeneration.forward

    def small_only(self, input_ids=None, **kw):
        sizes.append(input_ids.shape[0])
        if input_ids.shape[0] > 1:
            raise torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB")
        return real_forward(self, input_ids=input_ids, **kw)

    monkeypatch.setattr(LlavaForConditionalGeneration, "forward", small_only)
    # letter readouts only: one pass per item, so each call's batch is the items of one part
    engine = Engine(lm, PromptVariant(), readouts=READOUTS[:2], batch_size=4, image_root=root)
    rows = engine.score(same, Scenario())
    assert sizes[:2] == [4, 2] and sizes[2:] == [1, 1, 1, 1]
    assert [r["status"] for r in rows] == ["ok"] * 8
    want = [r for r in expected if r["readout"] in READOUTS[:2]]
    assert [r["confidence"] for r in rows] == pytest.approx([r["confidence"] for r in want], abs=1e-6)

    def never(self, input_ids=None, **kw):
        raise RuntimeError("CUDA error: out of memory")

    monkeypatch.setattr(LlavaForConditionalGeneration, "forward", never)
    with pytest.raises(ForwardError, match="out of memory with one item per batch"):
        Engine(lm, PromptVariant(), readouts=READOUTS[:2], batch_size=4, image_root=root).score(same, Scenario())


def test_one_corrupt_image_is_a_recorded_row(tiny_llava_dir, fmnist_items, tmp_path):
    root, items = fmnist_items
    bad = items[2]
    broken_dir = tmp_path / "images"
    broken_dir.mkdir()
    (broken_dir / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\n this is not an image")
    items = [dataclasses.replace(it, image=str(tmp_path / "images/broken.png")) if it is bad else it for it in items]
    items_path = own_items_file(fmnist_items, tmp_path / "fm", items, "items-corrupt.jsonl")
    stats = _score({"path": str(tiny_llava_dir)}, items_path, tmp_path / "r.parquet")
    assert (stats["ok"], stats["unscorable"]) == (len(items) - 1, 1)
    df = pd.read_parquet(tmp_path / "r.parquet")
    row = df[df["item_id"] == bad.item_id]
    assert len(row) == len(READOUTS)
    assert row["status"].str.startswith("image unreadable").all()
    assert (df[df["item_id"] != bad.item_id]["status"] == "ok").all()


def _frame(statuses):
    return pd.DataFrame({"item_id": [f"i{k}" for k in range(len(statuses))], "status": statuses})


def test_unscorable_share_among_fine_inputs_is_bounded():
    spec = JobSpec("m", "d", "s", "p", "items.jsonl", "out.parquet", max_unscorable=0.02)
    # 1 of 50 fine inputs unscorable = 2.0 %: allowed; the missing image is an input problem, not counted
    check_unscorable(_frame(["image missing: x.png", "processor failed: ValueError: bad"] + ["ok"] * 49), spec)
    # 1 of 49 = 2.04 %: too many
    with pytest.raises(MmcalError, match=r"1 of 49 items \(2.0%\).*i1: processor failed: ValueError: bad"):
        check_unscorable(_frame(["image missing: x.png", "processor failed: ValueError: bad"] + ["ok"] * 48), spec)
    check_unscorable(_frame(["prompt too long (900 tokens, limit 512)"] * 3), spec)  # no fine inputs at all
