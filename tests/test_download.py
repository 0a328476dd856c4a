"""The download rule (mmcal.hub.download): which sources a study reads, local mode, and its place in the DAG."""

from __future__ import annotations

import hashlib
import json
import os
import re
import shutil
from pathlib import Path

import pytest
import yaml

from conftest import run_snakemake, workflow_copy
from mmcal.data.registry import release_inputs
from mmcal.errors import ConfigError, DataError
from mmcal.hub.download import download_all, download_release, is_local, sources

FIXTURES = Path(__file__).resolve().parent / "fixtures"


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
    # the IDK release: snapshot by download_release into the folder that the build job takes as input
    assert len(by_rule["download_release"]) == 1
    assert "output: data/downloads/news-idk, data/downloads/news-idk.resolved.json" in by_rule["download_release"][0]
    builds = {re.search(r"wildcards: dataset=(\S+)", b).group(1): b for b in by_rule["build_dataset"]}
    assert "input: data/downloads/news-idk, data/downloads/news-idk.resolved.json" in builds["news-idk"]
    for model in ("llava-1.5-7b", "vicuna-7b", "qwen2-vl-7b", "qwen2-7b", "smolvlm"):
        assert "data/downloads/resolved.json" in scores[model], model


def test_default_study_has_no_download(tmp_path):
    wd = workflow_copy(tmp_path)
    out = run_snakemake(wd, "-n", "--configfile", "config/test.yaml").stdout
    assert not re.search(r"^(?:local)?rule (download|assemble_llava_stage1):", out, re.M)


def _release_folder(tmp_path: Path) -> Path:
    """A local IDK release: the llava_json fixture and its images, as the release would lay them out."""
    folder = tmp_path / "July24-NewsVQA"
    shutil.copytree(FIXTURES / "idk", folder)
    return folder


def _expected_tree_hash(folder: Path) -> str:
    h = hashlib.sha256()
    for f in sorted(p for p in folder.rglob("*") if p.is_file()):
        h.update(f"{f.relative_to(folder).as_posix()}\0{hashlib.sha256(f.read_bytes()).hexdigest()}\n".encode())
    return h.hexdigest()


def test_local_release_is_hashed_not_copied(tmp_path):
    folder = _release_folder(tmp_path)
    record = tmp_path / "data/downloads/news-idk.resolved.json"
    rec = download_release("news-idk", {"path": str(folder)}, offline=False, out_dir=None, record_path=record)
    assert json.loads(record.read_text()) == rec
    assert (rec["key"], rec["mode"], rec["folder"], rec["commit"]) == (
        "datasets.news-idk.release",
        "local",
        str(folder),
        None,
    )
    assert rec["sha256"] == _expected_tree_hash(folder)
    assert "llava_idk.json" in rec["files"] and not (tmp_path / "data/downloads/news-idk").exists()


def _fake_hub_cache(cache: Path, repo: str, commit: str, files: dict[str, bytes]) -> None:
    """The HF hub cache layout (blobs, refs/main, snapshots/<commit> of symlinks) for a dataset repo."""
    root = cache / f"datasets--{repo.replace('/', '--')}"
    (root / "refs").mkdir(parents=True)
    (root / "refs" / "main").write_text(commit)
    for rel, data in files.items():
        blob = root / "blobs" / hashlib.sha256(data).hexdigest()
        blob.parent.mkdir(parents=True, exist_ok=True)
        blob.write_bytes(data)
        link = root / "snapshots" / commit / rel
        link.parent.mkdir(parents=True, exist_ok=True)
        link.symlink_to(os.path.relpath(blob, link.parent))


def test_offline_hub_release_from_the_cache(tmp_path, monkeypatch):
    from huggingface_hub import constants

    commit = "1234567890abcdef1234567890abcdef12345678"
    files = {"questions.json": b"[]\n", "images/a.png": b"\x89PNG fake"}
    _fake_hub_cache(tmp_path / "hub", "owner/release", commit, files)
    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(tmp_path / "hub"))
    out = tmp_path / "data/downloads/news-idk"
    release = {"repo": "owner/release", "revision": commit, "repo_type": "dataset"}
    rec = download_release("news-idk", release, offline=True, out_dir=out, record_path=str(out) + ".resolved.json")
    assert {p.relative_to(out).as_posix(): p.read_bytes() for p in out.rglob("*") if p.is_file()} == files
    assert not any(p.is_symlink() for p in out.rglob("*"))  # real files (hard links), not links into the cache
    assert (rec["commit"], rec["path"], rec["files"]) == (commit, "owner/release", ["images/a.png", "questions.json"])
    assert rec["sha256"] == _expected_tree_hash(out)


