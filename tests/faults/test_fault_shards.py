"""Shards a resumed scoring job must not trust: cut short, foreign bytes, another file's schema, written for
another job, a killed writer's temporary file, an item in two shards. Each is discarded (with a warning naming
it) or ignored, its items are scored again, and the records equal an uninterrupted run's."""

from __future__ import annotations

import logging

import pandas as pd
import pytest

from faults.faultkit import score_in_process
from mmcal.engine.job import shard_dir_for


@pytest.fixture
def interrupted(items8, tiny_llava_dir, tmp_path):
    """A job that scored every item into shards (one item each) and died before assembling them."""
    out = tmp_path / "records.parquet"
    score_in_process(items8, out, tiny_llava_dir, shard_size=1, keep_shards=True)
    out.unlink()
    return out, sorted(shard_dir_for(out).glob("shard-*.parquet"))


def _resume(items8, tiny_llava_dir, out, reference8, caplog, **kw):
    with caplog.at_level(logging.WARNING, logger="mmcal.engine.job"):
        stats = score_in_process(items8, out, tiny_llava_dir, shard_size=1, **kw)
    pd.testing.assert_frame_equal(pd.read_parquet(out), reference8)
    assert not shard_dir_for(out).exists()
    return stats, [r.getMessage() for r in caplog.records if r.levelno >= logging.WARNING]


@pytest.mark.parametrize(
    "damage",
    [
        pytest.param(lambda b: b[: len(b) // 2], id="truncated"),
        pytest.param(lambda b: b[:0], id="empty"),
        pytest.param(lambda b: b"\x89PNG\r\n\x1a\n" + bytes(200), id="foreign-bytes"),
    ],
)
def test_a_damaged_shard_is_discarded_and_its_item_rescored(
    interrupted, damage, items8, tiny_llava_dir, reference8, caplog
):
    out, shards = interrupted
    shards[3].write_bytes(damage(shards[3].read_bytes()))
    stats, warnings = _resume(items8, tiny_llava_dir, out, reference8, caplog)
    assert stats["resumed"] == 7 and stats["scored_now"] == 1
    assert any(str(shards[3]) in w and "unreadable" in w for w in warnings), warnings


def test_a_parquet_file_of_another_kind_is_discarded(interrupted, items8, tiny_llava_dir, reference8, caplog):
    out, shards = interrupted
    pd.DataFrame({"x": [1, 2]}).to_parquet(shards[0])  # valid Parquet, not records
    stats, warnings = _resume(items8, tiny_llava_dir, out, reference8, caplog)
    assert stats["scored_now"] == 1
    assert any(str(shards[0]) in w for w in warnings), warnings


def test_shards_of_another_readout_set_are_discarded(interrupted, items8, tiny_llava_dir, reference8, caplog):
    """Shards of the same model and prompt but other readouts (the config changed after a kill)."""
    out, shards = interrupted
    for shard in shards[:2]:
        df = pd.read_parquet(shard)
        df[df["readout"] != "option_loglik"].to_parquet(shard)
    (shard_dir_for(out) / "job.json").unlink()  # as an older version left them: judged shard by shard
    stats, warnings = _resume(items8, tiny_llava_dir, out, reference8, caplog)
    assert stats["scored_now"] == 2
    assert sum("holds readouts" in w for w in warnings) == 2, warnings


def test_shards_written_for_another_scenario_are_all_discarded(items8, tiny_llava_dir, reference8, tmp_path, caplog):
    """Same model, prompt and readouts, but the scenario's definition changed (options shifted): only the
    shard folder's job.json tells, and every shard goes."""
    out = tmp_path / "records.parquet"
    shifted = {"image": True, "option_shift": 1}
    score_in_process(items8, out, tiny_llava_dir, scenario_cfg=shifted, shard_size=1, keep_shards=True)
    out.unlink()
    stats, warnings = _resume(items8, tiny_llava_dir, out, reference8, caplog)
    assert stats["resumed"] == 0 and stats["scored_now"] == 8
    assert any("written for another job" in w for w in warnings), warnings


def test_a_killed_writers_temporary_file_is_never_read(interrupted, items8, tiny_llava_dir, reference8, caplog):
    """A job killed while writing a shard leaves only a hidden temporary file (mmcal.atomic); the resumed job
    does not read it and re-scores that item."""
    out, shards = interrupted
    data = shards[5].read_bytes()
    shards[5].unlink()
    partial = shards[5].with_name(f".{shards[5].name}.4242.tmp")
    partial.write_bytes(data[: len(data) // 3])
    stats, warnings = _resume(items8, tiny_llava_dir, out, reference8, caplog)
    assert stats["resumed"] == 7 and stats["scored_now"] == 1 and not warnings


def test_an_item_in_two_shards_gives_one_row_per_readout(interrupted, items8, tiny_llava_dir, reference8, caplog):
    """Two writers of one output (two ``mmcal score`` runs on the same --out) can leave an item twice."""
    out, shards = interrupted
    (shards[0].parent / "shard-00100.parquet").write_bytes(shards[0].read_bytes())
    stats, _ = _resume(items8, tiny_llava_dir, out, reference8, caplog)
    assert stats["scored_now"] == 0
