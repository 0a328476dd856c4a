"""Provenance records (mmcal.provenance), content hashes (mmcal.hashing), the API-key rule."""

from __future__ import annotations

import ast
import hashlib
import json
import logging
import os
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest
from snakemake.iocontainers import InputFiles, Log, OutputFiles, Params, ResourceList, Wildcards
from snakemake.script import Snakemake

from mmcal import hashing, provenance
from mmcal.errors import ConfigError
from mmcal.records import read_records, write_records

ROOT = Path(__file__).resolve().parents[1]
SCRIPTS = ROOT / "workflow" / "scripts"


@pytest.fixture(autouse=True)
def _own_hash_cache(tmp_path, monkeypatch):
    monkeypatch.setenv("MMCAL_HASH_CACHE", str(tmp_path / "hash-cache.jsonl"))


def test_file_and_tree_hashes_and_the_stat_cache(tmp_path):
    a = tmp_path / "tree" / "a.bin"
    b = tmp_path / "tree" / "sub" / "b.txt"
    b.parent.mkdir(parents=True)
    a.write_bytes(b"\x00\x01abc")
    b.write_text("hello")
    ha, hb = hashlib.sha256(b"\x00\x01abc").hexdigest(), hashlib.sha256(b"hello").hexdigest()
    assert hashing.file_sha256(a) == ha
    tree = hashlib.sha256(f"a.bin\0{ha}\nsub/b.txt\0{hb}\n".encode()).hexdigest()
    assert hashing.tree_sha256(tmp_path / "tree") == tree
    (tmp_path / "tree" / ".snakemake_timestamp").touch()  # Snakemake's marker is not content
    assert hashing.tree_sha256(tmp_path / "tree") == tree
    lines = Path(os.environ["MMCAL_HASH_CACHE"]).read_text().splitlines()
    cache = dict(json.loads(line) for line in lines)
    assert cache[str(a.resolve())] == {"size": a.stat().st_size, "mtime_ns": a.stat().st_mtime_ns, "sha256": ha}

    # Same size and mtime: the cached hash is trusted (no re-read) ...
    st = b.stat()
    b.write_text("HELLO")
    os.utime(b, ns=(st.st_atime_ns, st.st_mtime_ns))
    assert hashing.file_sha256(b) == hb
    # ... a new mtime re-hashes.
    os.utime(b, ns=(st.st_atime_ns, st.st_mtime_ns + 1000))
    assert hashing.file_sha256(b) == hashlib.sha256(b"HELLO").hexdigest()


def test_every_workflow_script_starts_and_finishes():
    """finish(snakemake) is each script's last statement: the record is written only after the work."""
    scripts = sorted(p for p in SCRIPTS.glob("*.py") if p.name != "_setup.py")
    assert len(scripts) >= 15
    for path in scripts:
        body = ast.parse(path.read_text()).body
        last = body[-1]
        assert isinstance(last, ast.Expr) and isinstance(last.value, ast.Call), path.name
        assert last.value.func.id == "finish" and last.value.args[0].id == "snakemake", path.name
        calls = [
            n.func.id
            for n in ast.walk(ast.Module(body=body[:-1]))
            if isinstance(n, ast.Call) and isinstance(n.func, ast.Name)
        ]
        assert "start" in calls, path.name


def test_every_rule_runs_a_script():
    """Rules with shell:/run: would write no record: none exist (rule all has no job)."""
    for smk in (ROOT / "workflow" / "rules").glob("*.smk"):
        text = smk.read_text()
        assert "\n    shell:" not in text and "\n    run:" not in text, smk.name
        assert text.count("\nrule ") == text.count("\n    script:"), smk.name


def _job(tmp_path, out: Path, inp: Path, params: dict) -> Snakemake:
    inputs = InputFiles([str(inp)])
    inputs._set_name("item_file", 0)
    outputs = OutputFiles([str(out)])
    p = Params(fromdict=params)
    return Snakemake(
        inputs, outputs, p, Wildcards(fromdict={"model": "m"}), 1, ResourceList(), Log([]), {}, "score", 0, str(SCRIPTS)
    )


def _records_frame() -> pd.DataFrame:
    return pd.DataFrame(
        {
            "model": ["m", "m"],
            "dataset": ["d", "d"],
            "scenario": ["image", "image"],
            "prompt": ["default", "default"],
            "item_id": ["a", "b"],
            "readout": ["option_loglik", "option_loglik"],
            "confidence": [0.25, 0.75],
        }
    )


