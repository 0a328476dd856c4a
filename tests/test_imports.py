"""``mmcal import``: real harness logs (tests/fixtures/harness_logs, SOURCES.md there) become records
whose accuracy equals the harness's own; broken lines become rows with their reason."""

from __future__ import annotations

import json
import math
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from mmcal.analysis.summary import summarize
from mmcal.imports import import_logs
from mmcal.records import GENERATED, HARNESS_LOGLIK, HARNESS_LOGLIK_NORM, read_records

LOGS = Path(__file__).parent / "fixtures" / "harness_logs"
LM_EVAL = LOGS / "lm-eval" / "output"


def _by_task(imported):
    return {i.log.task: i for i in imported}


def _lines(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


# ---------------------------------------------------------------------------------------------
# lm-evaluation-harness 0.4.13 on SmolLM2-135M-Instruct


def test_lm_eval_multiple_choice_equals_the_harness():
    imported = _by_task(import_logs("lm-eval", [LM_EVAL], "smollm2", id_field="id", cluster_field="cluster"))
    mc = imported["mmcal_textmcq"]
    s = mc.summary
    assert s["version"] == "0.4.13" and s["output_type"] == "multiple_choice"
    assert s["lines"] == s["lines_ok"] == 60
    # the harness's own acc and acc_norm (results_*.json), to the last bit
    assert s["harness_reported"] == {"acc": 0.55, "acc_norm": 0.38333333333333336}
    assert s["accuracy_check"][HARNESS_LOGLIK] == {"ours": 0.55, "harness": 0.55, "equal": True}
    assert s["accuracy_check"][HARNESS_LOGLIK_NORM]["equal"]
    assert any("strings" in q for q in s["quirks"]) and any("summed log-probability" in q for q in s["quirks"])
    # line by line: the logged per-option values are the option logits, the prediction the harness's
    lines = _lines(next(LM_EVAL.glob("*/samples_mmcal_textmcq_2*.jsonl")))
    rec = mc.records[mc.records["readout"] == HARNESS_LOGLIK].set_index("item_id")
    for line in lines:
        row = rec.loc[line["doc"]["id"]]
        logged = [float(r[0]) for r in line["filtered_resps"]]
        assert row["option_logits"] == pytest.approx(logged, abs=0)
        assert row["pred"] == int(np.argmax(logged)) and row["correct"] == (line["acc"] == 1.0)
        assert row["gold"] == line["doc"]["answer"] and row["cluster_id"] == line["doc"]["cluster"]
        assert row["confidence"] == pytest.approx(np.exp(logged).max() / np.exp(logged).sum())
    norm = mc.records[mc.records["readout"] == HARNESS_LOGLIK_NORM]
    assert norm["correct"].mean() == pytest.approx(np.mean([line["acc_norm"] for line in lines]), abs=0)


def test_lm_eval_generation_has_accuracy_and_says_what_is_missing():
    gen = _by_task(import_logs("lm-eval", [LM_EVAL], "smollm2", id_field="id"))["mmcal_textmcq_gen"]
    s = gen.summary
    assert s["accuracy_check"][GENERATED] == {"ours": 0.05, "harness": 0.05, "equal": True}
    assert "no confidence" in s["not_available"]["reason"]
    rows = gen.records
    assert (rows["readout"] == GENERATED).all() and rows["confidence"].isna().all()
    assert set(rows["generated"].head(2)) <= {"", " A"}  # the raw generations, kept
    table = summarize(rows, B=20, seed=0, split=None)
    row = table.iloc[0]
    assert row["accuracy"] == pytest.approx(0.05) and row["accuracy_lo"] <= 0.05 <= row["accuracy_hi"]
    assert math.isnan(row["ece_10"]) and math.isnan(row["conformal_lac_coverage"])
    assert "no confidence" in row["unavailable"]


def test_imported_records_run_through_the_summary():
    mc = _by_task(import_logs("lm-eval", [LM_EVAL], "smollm2", id_field="id"))["mmcal_textmcq"]
    table = summarize(mc.records, B=50, seed=0, split=None)
    row = table[table["readout"] == HARNESS_LOGLIK].iloc[0]
    assert row["n"] == 60 and row["accuracy"] == pytest.approx(0.55)
    for key in ("ece_10", "nll", "helm_ece_10", "conformal_lac_coverage", "conformal_aps_set_size"):
        assert np.isfinite(row[key]), key
    assert row["unavailable"] == ""


def test_a_damaged_line_is_a_row_with_its_reason(tmp_path):
    src = next(LM_EVAL.glob("*/samples_mmcal_textmcq_2*.jsonl"))
    lines = src.read_text().splitlines()
    broken = json.loads(lines[4])
    broken["filtered_resps"] = broken["filtered_resps"][:2] + [["not a number", "False"]] + broken["filtered_resps"][3:]
    lines[2] = lines[2][: len(lines[2]) // 2]  # a line cut in half
    lines[4] = json.dumps(broken)
    shutil.copy(src.with_name(next(src.parent.glob("results_*.json")).name), tmp_path)
    (tmp_path / src.name).write_text("\n".join(lines) + "\n")
    mc = import_logs("lm-eval", [tmp_path], "smollm2", task="mmcal_textmcq")[0]
    s = mc.summary
    assert s["lines"] == 60 and s["lines_ok"] == 58
    reasons = [k for k in s["lines_by_status"] if k != "ok"]
    assert any(r.startswith("unreadable line: not valid JSON") for r in reasons)
    assert any("'not a number' is not a number" in r for r in reasons)
    bad = mc.records[mc.records["status"] != "ok"]
    assert len(bad) == 4 and bad["confidence"].isna().all() and (bad["pred"] == -1).all()  # 2 lines x 2 readouts
    assert not s["accuracy_check"][HARNESS_LOGLIK]["equal"]  # the harness scored lines we could not read


def test_cli_import_json_and_records(tmp_path):
    out = subprocess.run(
        [sys.executable, "-m", "mmcal", "import", "lm-eval", str(LM_EVAL), "--name", "smollm2", "--id-field", "id"]
        + ["--task", "mmcal_textmcq", "--out", str(tmp_path), "--json"],
        capture_output=True,
        text=True,
        check=True,
    )
    [report] = json.loads(out.stdout)
    assert report["accuracy_check"][HARNESS_LOGLIK]["equal"] and report["records"].endswith("lm-eval.parquet")
    records = read_records(report["records"])
    assert set(records["readout"]) == {HARNESS_LOGLIK, HARNESS_LOGLIK_NORM} and len(records) == 120
    assert (records["model"] == "smollm2").all() and (records["scenario"] == "blind").all()


def test_unknown_harness_and_missing_logs_are_clear_errors(tmp_path):
    from mmcal.errors import DataError

    with pytest.raises(DataError, match="unknown harness"):
        import_logs("helm", [LM_EVAL], "m")
    with pytest.raises(DataError, match="does not exist"):
        import_logs("lm-eval", [tmp_path / "nowhere"], "m")
    with pytest.raises(DataError, match="no lm-eval sample logs"):
        import_logs("lm-eval", [tmp_path], "m")
    with pytest.raises(DataError, match="task 'absent' is not in the lm-eval logs"):
        import_logs("lm-eval", [LM_EVAL], "m", task="absent")
