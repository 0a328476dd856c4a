"""Scoring jobs: sharded, resumable, every item accounted for."""

from __future__ import annotations

import pandas as pd
import pytest

from mmcal.items import write_items
from mmcal.engine.loading import load_model
from mmcal.engine.prompts import PromptVariant
from mmcal.engine.scenarios import Scenario
from mmcal.engine.scoring import Engine
from mmcal.engine.job import JobSpec, run_job, shard_dir_for


class Crash(RuntimeError):
    pass


def _spec(root, items, out):
    path = root / "items.jsonl"
    write_items(items, path)
    return JobSpec(model="tiny", dataset="fm", scenario="image", prompt="default",
                   items_path=str(path), out_path=str(out), shard_size=2)


def test_killed_job_resumes_only_unfinished_items(tiny_llava_dir, fmnist_items, tmp_path):
    root, items = fmnist_items
    out = tmp_path / "records.parquet"
    spec = _spec(root, items, out)
    lm = load_model("tiny", str(tiny_llava_dir))
    calls = {"n": 0}

    class CrashingEngine(Engine):
        def score(self, *a, **kw):
            calls["n"] += 1
            if calls["n"] == 3:  # dies while scoring the third shard
                raise Crash("killed")
            return super().score(*a, **kw)

    with pytest.raises(Crash):
        run_job(spec, lambda: CrashingEngine(lm, PromptVariant(), image_root=root), Scenario(), progress=False)
    assert len(list(shard_dir_for(out).glob("shard-*.parquet"))) == 2
    assert not out.exists()

    scored = []

    class CountingEngine(Engine):
        def score(self, chunk, *a, **kw):
            scored.extend(it.item_id for it in chunk)
            return super().score(chunk, *a, **kw)

    stats = run_job(spec, lambda: CountingEngine(lm, PromptVariant(), image_root=root), Scenario())
    assert stats["resumed"] == 4 and stats["scored_now"] == len(items) - 4
    assert set(scored) == {it.item_id for it in items[4:]}
    df = pd.read_parquet(out)
    assert list(df.drop_duplicates("item_id")["item_id"]) == [it.item_id for it in items]
    assert df.groupby("item_id").size().eq(3).all()  # three readouts each
    assert set(df["prompt_hash"]) == {PromptVariant().prompt_hash()}
    assert not shard_dir_for(out).exists()

    # A finished job never loads the model again.
    def must_not_load():
        raise AssertionError("model loaded for a finished job")

    shard_dir_for(out).mkdir()
    df.to_parquet(shard_dir_for(out) / "shard-00000.parquet")
    assert run_job(spec, must_not_load, Scenario())["scored_now"] == 0


def test_same_config_gives_same_records(tiny_llava_dir, fmnist_items, tmp_path):
    root, items = fmnist_items
    lm = load_model("tiny", str(tiny_llava_dir))
    frames = []
    for k in range(2):
        out = tmp_path / f"r{k}.parquet"
        run_job(_spec(root, items, out), lambda: Engine(lm, PromptVariant(), image_root=root), Scenario())
        frames.append(pd.read_parquet(out))
    pd.testing.assert_frame_equal(frames[0], frames[1])


def test_shards_of_another_model_are_discarded(tiny_llava_dir, fmnist_items, tmp_path):
    root, items = fmnist_items
    out = tmp_path / "records.parquet"
    spec = _spec(root, items, out)
    lm = load_model("tiny", str(tiny_llava_dir))
    run_job(spec, lambda: Engine(lm, PromptVariant(), image_root=root), Scenario())
    shard_dir_for(out).mkdir()
    stale = pd.read_parquet(out).assign(model_fingerprint="an-older-checkpoint")
    stale.to_parquet(shard_dir_for(out) / "shard-00000.parquet")
    spec.fingerprint, spec.prompt_hash = lm.fingerprint, PromptVariant().prompt_hash()
    stats = run_job(spec, lambda: Engine(lm, PromptVariant(), image_root=root), Scenario())
    assert stats["resumed"] == 0 and stats["scored_now"] == len(items)
    assert set(pd.read_parquet(out)["model_fingerprint"]) == {lm.fingerprint}
