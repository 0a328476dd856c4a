"""The README's quick start as a new user runs it: config/examples/quickstart.yaml, with a local replica folder
standing in for the hub model and the ScienceQA fixture (the hub data set's layout and schema) for the hub data
set, through Snakemake to figures and tables; it trains nothing and searches no prompts."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest
import yaml

from conftest import ROOT, run_snakemake, workflow_copy

REPLICAS = ROOT / "tests" / "replicas"


@pytest.fixture(scope="module")
def replica() -> Path:
    import build  # tests/replicas (on sys.path: tests/conftest.py)

    try:
        return build.build("llava-1.5")
    except build.ReplicaMissing as exc:
        pytest.skip(f"replica sources not fetched: {exc}")


@pytest.mark.e2e
def test_the_quick_start_runs_to_figures_and_tables_and_trains_nothing(tmp_path, replica):
    (tmp_path / "wd").mkdir()
    wd = workflow_copy(tmp_path / "wd")
    (wd / "my-study.yaml").write_text((ROOT / "config/examples/quickstart.yaml").read_text())
    # what stands in for the hub, as an overlay (no base): the model and data set from local folders
    stand_ins = {
        "offline": True,
        "device": "cpu",
        "models": {"mine": {"path": str(replica), "revision": None}},
        "datasets": {
            "scienceqa": {
                "hub": {"path": str(ROOT / "tests/fixtures/scienceqa"), "cache_dir": str(tmp_path / "hf-datasets")},
                "splits": {"calib": 2, "test": 3},  # the fixture has 5 image rows
            }
        },
        "metrics": {"bootstrap": 50, "comparison_bootstrap": 100},
        "recalibration": {"n_seeds": 2},
    }
    (wd / "stand-ins.yaml").write_text(yaml.safe_dump(stand_ins))
    check = subprocess.run(
        [sys.executable, "-m", "mmcal", "config", "check", "my-study.yaml", "stand-ins.yaml"],
        cwd=wd, capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert check.returncode == 0 and "ok (" in check.stdout, check.stdout + check.stderr
    proc = run_snakemake(wd, "--cores", "2", "--configfile", "my-study.yaml", "stand-ins.yaml", timeout=1800)
    log = proc.stdout + proc.stderr
    rules = set(re.findall(r"^(?:local)?rule (\w+):", log, re.M))
    assert not {r for r in rules if r.startswith(("train_", "convert_"))} and "prompt_search" not in rules, rules
    expected = {"download", "build_dataset", "score", "summarize", "recalibrate", "figure", "tables", "paper"}
    assert expected <= rules, rules
    for path in ("paper/tables/main_results.tex", "paper/main.tex", "figures/reliability_mine.pdf"):
        assert (wd / path).is_file(), path
    assert sorted(p.name for p in (wd / "data/records/mine/scienceqa").iterdir()) == ["blind", "image"]
    recalibrated = pd.read_csv(wd / "data/metrics/recalibration.csv")  # the image run, fitted on its calib rows
    assert set(recalibrated["scenario"]) == {"image"} and "temperature" in set(recalibrated["recalibrator"])
    assert "Nothing to be done" in run_snakemake(wd, "-n", "--configfile", "my-study.yaml", "stand-ins.yaml").stdout
