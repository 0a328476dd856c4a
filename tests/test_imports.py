"""``mmcal import``: real harness logs (tests/fixtures/harness_logs, SOURCES.md there) become records
whose accuracy equals the harness's own; broken lines become rows with their reason."""

from __future__ import annotations

import json
import math
import re
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


# ---------------------------------------------------------------------------------------------
# lmms-eval: 0.6.1 (multiple choice), 0.7.3 (generation) on a LLaVA-class checkpoint

LMMS = LOGS / "lmms-eval"


@pytest.fixture(scope="module")
def seed_items(tmp_path_factory):
    """The items of the data set lmms-eval read (its parquet, SEED-Bench's schema), built by hub_mcq: the
    doc_id join of logs without doc."""
    from mmcal.data.registry import BuildContext, build_dataset

    out = tmp_path_factory.mktemp("seed-items")
    cfg = {
        "builder": "hub_mcq",
        "hub": {
            "path": "parquet",
            "data_files": str(LMMS / "data" / "seedbench" / "test-00000-of-00001.parquet"),
            "split": "train",
            "cache_dir": str(out / "hf"),
        },
        "columns": {"options": ["choice_a", "choice_b", "choice_c", "choice_d"], "id": "question_id"},
        "where": {"data_type": "image"},
        "splits": {"calib": 12, "test": 28},
    }
    build_dataset(
        "seedbench-fixture",
        cfg,
        out / "items.jsonl",
        out / "manifest.json",
        BuildContext(classes={}, fmnist_root="", seed=0),
    )
    return out / "items.jsonl"


def test_lmms_eval_multiple_choice_equals_the_harness(seed_items):
    [ppl] = import_logs("lmms-eval", [LMMS / "output-0.6.1"], "llava", task="mmcal_seedbench_ppl", items=seed_items)
    s = ppl.summary
    assert s["lines"] == s["lines_ok"] == 40 and s["output_type"] == "multiple_choice"
    assert "without doc" in s["layout"] and s["version"] == "not in the files"
    assert s["accuracy_check"][HARNESS_LOGLIK]["equal"]
    assert any("mean token NLL" in q for q in s["quirks"])
    assert any("most likely option: agrees on 40 of 40" in q for q in s["quirks"])
    lines = {line["doc_id"]: line for line in _lines(next((LMMS / "output-0.6.1").rglob("*_samples_*.jsonl")))}
    items = {it["metadata"]["row"]: it for it in map(json.loads, seed_items.read_text().splitlines())}
    for _, row in ppl.records.iterrows():
        doc_id = json.loads(row["meta"])["doc_id"]
        nll = [float(v[0]) for v in lines[doc_id]["filtered_resps"]]  # stringified [loss, is_greedy] pairs
        assert row["option_logits"] == pytest.approx([-v for v in nll], abs=0)
        assert row["pred"] == int(np.argmin(nll)) and row["gold"] == items[doc_id]["gold"]
        assert row["correct"] == (lines[doc_id]["acc"] == 1.0) and row["split"] == items[doc_id]["split"]


def test_lmms_eval_generation_joined_and_not(seed_items):
    out = LMMS / "output-0.7.3"
    [gen] = import_logs("lmms-eval", [out], "llava", task="mmcal_seedbench_gen", items=seed_items)
    s = gen.summary
    assert s["accuracy_check"][GENERATED]["equal"] and s["version"] == "unknown@unknown"
    assert any("branch@commit" in q for q in s["quirks"])
    # the verdict is seedbench's own {pred, answer}; the prediction its letter
    lines = {line["doc_id"]: line for line in _lines(next(out.rglob("*_samples_mmcal_seedbench_gen.jsonl")))}
    for _, row in gen.records.iterrows():
        line = lines[json.loads(row["meta"])["doc_id"]]
        assert row["pred"] == "ABCD".index(line["seed_all"]["pred"]) and row["generated"] == line["filtered_resps"]
    # without the data set: the gold from the target letter, the options counted in the prompt
    [sqa] = import_logs("lmms-eval", [out], "llava", task="mmcal_scienceqa_img")
    assert sqa.summary["accuracy_check"][GENERATED] == {"ours": 0.4, "harness": 0.4, "equal": True}
    assert list(sqa.records["n_options"]) == [2, 3, 4, 5, 2]


def test_lmms_eval_a_doc_id_outside_the_data_set_is_a_row_with_its_reason(seed_items, tmp_path):
    items = [json.loads(line) for line in seed_items.read_text().splitlines()]
    short = tmp_path / "items.jsonl"
    short.write_text("".join(json.dumps(it) + "\n" for it in items if it["metadata"]["row"] != 7))
    [ppl] = import_logs("lmms-eval", [LMMS / "output-0.6.1"], "llava", task="mmcal_seedbench_ppl", items=short)
    assert ppl.summary["lines_by_status"] == {"ok": 39, f"doc_id 7 is not among the items of {short}": 1}


