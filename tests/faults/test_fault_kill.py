"""kill -9 in the middle of a job: the scoring job (alone, and with Snakemake around it) and the tables job.
A rerun completes, re-scores nothing already in a shard, and ends with the records of an uninterrupted run."""

from __future__ import annotations

import pandas as pd
import pytest

from faults.faultkit import N_ITEMS, RECORDS, kill_when, run, score_cli, shard_stats, snakemake, start
from mmcal.engine.job import shard_dir_for


def _visible_shards(out):
    return sorted(shard_dir_for(out).glob("shard-*.parquet"))


def test_kill9_during_scoring_resumes_without_rescoring(tiny_llava_dir, items8, reference8, tmp_path):
    out = tmp_path / "out/records.parquet"
    args = score_cli(items8, out, tiny_llava_dir, {"scoring": {"shard_size": 1}}, cwd=tmp_path)
    kill_when(start(args, tmp_path), lambda: len(_visible_shards(out)) >= 2)

    assert not out.exists()
    done = set()
    for shard in _visible_shards(out):  # every shard a reader can see is whole (written to a temp file, renamed)
        done |= set(pd.read_parquet(shard)["item_id"])
    assert 2 <= len(done) < len(reference8["item_id"].unique())

    rc, text = run(args, tmp_path)
    assert rc == 0, text
    stats = shard_stats(text)[-1]
    assert stats["resumed"] == len(done) and stats["scored_now"] == 8 - len(done)  # nothing scored twice
    pd.testing.assert_frame_equal(pd.read_parquet(out), reference8)  # nothing lost, nothing different
    assert not shard_dir_for(out).exists()


@pytest.mark.faults_slow
def test_kill9_of_snakemake_during_scoring(fault_workdir):
    """SIGKILL to Snakemake and its job together (a node lost, a killed session). Snakemake cannot tell its
    stale lock from a live run: the rerun refuses, naming ``--unlock``; after it, the rerun (the profile's
    rerun-incomplete) resumes the job from its shards."""
    wd, out = fault_workdir, fault_workdir / RECORDS
    kill_when(start(snakemake(wd, RECORDS), wd), lambda: len(_visible_shards(out)) >= 2)
    assert not out.exists()
    done = set()
    for shard in _visible_shards(out):
        done |= set(pd.read_parquet(shard)["item_id"])

    rc, text = run(snakemake(wd, RECORDS), wd)
    assert rc != 0 and "Directory cannot be locked" in text and "--unlock" in text, text
    assert not out.exists() and len(_visible_shards(out)) == len(done)  # the refusal touched nothing
    rc, text = run(snakemake(wd, RECORDS)[:-2] + ["--unlock"], wd)
    assert rc == 0, text
    rc, text = run(snakemake(wd, RECORDS), wd)
    assert rc == 0, text
    log = (wd / "logs/score/tiny/fmnist/image/default.log").read_text()
    stats = shard_stats(log)
    assert len(stats) == 1 and stats[0]["resumed"] == len(done) >= 2
    assert stats[0]["scored_now"] == N_ITEMS - len(done)
    records = pd.read_parquet(out)
    assert len(records) == 3 * N_ITEMS and set(records["status"]) == {"ok"}
    assert (wd / "provenance" / (RECORDS + ".json")).exists()
    assert not shard_dir_for(out).exists()