def test_offline_hub_release_missing_from_the_cache_names_the_data_set(tmp_path, monkeypatch):
    from huggingface_hub import constants

    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(tmp_path / "empty-cache"))
    release = {"repo": "mmcal-no-such-owner/no-such-release", "revision": "main", "repo_type": "dataset"}
    with pytest.raises(
        DataError,
        match=r"datasets\.news-idk\.release: mmcal-no-such-owner/no-such-release@main not found in the HF cache",
    ):
        download_release("news-idk", release, True, tmp_path / "out", tmp_path / "out.resolved.json")
    assert not (tmp_path / "out.resolved.json").exists()


def test_release_needs_exactly_one_of_repo_and_path():
    with pytest.raises(ConfigError, match="data set 'x': release needs exactly one of 'repo'"):
        release_inputs("x", {"builder": "llava_json", "release": {"repo": "a/b", "path": "c"}})
    assert release_inputs("x", {"builder": "llava_json", "release": {"repo": "a/b"}, "path": "q.json"}) == {
        "release": "data/downloads/x",
        "release_record": "data/downloads/x.resolved.json",
    }


@pytest.mark.e2e  # a Snakemake run (CI time): pytest -m e2e
def test_local_release_builds_through_the_dag(tmp_path):
    """The paper config with news-idk's release as a local folder (what the replica study does): the
    folder is the build job's input, hashed by hash_release, and the set is built from it for real."""
    wd = tmp_path / "wd"
    wd.mkdir()
    workflow_copy(wd)
    folder = _release_folder(tmp_path)
    cfg = yaml.safe_load((wd / "config/paper.yaml").read_text())
    cfg["offline"] = True
    # the fixture's answer turns are letters and option texts ("(C)", "B. Three"): read them with the default rule
    cfg["datasets"]["news-idk"].update(release={"path": str(folder)}, path="llava_idk.json", answer="auto")
    del cfg["datasets"]["news-idk"]["image_root"]  # default: the file's folder, which holds images/
    (wd / "config/local-release.yaml").write_text(yaml.safe_dump(cfg))
    target = "data/datasets/news-idk/items.jsonl"
    plan = run_snakemake(wd, target, "-n", "--configfile", "config/local-release.yaml").stdout
    jobs = dict(re.findall(r"^(?:local)?rule (\w+):\n((?:    .*\n)+)", plan, re.M))
    assert set(jobs) == {"hash_release", "build_dataset"}, plan
    assert f"input: {folder}\n" in jobs["hash_release"]
    assert f"input: {folder}, data/downloads/news-idk.resolved.json\n" in jobs["build_dataset"]
    run_snakemake(wd, target, "--cores", "1", "--configfile", "config/local-release.yaml")
    rec = json.loads((wd / "data/downloads/news-idk.resolved.json").read_text())
    assert rec["sha256"] == _expected_tree_hash(folder)
    n_records = len(json.loads((folder / "llava_idk.json").read_text()))
    assert json.loads((wd / "data/datasets/news-idk/manifest.json").read_text())["n_items"] == n_records


def test_a_wrong_release_path_is_named(tmp_path):
    """A local release folder that is not there, and a release without the data set's ``path``: each fails naming
    the key, before any record is written (the second listing what the release holds)."""
    record = tmp_path / "news-idk.resolved.json"
    with pytest.raises(DataError, match=r"datasets\.news-idk\.release: local folder .*/nowhere does not exist"):
        download_release("news-idk", {"path": str(tmp_path / "nowhere")}, False, None, record)
    release = tmp_path / "release"
    release.mkdir()
    (release / "test.json").write_text(json.dumps([{"image": "a.png", "conversations": []}]))
    with pytest.raises(DataError) as err:
        download_release("news-idk", {"path": str(release)}, False, None, record, layout={"path": "questions.json"})
    assert "datasets.news-idk.path: 'questions.json' is no file of the release" in str(err.value)
    assert "test.json: a list of 1 records" in str(err.value)
    assert not record.exists()
