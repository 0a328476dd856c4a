"""Faults injected into Snakemake runs (minutes: behind the ``faults_slow`` marker, ``pytest -m faults_slow
tests/faults``; docs/reliability.md has the measured results). Two runs started in one folder; a full file
system under the provenance store while the scoring job finishes; kill -9 of Snakemake during the tables job
of the test study."""

from __future__ import annotations

import os
import shutil
import time

import pandas as pd
import pytest

from faults.faultkit import (
    N_ITEMS,
    RECORDS,
    fill,
    kill_when,
    output,
    resize_filesystem,
    run,
    shard_stats,
    small_filesystem,
    snakemake,
    start,
)
from mmcal.engine.job import shard_dir_for
from mmcal.paper.main_tex import latex_problems

pytestmark = pytest.mark.faults_slow
SCORE_LOG = "logs/score/tiny/fmnist/image/default.log"


def _check_records(wd):
    records = pd.read_parquet(wd / RECORDS)
    assert len(records) == 3 * N_ITEMS and records["item_id"].nunique() == N_ITEMS
    assert set(records["status"]) == {"ok"}
    assert (wd / "provenance" / (RECORDS + ".json")).exists() and not shard_dir_for(wd / RECORDS).exists()


def test_two_runs_in_one_folder(fault_workdir):
    """The second run refuses (Snakemake's lock), naming the folder's lock; the first finishes untouched."""
    wd = fault_workdir
    first = start(snakemake(wd, RECORDS), wd)
    deadline = time.monotonic() + 120
    while not list((wd / ".snakemake/locks").glob("*")) and time.monotonic() < deadline:
        time.sleep(0.05)
    rc, text = run(snakemake(wd, RECORDS), wd)
    assert rc != 0 and "Directory cannot be locked" in text, text
    first.wait(timeout=600)
    assert first.returncode == 0, output(first)
    output(first)
    _check_records(wd)
    assert len(shard_stats((wd / SCORE_LOG).read_text())) == 1  # scored once, by the first run only


def test_enospc_under_the_provenance_store(fault_workdir):
    """The scoring job's records are written, then its provenance record cannot be (a full file system): the
    job fails naming the record's file, Snakemake removes its output, the shards stay; with room again the
    rerun only assembles them (nothing scored twice)."""
    wd = fault_workdir
    with small_filesystem(wd / "provenance", 256) as store:
        fill(store)
        rc, text = run(snakemake(wd, RECORDS), wd)
        assert rc != 0, text
        log = (wd / SCORE_LOG).read_text()
        target = wd / "provenance" / (RECORDS + ".json")
        assert f"cannot write provenance record {target.relative_to(wd)}" in log or f"{target}" in log, log
        assert "No space left on device" in log, log
        assert not (wd / RECORDS).exists() and not target.exists()
        assert len(list(shard_dir_for(wd / RECORDS).glob("shard-*.parquet"))) == N_ITEMS
        resize_filesystem(store, 4096)
        rc, text = run(snakemake(wd, RECORDS), wd)
        assert rc == 0, text
        stats = shard_stats((wd / SCORE_LOG).read_text())
        assert stats[-1]["resumed"] == N_ITEMS and stats[-1]["scored_now"] == 0
        _check_records(wd)


def _study_copy(study, dst):
    """Outputs hard-linked (jobs replace files, never write into them); what Snakemake writes in place (its
    metadata, logs, benchmarks) copied, so the session's study is left as it was."""
    written_in_place = {".snakemake", "logs", "benchmarks"}
    dst.mkdir(parents=True)
    for entry in study.iterdir():
        if not entry.is_dir():
            shutil.copy2(entry, dst / entry.name)
        elif entry.name in written_in_place:
            shutil.copytree(entry, dst / entry.name, symlinks=True)
        else:
            shutil.copytree(entry, dst / entry.name, copy_function=os.link, symlinks=True)
    return dst


def test_kill9_during_the_tables_job(study, tmp_path):
    wd = _study_copy(study, tmp_path / "study")
    tables = wd / "paper/tables"
    before = {p.name: p.read_bytes() for p in tables.iterdir()}
    old = tables.stat().st_ino
    base = snakemake(wd, configfile="config/test.yaml")[:-1]  # no "--": options follow
    args = [*base, "--forcerun", "tables", "--", "paper/tables"]

    def mid_job():
        try:
            fresh = tables.stat().st_ino != old
        except FileNotFoundError:
            return False
        return fresh and any(tables.glob("*.tex")) and not (tables / "manifest.json").exists()

    kill_when(start(args, wd), mid_job)
    for tex in tables.glob("*.tex"):  # whatever a reader sees is a whole table
        assert latex_problems(tex.read_text()) == [] and tex.read_bytes() == before[tex.name], tex
    rc, text = run(args, wd)
    assert rc != 0 and "--unlock" in text, text
    assert run([*base, "--unlock"], wd)[0] == 0
    rc, text = run([*base, "--", "paper/tables"], wd)  # the rerun (rerun-incomplete): the folder is made again
    assert rc == 0, text
    after = {p.name: p.read_bytes() for p in tables.iterdir()}
    assert after.keys() == before.keys()
    assert {n for n in before if n != "manifest.json" and after[n] != before[n]} == set()
