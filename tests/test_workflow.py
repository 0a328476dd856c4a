"""The DAG end to end on config/test.yaml through real Snakemake, plus planning checks."""

from __future__ import annotations

import json
import re
import zipfile
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import yaml

from conftest import run_snakemake as _run
from conftest import workflow_copy as _workdir
from mmcal import provenance
from mmcal.hashing import path_sha256

ROOT = Path(__file__).resolve().parents[1]


def _independent_ece10(conf, correct):
    """A plain-loop ECE with the reference study's equal-width bins (i/10, (i+1)/10]."""
    total = 0.0
    for b in range(10):
        lo, hi = b / 10, (b + 1) / 10
        idx = [i for i, c in enumerate(conf) if (lo < c <= hi) or (b == 0 and c == 0)]
        if idx:
            acc = sum(correct[i] for i in idx) / len(idx)
            avg = sum(conf[i] for i in idx) / len(idx)
            total += len(idx) / len(conf) * abs(acc - avg)
    return total


def test_study_outputs_and_provenance(study):
    summary = pd.read_csv(study / "data/metrics/summary.csv")
    for col in ("accuracy", "accuracy_lo", "accuracy_hi", "ece_10", "ece_10_lo", "smece", "n", "n_unscorable"):
        assert col in summary.columns
    assert (study / "data/metrics/comparisons.csv").exists()
    assert (study / "paper/main.tex").exists()
    assert list((study / "paper/tables").glob("*.tex"))
    assert list((study / "figures").glob("*.pdf")) and list((study / "figures").glob("*.png"))
    # The same numbers recomputed from the records with an independent implementation.
    rec = pd.read_parquet(study / "data/records/tiny-llava-stage2/fmnist/image/default.parquet")
    for readout in ("letter_restricted", "option_loglik"):
        rows = rec[(rec.readout == readout) & (rec.split == "test") & (rec.status == "ok")]
        row = summary[
            (summary.model == "tiny-llava-stage2")
            & (summary.dataset == "fmnist")
            & (summary.scenario == "image")
            & (summary.prompt == "default")
            & (summary.readout == readout)
        ].iloc[0]
        conf, correct = rows.confidence.tolist(), rows.correct.tolist()
        assert abs(_independent_ece10(conf, correct) - row.ece_10) < 1e-9
        assert abs(np.mean(correct) - row.accuracy) < 1e-9
    # ...and their provenance: summary.csv's record names the job and every records file it read, each with the
    # SHA-256 that file has now; the records file's own record (in its Parquet metadata) names the model it scored
    # with the model folder's hash, and the study's raw source.
    summary_rec = provenance.read_record("data/metrics/summary.csv", study)
    assert summary_rec["rule"] == "summarize"
    assert summary_rec["sha256"] == path_sha256(study / "data/metrics/summary.csv")
    inputs = {i["path"]: i["sha256"] for i in summary_rec["inputs"]}
    records = "data/records/tiny-llava-stage2/fmnist/image/default.parquet"
    assert records in inputs and len([p for p in inputs if p.startswith("data/records/")]) >= 4
    for path, sha in inputs.items():
        assert sha == path_sha256(study / path), path
    score_rec = provenance.parquet_record(study / records)
    assert score_rec["rule"] == "score" and score_rec["wildcards"]["model"] == "tiny-llava-stage2"
    model = {i["path"]: i["sha256"] for i in score_rec["inputs"]}["data/models/tiny-llava-stage2"]
    assert model == path_sha256(study / "data/models/tiny-llava-stage2")


def test_reference_protocol_beside_ours(study):
    """The reference protocol's run, its no-letter table (both policies), comparison and LaTeX table."""
    rec = pd.read_parquet(study / "data/records/tiny-llava-stage2/fmnist/image/reference.parquet")
    assert set(rec.readout) == {"letter_greedy"} and rec["generated"].notna().all()
    no_letter = pd.read_csv(study / "data/metrics/no_letter.csv")
    assert no_letter["no_letter_policy"].tolist() == ["keep", "drop"]
    keep, drop = no_letter.iloc[0], no_letter.iloc[1]
    assert keep["n"] == len(rec) and drop["n"] == len(rec) - keep["n_no_letter"]
    comparisons = pd.read_csv(study / "data/metrics/comparisons.csv")
    assert (comparisons["comparison"] == "ours vs reference protocol").any()
    protocol = (study / "paper/tables/protocol.tex").read_text()
    assert "Paired over" in protocol
    assert "ours vs reference protocol" not in (study / "paper/tables/comparisons.tex").read_text()
    assert r"\input{tables/protocol.tex}" in (study / "paper/main.tex").read_text()


def test_figures_are_captioned_in_their_sections(study):
    tex = (study / "paper/main.tex").read_text()
    idk = tex.split(r"\section{IDK}")[1].split(r"\section{")[0]
    assert r"\includegraphics{../figures/idk_tradeoff.pdf}" in idk and r"\FloatBarrier" in idk
    assert r"\caption{IDK trade-off on idk (letter\_restricted readout)" in idk
    assert r"\caption{visual finetuning}" not in tex  # no more file names as captions
    assert tex.count(r"\caption{") == len(list((study / "figures").glob("*.pdf")))


