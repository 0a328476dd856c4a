"""A disk that refuses writes: a file-size limit (EFBIG, ``RLIMIT_FSIZE``), a full file system (ENOSPC, a small
tmpfs), a read-only output folder. Each write fails with an error naming the file, leaves nothing half-written
under a finished name, and the rerun (with room again) completes with the records of an uninterrupted run."""

from __future__ import annotations

import os
import stat

import pandas as pd

from faults.faultkit import PYTHON, run, score_cli, shard_stats
from mmcal.engine.job import shard_dir_for


def _visible(folder):
    """What a reader globbing for finished files sees (hidden temporary files excluded)."""
    return sorted(p.name for p in folder.rglob("*") if p.is_file() and not p.name.startswith("."))


def test_efbig_while_writing_the_records_file_then_the_rerun_assembles(tiny_llava_dir, items8, reference8, tmp_path):
    """A limit between a one-item shard's size and the records file's: every shard is written, the records
    file is not. The job fails naming it, and the rerun only assembles (nothing scored again)."""
    sizes = []
    for _, rows in reference8.groupby("item_id"):
        rows.to_parquet(tmp_path / "one.parquet", index=False)
        sizes.append((tmp_path / "one.parquet").stat().st_size)
    reference8.to_parquet(tmp_path / "whole.parquet", index=False)
    whole = (tmp_path / "whole.parquet").stat().st_size
    limit = (max(sizes) + whole) // 2
    assert max(sizes) + 500 < limit < whole - 500, (sizes, whole)

    out = tmp_path / "out/records.parquet"
    args = score_cli(items8, out, tiny_llava_dir, {"scoring": {"shard_size": 1}}, cwd=tmp_path)
    rc, text = run(args, tmp_path, fsize=limit)
    assert rc == 2 and f"mmcal: error: cannot write records file {out}" in text and "too large" in text, text
    assert not out.exists() and _visible(out.parent) == ["job.json"] + [f"shard-{i:05d}.parquet" for i in range(8)]

    rc, text = run(args, tmp_path)
    assert rc == 0, text
    stats = shard_stats(text)[-1]
    assert stats["resumed"] == 8 and stats["scored_now"] == 0
    pd.testing.assert_frame_equal(pd.read_parquet(out), reference8)


def test_efbig_while_writing_a_shard(tiny_llava_dir, items8, reference8, tmp_path):
    """A limit below a shard's size: the first shard fails, the error names it, no shard is left."""
    out = tmp_path / "out/records.parquet"
    args = score_cli(items8, out, tiny_llava_dir, {"scoring": {"shard_size": 2}}, cwd=tmp_path)
    rc, text = run(args, tmp_path, fsize=2048)
    shard = shard_dir_for(out) / "shard-00000.parquet"
    assert rc == 2 and f"cannot write records file {shard}" in text, text
    assert _visible(out.parent) == ["job.json"]  # the shard key (small) was written; no shard, no records

    rc, text = run(args, tmp_path)
    assert rc == 0, text
    assert shard_stats(text)[-1]["scored_now"] == 8
    pd.testing.assert_frame_equal(pd.read_parquet(out), reference8)


def test_read_only_output_folder(tiny_llava_dir, items8, reference8, tmp_path):
    """The job may not write its output folder (root too: its capabilities to ignore permissions are dropped).
    It fails before scoring anything, naming the folder; made writable, the rerun completes."""
    folder = tmp_path / "ro"
    folder.mkdir()
    folder.chmod(stat.S_IRUSR | stat.S_IXUSR | stat.S_IRGRP | stat.S_IXGRP)
    out = folder / "records.parquet"
    args = score_cli(items8, out, tiny_llava_dir, cwd=tmp_path)
    rc, text = run(args, tmp_path, read_only_root=True)
    assert rc == 2 and f"cannot create the shard folder {shard_dir_for(out)}: Permission denied" in text, text
    assert "Traceback" not in text and list(folder.iterdir()) == []

    folder.chmod(0o755)
    rc, text = run(args, tmp_path)
    assert rc == 0, text
    pd.testing.assert_frame_equal(pd.read_parquet(out), reference8)


HASH = """
import sys
from mmcal.hashing import file_sha256
print(file_sha256(sys.argv[1]))
"""


def test_efbig_and_a_cut_line_in_the_hash_cache(tmp_path):
    """The file-hash cache cannot grow (EFBIG): hashing still answers right, uncached. A cache line cut short by
    the limit (a write that stopped half way) costs a re-hash, never a wrong hash, and the cache keeps working."""
    import hashlib

    cache = tmp_path / "file_hashes.jsonl"
    target = tmp_path / "weights.bin"
    target.write_bytes(os.urandom(100_000))
    truth = hashlib.sha256(target.read_bytes()).hexdigest()
    cache.write_text('["/elsewhere", {"size": 1, "mtime_ns": 1, "sha256": "00"}]\n')
    room = cache.stat().st_size + 40  # the next line is longer: it is cut after 40 bytes
    script = tmp_path / "hash.py"
    script.write_text(HASH)

    rc, text = run([PYTHON, str(script), str(target)], tmp_path, fsize=room, MMCAL_HASH_CACHE=cache)
    assert rc == 0 and text.split() == [truth], text
    assert cache.stat().st_size == room and not cache.read_bytes().endswith(b"\n")  # the cut line

    for _ in range(2):  # without the limit: the cut line is skipped, the file hashed and cached, then read back
        rc, text = run([PYTHON, str(script), str(target)], tmp_path, MMCAL_HASH_CACHE=cache)
        assert rc == 0 and text.split() == [truth], text
    from mmcal.hashing import _Cache

    readback = _Cache(cache)
    readback.refresh()
    assert readback.entries[str(target.resolve())]["sha256"] == truth
    assert readback.entries["/elsewhere"]["sha256"] == "00"  # what was there before is kept
