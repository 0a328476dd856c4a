"""What the model gives back cannot be used: NaN / infinite logits (fp16 overflow at paper scale, a broken
weight). An item whose scores are not finite is an unscorable row with its reason, never a NaN confidence
that the metrics average over; when it is systematic (more than ``scoring.max_unscorable``) the job fails
loudly, naming the job and the first items."""

from __future__ import annotations

import shutil
from dataclasses import replace

import numpy as np
import pytest
from safetensors.torch import load_file, save_file

from faults.faultkit import items_file, score_in_process
from mmcal.errors import MmcalError
from mmcal.records import read_records

MARK = "☃"  # a character no other item or the prompt holds: its tokens' embeddings are made NaN


def _broken_model(src, dst, edit):
    shutil.copytree(src, dst)
    weights = load_file(dst / "model.safetensors")
    edit(weights)
    save_file(weights, dst / "model.safetensors", metadata={"format": "pt"})
    return dst


def _compare(records, reference, item_ids):
    cols = ["item_id", "readout", "status", "pred", "option_scores", "confidence"]
    a = records[records["item_id"].isin(item_ids)][cols].reset_index(drop=True)
    b = reference[reference["item_id"].isin(item_ids)][cols].reset_index(drop=True)
    assert a["status"].eq("ok").all()
    # other shard and batch sizes than the reference's: the same numbers up to float32 summation order
    np.testing.assert_allclose(np.stack(a["option_scores"]), np.stack(b["option_scores"]), rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(a["confidence"], b["confidence"], rtol=1e-5)
    assert a[["item_id", "readout", "status", "pred"]].equals(b[["item_id", "readout", "status", "pred"]])


def test_nan_logits_of_one_item_are_an_unscorable_row(tiny_llava_dir, reference8, tmp_path):
    from transformers import AutoTokenizer

    def mark_first(its):
        return [replace(its[0], question=its[0].question + MARK), *its[1:]]

    items = items_file(tmp_path / "items", n=8, edit=mark_first)
    tok = AutoTokenizer.from_pretrained(tiny_llava_dir)
    poisoned = set(tok(MARK, add_special_tokens=False).input_ids)
    poisoned -= set(tok(items.read_text().replace(MARK, ""), add_special_tokens=False).input_ids)
    assert poisoned

    def nan_rows(w):
        w["language_model.model.embed_tokens.weight"][sorted(poisoned)] = float("nan")

    model = _broken_model(tiny_llava_dir, tmp_path / "model", nan_rows)
    out = tmp_path / "records.parquet"
    first = reference8["item_id"].iloc[0]
    # 1 of 8 items is more than the default scoring.max_unscorable (2%): the job fails, naming it
    with pytest.raises(MmcalError, match=rf"1 of 8 items .* could not be scored.*First: {first}: non-finite scores"):
        score_in_process(items, out, model, shard_size=2)
    assert not out.exists()
    # allowed more (the study's decision), the rerun assembles the shards: the item is a row with its reason
    stats = score_in_process(items, out, model, shard_size=2, max_unscorable=0.2)
    assert stats["scored_now"] == 0
    records = read_records(out)
    bad = records[records["item_id"] == first]
    assert len(bad) == 3 and set(bad["status"]) == {"non-finite scores"}
    assert (bad["pred"] == -1).all() and bad["confidence"].isna().all() and not bad["correct"].any()
    _compare(records, reference8, set(reference8["item_id"]) - {first})  # the other items: untouched


def test_infinite_logits_everywhere_fail_the_job(tiny_llava_dir, items8, tmp_path):
    def inf_head(w):
        w["language_model.lm_head.weight"][:, 0] = float("inf")

    model = _broken_model(tiny_llava_dir, tmp_path / "model", inf_head)
    out = tmp_path / "records.parquet"
    with pytest.raises(MmcalError, match=r"8 of 8 items \(100.0%\) .* could not be scored.*non-finite scores"):
        score_in_process(items8, out, model)
    assert not out.exists()