def test_report_has_a_caption_per_figure_and_the_tables(study):
    _run(study, "--report", "report.zip", "--configfile", "config/test.yaml")
    with zipfile.ZipFile(study / "report.zip") as z:
        html = z.read("report/report.html").decode()
    assert "Reliability of tiny-llava-stage2 (dataset fmnist, scenario image" in html
    assert "IDK trade-off on idk" in html and "LaTeX table" in html and "Accuracy and calibration" in html


def test_jobs_that_do_not_use_torch_never_load_it(study):
    """_setup passes the thread count through OMP_NUM_THREADS, so a figure or table job skips torch's import
    (~1.5 s a job): its provenance records no torch numerics, while a score job records its threads."""
    for path in ("provenance/figures/text_vs_image.pdf.json", "provenance/paper/tables.json"):
        assert json.loads((study / path).read_text())["environment"]["numerics"] is None, path
    score = study / "provenance/data/records/tiny-llava-stage2/fmnist/image/default.parquet.json"
    numerics = json.loads(score.read_text())["environment"]["numerics"]
    assert numerics["torch_threads"] == 1 and numerics["env"]["OMP_NUM_THREADS"] == "1"


def test_nothing_to_do_after_a_complete_run(study):
    out = _run(study, "-n", "--configfile", "config/test.yaml").stdout
    assert "Nothing to be done" in out


def test_figure_option_change_reruns_only_figure_rules(study):
    cfg = yaml.safe_load((study / "config/test.yaml").read_text())
    cfg.setdefault("figures", {})["dpi"] = 120
    (study / "config/test-fig.yaml").write_text(yaml.safe_dump(cfg, sort_keys=False))
    out = _run(study, "-n", "--configfile", "config/test-fig.yaml").stdout
    rules = set(re.findall(r"^(?:local)?rule (\w+):", out, re.M))
    assert "figure" in rules and rules <= {"figure", "paper", "all"}, rules


def test_a_new_condition_is_a_config_change(study):
    cfg = yaml.safe_load((study / "config/test.yaml").read_text())
    cfg["scenarios"] = {"image-shift5": {"image": True, "option_shift": 5}}
    cfg["runs"] = yaml.safe_load((study / "config/config.yaml").read_text())["runs"] + [
        {
            "models": ["tiny-llava-stage1"],
            "datasets": ["fmnist"],
            "scenarios": ["image-shift5"],
            "prompts": ["default"],
            "splits": ["test"],
        }
    ]
    (study / "config/test-new.yaml").write_text(yaml.safe_dump(cfg, sort_keys=False))
    out = _run(study, "-n", "--configfile", "config/test-new.yaml").stdout
    assert "data/records/tiny-llava-stage1/fmnist/image-shift5/default.parquet" in out


def test_paper_config_plans_offline(tmp_path):
    wd = _workdir(tmp_path)
    out = _run(wd, "-n", "--configfile", "config/paper.yaml").stdout
    rules = set(re.findall(r"^(?:local)?rule (\w+):", out, re.M))
    assert {"score", "build_dataset", "summarize", "compare"} <= rules, rules
    # hub models and the IDK release are downloaded, the stage-1 LLaVA assembled, all by the DAG
    assert {"download", "download_release", "assemble_llava_stage1"} <= rules, rules


def test_config_with_a_wrong_type_is_named(tmp_path):
    wd = _workdir(tmp_path)
    (wd / "config/bad.yaml").write_text("threads: two\n")
    proc = _run(wd, "-n", "--configfile", "config/bad.yaml", check=False)
    assert proc.returncode != 0
    text = proc.stdout + proc.stderr
    assert "threads" in text and "two" in text and "Traceback" not in text


def test_missing_fashion_mnist_is_named(tmp_path):
    from mmcal.data.fashion_mnist import load_fashion_mnist
    from mmcal.errors import DataError

    with pytest.raises(DataError, match="dataset-fashion-mnist.*fmnist_root|fmnist_root"):
        load_fashion_mnist(tmp_path, "test")
    # Through the DAG: the rule's log holds that message alone, no traceback.
    (tmp_path / "wd").mkdir()
    wd = _workdir(tmp_path / "wd")
    (wd / "config/nofmnist.yaml").write_text(f"fmnist_root: {tmp_path / 'missing'}\n")
    proc = _run(
        wd,
        "--cores",
        "1",
        "data/datasets/fmnist/items.jsonl",
        "--configfile",
        "config/test.yaml",
        "config/nofmnist.yaml",
        check=False,
    )
    assert proc.returncode != 0
    log = (wd / "logs/datasets/fmnist.log").read_text()
    assert "mmcal error in rule build_dataset" in log and "dataset-fashion-mnist" in log, log
    assert "Traceback" not in log