# ---------------------------------------------------------------------------------------------
# VLMEvalKit (its own inference and exact-matching evaluation)

VLM = LOGS / "vlmevalkit" / "output"


def test_vlmevalkit_plain_and_circular_equal_the_judge():
    runs = _by_task(import_logs("vlmevalkit", [VLM], "llava"))
    plain = runs["tinyllava_mmcal_plain"].summary
    assert plain["accuracy_check"][GENERATED]["equal"] and plain["lines_ok"] == 20
    assert any("agrees with the judge's hit on 20 of 20" in q for q in plain["quirks"])
    circular = runs["tinyllava_mmcal_circular"]
    assert circular.summary["accuracy_check"]["circular"]["equal"]
    clusters = circular.records.groupby("cluster_id").size()
    assert len(clusters) == 10 and (clusters == 4).all()  # each question's four rotations: one cluster
    # the judge logs, per question, the rotation that failed and the letter it read there: ours reads the same
    from mmcal.imports.vlmevalkit import read_table

    pred = dict(zip(circular.records["item_id"], circular.records["pred"]))
    for row in read_table(VLM / "tinyllava_mmcal_circular_exact_matching_result.xlsx"):
        rolling, letter = re.search(r"Rolling (\d+): .* Pre-fetched is ([A-Z])", row["log"]).groups()
        assert pred[str(row["index"] + int(rolling) * 1_000_000)] == "ABCD".index(letter), row["log"]


def test_vlmevalkit_random_fallback_is_flagged(tmp_path):
    """VLMEvalKit's LLM judge replaces an answer it cannot match by a random option; under exact matching
    (the fixture) it never does, so one row of the real result file is given that judge's log here."""
    from mmcal.imports.vlmevalkit import RANDOM_FALLBACK, read_table

    pred = read_table(VLM / "tinyllava_mmcal_plain.xlsx")
    result = read_table(VLM / "tinyllava_mmcal_plain_exact_matching_result.xlsx")
    miss = next(i for i, r in enumerate(result) if r["hit"] == 0)
    result[miss] = {**result[miss], "hit": 1, "log": f"Match Log: {RANDOM_FALLBACK}. . "}
    for name, rows in (("tinyllava_mmcal_plain.tsv", pred), ("tinyllava_mmcal_plain_gpt-4o_result.tsv", result)):
        with (tmp_path / name).open("w") as fh:
            fh.write("\t".join(rows[0]) + "\n")
            fh.writelines("\t".join(str(v).replace("\n", " ") for v in r.values()) + "\n" for r in rows)
    [imp] = import_logs("vlmevalkit", [tmp_path], "llava")
    s = imp.summary
    assert any("replaced by a random option" in q and "1 of them were hits by chance" in q for q in s["quirks"])
    assert s["harness_reported"]["without_random_hits"] == pytest.approx(s["harness_reported"]["acc"] - 1 / 20)
    row = imp.records.iloc[miss]
    assert row["pred"] == -1 and not row["correct"] and json.loads(row["meta"])["random_fallback"]


@pytest.mark.parametrize("layout", ["output-0.2.3-derived", "output-0.2.4-derived"])
def test_old_lmms_eval_layouts_and_the_argmax_of_nll(layout, seed_items):
    """lmms-eval <= 0.2.4 predicted the argmax of the losses (issue #370): the real 0.6.1 losses in the
    old layouts (derive_old_layouts.py) give back 0.6.1's own accuracy, and the lines where the logged
    acc follows the bug are counted."""
    [fixed] = import_logs("lmms-eval", [LMMS / "output-0.6.1"], "llava", task="mmcal_seedbench_ppl", items=seed_items)
    items = seed_items if layout.startswith("output-0.2.4") else None  # 0.2.3 lines carry their options
    [old] = import_logs("lmms-eval", [LMMS / layout], "llava", task="mmcal_seedbench_ppl", items=items)
    s = old.summary
    assert s["lines_ok"] == 40 and ("0.2.3" in s["layout"]) == layout.startswith("output-0.2.3")
    ours = s["accuracy"][HARNESS_LOGLIK]
    assert ours == fixed.summary["harness_reported"]["acc"]  # the fixed harness's own number, on the same losses
    assert "acc" not in s["harness_reported"] and s["accuracy_check"] == {}  # the buggy number is not "acc"
    bug = next(q for q in s["quirks"] if "argmax of the NLL" in q)
    lines = (
        json.loads((LMMS / layout / "mmcal_seedbench_ppl.json").read_text())["logs"]
        if layout.startswith("output-0.2.3")
        else _lines(next((LMMS / layout).rglob("*_samples_*.jsonl")))
    )
    disagree = sum(row.correct != (line["acc"] == 1.0) for row, line in zip(old.records.itertuples(), lines))
    assert f"{disagree} of 40 lines disagree" in bug and disagree > 0
    assert s["harness_reported"]["acc_as_logged"] == pytest.approx(np.mean([line["acc"] for line in lines]))
