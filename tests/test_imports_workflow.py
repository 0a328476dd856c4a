"""An import-only study through Snakemake: config/imports.yaml analyses the committed real harness logs
(no model is scored) to figures and tables; afterwards ``snakemake -n`` plans nothing and ``mmcal audit``
names the log files as sources.

One Snakemake run of 23 small jobs (~1-2 min on 2 cores): the acceptance test of ``imports:`` in the DAG,
kept apart from the shared test study so that the existing study's tests stay as they are."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys

import pandas as pd
import pytest

from conftest import ROOT, run_snakemake, workflow_copy

pytestmark = pytest.mark.e2e  # an import-only study through Snakemake (CI time): pytest -m e2e

CONFIG = ("--configfile", "config/imports.yaml")


@pytest.fixture(scope="module")
def imports_study(tmp_path_factory):
    wd = workflow_copy(tmp_path_factory.mktemp("imports-study"))
    shutil.copytree(ROOT / "tests" / "fixtures" / "harness_logs", wd / "tests" / "fixtures" / "harness_logs")
    run_snakemake(wd, "--cores", "2", *CONFIG)
    return wd


def test_every_import_is_analysed(imports_study):
    summary = pd.read_csv(imports_study / "data" / "metrics" / "summary.csv")
    models = set(summary["model"])
    assert models == {"smollm2-lm-eval", "smollm2-lm-eval-gen", "llava-lmms-ppl", "llava-lmms-gen", "llava-vlmevalkit"}
    loglik = summary[summary["readout"] == "harness_loglik"]
    assert set(loglik["model"]) == {"smollm2-lm-eval", "llava-lmms-ppl"}
    for key in ("ece_10", "helm_ece_10", "helm_acc_at_cov_10", "conformal_lac_coverage", "conformal_aps_set_size"):
        assert loglik[key].notna().all(), key
    generated = summary[summary["readout"] == "generated"]
    assert generated["accuracy"].notna().all() and generated["ece_10"].isna().all()
    assert generated["unavailable"].str.contains("no confidence").all()
    # each import's report: the accuracy on every line equals the harness's own
    for report in (imports_study / "data" / "imports").rglob("*.json"):
        checks = json.loads(report.read_text())["accuracy_check"]
        assert checks and all(c["equal"] for c in checks.values()), report


def test_figures_tables_and_recalibration(imports_study):
    figures = imports_study / "figures"
    for name in ("reliability_llava-lmms-ppl", "reliability_smollm2-lm-eval", "reported_metrics", "forest"):
        assert (figures / f"{name}.png").exists(), name
    tables = imports_study / "paper" / "tables"
    reported = (tables / "reported_metrics.tex").read_text()
    assert "llava-vlmevalkit" not in reported and "smollm2-lm-eval" in reported  # only runs with a confidence
    recal = pd.read_csv(imports_study / "data" / "metrics" / "recalibration.csv")
    assert {"llava-lmms-ppl", "smollm2-lm-eval"} <= set(recal["model"])
    comparisons = pd.read_csv(imports_study / "data" / "metrics" / "comparisons.csv")
    assert list(comparisons["metric"]) == ["accuracy"]  # one side has no confidence: accuracy only


def test_nothing_left_to_do_and_the_logs_are_sources(imports_study):
    dry = run_snakemake(imports_study, "-n", *CONFIG)
    assert "Nothing to be done" in dry.stdout + dry.stderr
    records = "data/records/llava-lmms-ppl/seedbench-fixture/image/lmms-eval.parquet"
    out = subprocess.run(
        [sys.executable, "-m", "mmcal", "audit", records], cwd=imports_study, capture_output=True, text=True, check=True
    ).stdout
    assert "<- rule import_logs" in out
    assert "source: folder tests/fixtures/harness_logs/lmms-eval/output-0.6.1 sha256" in out
    assert "data/datasets/seedbench-fixture/items.jsonl  <- rule build_dataset" in out
    tree = json.loads(
        subprocess.run(
            [sys.executable, "-m", "mmcal", "audit", records, "--json"],
            cwd=imports_study,
            capture_output=True,
            text=True,
            check=True,
        ).stdout
    )
    assert [s["path"] for s in tree["sources"]] == ["tests/fixtures/harness_logs/lmms-eval/output-0.6.1"]