def test_job_record_and_parquet_metadata(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    source = tmp_path / "raw"
    source.mkdir()
    (source / "f.gz").write_bytes(b"raw bytes")
    inp = Path("data/items.jsonl")
    inp.parent.mkdir()
    inp.write_text('{"item_id": "a"}\n')
    out = Path("data/records/m.parquet")
    frame = _records_frame()
    write_records(frame, out)
    params = {"cfg": {"seed": 3, "root": str(source), "model_cfg": {"path": "org/model", "revision": "abc123"}}}
    sm = _job(tmp_path, out, inp, params)
    started = 1_700_000_000.0
    provenance.write_job(sm, started, script=SCRIPTS / "score.py")

    rec = provenance.read_record(out)
    assert rec["rule"] == "score" and rec["output"] == str(out)
    assert rec["sha256"] == hashlib.sha256(out.read_bytes()).hexdigest()
    assert rec["inputs"] == [{"path": str(inp), "sha256": hashlib.sha256(inp.read_bytes()).hexdigest()}]
    assert rec["params"] == params and rec["seeds"] == {"cfg.seed": 3}
    tree = hashlib.sha256(f"f.gz\0{hashlib.sha256(b'raw bytes').hexdigest()}\n".encode()).hexdigest()
    assert {"kind": "folder", "path": str(source), "sha256": tree} in rec["sources"]
    assert {"kind": "hub", "repo": "org/model", "revision": "abc123"} in rec["sources"]
    assert rec["started"] == "2023-11-14T22:13:20+00:00"
    assert set(rec["code"]["scripts"]) == {"_setup.py", "score.py"}
    assert "mmcal/provenance.py" in rec["code"]["modules"]
    env = rec["environment"]
    assert env["python"].count(".") == 2 and env["versions"]["pandas"] == pd.__version__
    assert env["packages_sha256"] == hashlib.sha256(json.dumps(env["packages"], sort_keys=True).encode()).hexdigest()
    assert env["cpu"]["n_flags"] > 0 and len(env["cpu"]["flags_sha256"]) == 64

    # The records file carries the record without run-specific fields; its rows are unchanged.
    embedded = provenance.parquet_record(out)
    assert embedded["params"] == params and embedded["inputs"] == rec["inputs"]
    assert not set(provenance.RUN_FIELDS) & set(embedded) and "sha256" not in embedded
    pd.testing.assert_frame_equal(read_records(out), frame)
    # Rewriting the same job gives the same file bytes (no times in the metadata).
    before = out.read_bytes()
    write_records(frame, out)
    provenance.write_job(sm, started + 60, script=SCRIPTS / "score.py")
    assert out.read_bytes() == before


def test_api_key_only_from_the_environment(tmp_path, monkeypatch, caplog):
    from mmcal.audit.export import export_crate
    from mmcal.promptopt.openai_paraphraser import OpenAIParaphraser, check_no_key

    secret = "sk-never-recorded-8c1f2a"
    with pytest.raises(ConfigError, match="OPENAI_API_KEY"):
        check_no_key({"kind": "openai", "model": "gpt-4o-mini", "api_key": secret})
    with pytest.raises(ConfigError, match="MY_KEY"):
        OpenAIParaphraser(model="x", api_key=secret, api_key_env="MY_KEY")

    monkeypatch.setenv("OPENAI_API_KEY", secret)
    monkeypatch.chdir(tmp_path)
    para = OpenAIParaphraser(model="gpt-4o-mini")
    assert para._api_key_value() == secret and secret not in repr(para)
    inp = Path("data/items.jsonl")
    inp.parent.mkdir()
    inp.write_text("{}\n")
    out = Path("data/promptopt/best.parquet")
    write_records(_records_frame(), out)
    cfg = {"paraphraser": {"kind": "openai", "model": "gpt-4o-mini"}, "seed": 0}
    with caplog.at_level(logging.DEBUG):
        provenance.write_job(_job(tmp_path, out, inp, {"cfg": cfg}), 0.0)
    export_crate(tmp_path / "crate", tmp_path)
    written = [p for p in tmp_path.rglob("*") if p.is_file()]
    assert any(p.suffix == ".parquet" for p in written) and (tmp_path / "crate/ro-crate-metadata.json") in written
    for p in written:
        assert secret.encode() not in p.read_bytes(), p
    assert secret not in caplog.text


def test_jobs_of_a_workflow_copy_run_and_record_its_own_src(tmp_path):
    """A checkout's jobs import that checkout's mmcal, even where the venv's mmcal is another checkout's
    (Snakemake's preamble appends its search path, this src among it, after the installed package)."""
    from conftest import SNAKEMAKE, workflow_copy

    wd = workflow_copy(tmp_path)
    edited = wd / "src" / "mmcal" / "errors.py"
    edited.write_text(edited.read_text() + "# this copy's edit\n")
    (wd / "Probe.smk").write_text(
        'include: "Snakefile"\n\n\nrule probe_import:\n    output:\n        "probe.json",\n'
        '    script:\n        "probe.py"\n'
    )
    (wd / "probe.py").write_text(
        "import json, sys\n"
        "sys.path.insert(0, snakemake.scriptdir + '/workflow/scripts')\n"
        "import _setup\n"
        "import mmcal.errors\n"
        "json.dump({'file': mmcal.errors.__file__}, open(snakemake.output[0], 'w'))\n"
    )
    env = {**os.environ, "PYTHONPATH": str(ROOT / "src")}  # the other checkout, first on the job's path
    cmd = [SNAKEMAKE, "-s", "Probe.smk", "probe.json", "--cores", "1", "--configfile", "config/test.yaml"]
    done = subprocess.run(cmd, cwd=wd, env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    assert json.loads((wd / "probe.json").read_text())["file"] == str(edited)
    assert sys.modules["mmcal.errors"].__file__ != str(edited)


def test_a_cache_folder_in_the_params_is_not_a_source(tmp_path, monkeypatch):
    """A `datasets` cache that later jobs fill is not what the job read: recording it as a source made
    `--verify` flag the build as changed (seen on the replica study)."""
    monkeypatch.chdir(tmp_path)
    # an earlier test in this process may have imported the SmolLM2 converter, which adds its GGUF
    monkeypatch.delitem(sys.modules, "mmcal.tinyllava.smollm2", raising=False)
    (tmp_path / "release").mkdir()
    (tmp_path / "release" / "data.json").write_text("[]")
    (tmp_path / "cache" / "datasets").mkdir(parents=True)
    params = {"cfg": {"hub": {"path": "release/data.json", "cache_dir": "cache/datasets"}}}
    sources = provenance.raw_sources(params, set())
    assert [s["path"] for s in sources] == ["release/data.json"]
