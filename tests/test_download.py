"""The download rule (mmcal.hub.download): which sources a study reads, local mode, and its place in the DAG."""

from __future__ import annotations

import hashlib
import json
import re

import pytest

from conftest import run_snakemake, workflow_copy
from mmcal.errors import DataError
from mmcal.hub.download import download_all, is_local, sources


def _config(tmp_path, offline: bool) -> dict:
    (tmp_path / "local-model").mkdir()
    (tmp_path / "local-model" / "config.json").write_text('{"a": 1}\n')
    (tmp_path / "local-model" / "sub").mkdir()
    (tmp_path / "local-model" / "sub" / "w.bin").write_bytes(b"\x00\x01weights")
    (tmp_path / "local-model" / ".cache").mkdir()  # hidden: not content
    (tmp_path / "local-model" / ".cache" / "x").write_text("ignored")
    return {
        "offline": offline,
        "models": {
            "built": {"path": "data/models/tiny-llava-stage2", "build": "stage2"},
            "local": {"path": str(tmp_path / "local-model")},
            "hub": {"path": "owner/model", "revision": "0" * 40},
            "stage1": {
                "path": "data/models/llava-1.5-7b-stage1",
                "build": "llava_stage1",
                "sources": {"projector": {"path": "owner/projector", "revision": "abc"}},
            },
            "unused": {"path": "owner/unused"},
        },
        "datasets": {"d": {"builder": "hub_mcq", "hub": {"path": "owner/data", "name": "cfg", "split": "test"}}},
        "scenarios": {"image": {"image": True}, "desc": {"image": False, "description": "own"}},
        "prompts": {"default": {}},
        "describer": {"kind": "captioner", "model": "owner/captioner", "revision": "r1"},
        "runs": [
            {
                "models": ["built", "local", "hub", "stage1"],
                "datasets": ["d"],
                "scenarios": ["image"],
                "prompts": ["default"],
            }
        ],
    }


def test_sources_are_what_the_runs_read(tmp_path):
    cfg = _config(tmp_path, offline=True)
    got = {s["key"]: (s["type"], s["path"], s["revision"]) for s in sources(cfg)}
    assert got == {
        "models.local": ("model", str(tmp_path / "local-model"), None),
        "models.hub": ("model", "owner/model", "0" * 40),
        "models.stage1.sources.projector": ("model", "owner/projector", "abc"),
        "datasets.d": ("dataset", "owner/data", None),
    }
    cfg["runs"][0]["scenarios"].append("desc")  # a description scenario: the captioner is read too
    assert sources(cfg)[-2]["key"] == "describer" and sources(cfg)[-2]["path"] == "owner/captioner"


def test_hub_ids_and_local_paths():
    assert not is_local("lmsys/vicuna-7b-v1.5")
    assert is_local("data/models/llava-1.5-7b-stage1") and is_local("/abs/folder") and is_local("./x")


def test_local_mode_records_content_hashes(tmp_path):
    cfg = _config(tmp_path, offline=True)
    local = [s for s in sources(cfg) if s["key"] == "models.local"]
    out = tmp_path / "data/downloads/resolved.json"
    download_all(local, offline=True, out_path=out)
    rec = json.loads(out.read_text())["models.local"]
    # the folder hash, computed here independently: sorted relative paths with their files' sha256
    h = hashlib.sha256()
    for rel, data in (("config.json", b'{"a": 1}\n'), ("sub/w.bin", b"\x00\x01weights")):
        h.update(f"{rel}\0{hashlib.sha256(data).hexdigest()}\n".encode())
    assert rec["sha256"] == h.hexdigest()
    assert (rec["mode"], rec["commit"], rec["files"]) == ("local", None, ["config.json", "sub/w.bin"])


def test_offline_hub_source_missing_from_the_cache_is_named(tmp_path):
    src = {"key": "models.hub", "type": "model", "path": "mmcal-no-such-owner/no-such-model", "revision": None}
    with pytest.raises(
        DataError, match=r"models\.hub: mmcal-no-such-owner/no-such-model@main not found in the HF cache"
    ):
        download_all([src], offline=True, out_path=tmp_path / "resolved.json")
    assert not (tmp_path / "resolved.json").exists()


def test_paper_plan_downloads_then_assembles_stage1(tmp_path):
    """Planned without the network (run_snakemake sets the offline flags; planning reads no hub file)."""
    wd = workflow_copy(tmp_path)
    out = run_snakemake(wd, "-n", "--configfile", "config/paper.yaml").stdout
    jobs = re.findall(r"^(?:local)?rule (\w+):\n((?:    .*\n)+)", out, re.M)
    by_rule: dict[str, list[str]] = {}
    for rule, body in jobs:
        by_rule.setdefault(rule, []).append(body)
    assert len(by_rule["download"]) == 1 and "output: data/downloads/resolved.json" in by_rule["download"][0]
    assert len(by_rule["assemble_llava_stage1"]) == 1
    assert "input: data/downloads/resolved.json" in by_rule["assemble_llava_stage1"][0]
    assert "output: data/models/llava-1.5-7b-stage1" in by_rule["assemble_llava_stage1"][0]
    scores = {re.search(r"wildcards: model=([^,]+)", b).group(1): b for b in by_rule["score"]}
    assert "data/models/llava-1.5-7b-stage1" in scores["llava-1.5-7b-stage1"]
    for model in ("llava-1.5-7b", "vicuna-7b", "qwen2-vl-7b", "qwen2-7b", "smolvlm"):
        assert "data/downloads/resolved.json" in scores[model], model


def test_default_study_has_no_download(tmp_path):
    wd = workflow_copy(tmp_path)
    out = run_snakemake(wd, "-n", "--configfile", "config/test.yaml").stdout
    assert not re.search(r"^(?:local)?rule (download|assemble_llava_stage1):", out, re.M)
