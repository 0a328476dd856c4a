"""Down to a number: every cell of every paper table of the test study recomputes from its records."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest

from mmcal.audit.cells import audit_cell, audit_one, find_cell, load_cell_map
from mmcal.paper.build import cell_map
from mmcal.paper.tables import main_results_table
from mmcal.records import write_records

RECORDS = "data/records/tiny-llava-stage2/fmnist/image/default.parquet"


def _tables(root: Path) -> list[Path]:
    tables = sorted((root / "paper/tables").glob("*.tex"))
    assert tables
    return tables


def test_every_cell_of_every_table_recomputes(test_study):
    seen_kinds = set()
    for tex in _tables(test_study):
        cmap = load_cell_map(tex)
        seen_kinds.add(cmap["source_kind"])
        body = tex.read_text().split(r"\midrule", 1)[1].split(r"\bottomrule", 1)[0]
        n_rows = sum(1 for line in body.splitlines() if line.rstrip().endswith(r"\\"))
        assert len(cmap["cells"]) == n_rows * len(cmap["header"]), tex.name  # the map covers every cell
        for cell in cmap["cells"]:
            report = audit_one(tex, cell["row_index"], cell["col_index"])
            where = f"{tex.name} row {cell['row']!r} col {cell['col']!r}"
            assert report["equal"], f"{where}: printed {report['printed']!r}, recomputed {report['recomputed_text']!r}"
            assert report["matches_metric_file"], f"{where}: {report['recomputed']} vs {report['metric_file_values']}"
            if cell["format"] not in ("label", "metric_label") and cmap["source_kind"] != "best":
                assert report["records"], where  # a number from records names its records files
    assert {"summary", "comparisons", "idk", "recalibration", "best"} <= seen_kinds


def test_a_cell_by_labels_with_its_records_and_method(test_study, capsys):
    table = test_study / "paper/tables/main_results.tex"
    by_label = audit_one(table, "tiny-llava-stage2 / letter_restricted", "ece_10")
    cmap = load_cell_map(table)
    cell = find_cell(cmap, "tiny-llava-stage2/letter\\_restricted", r"ECE$_{10}$ $\downarrow$")
    assert audit_one(table, cell["row_index"], cell["col_index"]) == by_label
    summary = pd.read_csv(test_study / "data/metrics/summary.csv")
    row = summary[
        (summary.model == "tiny-llava-stage2")
        & (summary.dataset == "fmnist")
        & (summary.scenario == "image")
        & (summary.readout == "letter_restricted")
    ].iloc[0]
    assert by_label["recomputed"][0] == pytest.approx(row.ece_10, abs=1e-12)
    assert by_label["n"] == row.n and by_label["records"][0]["path"] == RECORDS
    assert by_label["method"]["B"] == 50 and by_label["filters"]["readout"] == "letter_restricted"
    assert audit_cell(table, "tiny-llava-stage2 / letter_restricted", "ece_10", as_json=True) == 0
    assert json.loads(capsys.readouterr().out)["equal"] is True
    with pytest.raises(Exception, match="no row"):
        find_cell(cmap, "no-such-model", "ece_10")


def _copy_for_tamper(src: Path, dst: Path) -> Path:
    for sub in ("paper/tables", "data/metrics", "data/records"):
        shutil.copytree(src / sub, dst / sub)
    return dst


def test_a_changed_record_is_caught(test_study, tmp_path):
    root = _copy_for_tamper(test_study, tmp_path)
    records = pd.read_parquet(root / RECORDS)
    first = records.index[(records.readout == "letter_restricted") & (records.split == "test")][0]
    records.loc[first, "confidence"] = 1.0 - records.loc[first, "confidence"] / 2
    write_records(records, root / RECORDS)
    table = root / "paper/tables/main_results.tex"
    report = audit_one(table, "tiny-llava-stage2 / letter_restricted", "ece_10")
    assert not report["matches_metric_file"] and not report["equal"]
    assert audit_cell(table, "tiny-llava-stage2 / letter_restricted", "ece_10") == 1


def test_cell_map_fills_blanked_rows_and_refuses_ambiguous_rows():
    summary = pd.DataFrame(
        {
            "model": ["m1", "m1", "m2"],
            "dataset": "d",
            "scenario": "image",
            "prompt": "default",
            "readout": ["r_a", "r_b", "r_a"],
            "accuracy": [0.5, 0.25, 0.125],
        }
    )
    tex = main_results_table(summary, metrics=["accuracy"])
    cmap = cell_map(tex, summary, "summary", "summary.csv", {})
    second = [c for c in cmap["cells"] if c["row_index"] == 2]
    assert [c["printed"] for c in second] == ["m1", r"r\_b", "0.250"]  # the model cell was blank in the .tex
    assert second[2]["source_row"] == 1 and second[2]["keys"]["readout"] == "r_b"
    with pytest.raises(ValueError, match="matches 2 rows"):
        cell_map(tex, pd.concat([summary, summary.iloc[[0]]], ignore_index=True), "summary", "summary.csv", {})


def _mmcal(root: Path, *args: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "mmcal", "audit", *args], cwd=root, capture_output=True, text=True, timeout=300
    )


def test_a_cell_by_a_row_label_with_commas_through_the_cli(test_study):
    """The protocol table's rows read "reference / reference, letter_greedy / kept, counted wrong": the
    CLI tries every comma as the ROW,COL separator (the README's example)."""
    cmap = load_cell_map(test_study / "paper/tables/protocol.tex")
    label = next(c["row"] for c in cmap["cells"] if "kept" in c["row"])
    assert label.count(",") >= 2
    proc = _mmcal(test_study, "paper/tables/protocol.tex", "--cell", f"{label},accuracy")
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert f"row {label!r}, column 'accuracy'" in proc.stdout and "equal:       yes" in proc.stdout
    proc = _mmcal(test_study, "paper/tables/protocol.tex", "--cell", f"{label},no-such-column")
    assert proc.returncode == 2 and "names no cell: no column 'no-such-column'" in proc.stderr


def test_from_a_metric_file_row_to_its_records_and_cells(test_study):
    """README numbers come from data/metrics/*.csv: --row finds that row's records and every cell printing it."""
    keys = "model=tiny-llava-stage2,dataset=fmnist,scenario=image,prompt=default,readout=letter_restricted"
    proc = _mmcal(test_study, "data/metrics/summary.csv", "--row", keys, "--json")
    assert proc.returncode == 0, proc.stdout + proc.stderr
    report = json.loads(proc.stdout)
    summary = pd.read_csv(test_study / "data/metrics/summary.csv")
    row = summary.iloc[report["row"] - 1]
    assert (row.model, row.readout, row.scenario) == ("tiny-llava-stage2", "letter_restricted", "image")
    assert report["metrics"]["accuracy"] == pytest.approx([row.accuracy, row.accuracy_lo, row.accuracy_hi])
    assert [r["path"] for r in report["records"]] == [RECORDS] and report["records"][0]["sha256"]
    main = [c for c in report["cells"] if c["table"] == "paper/tables/main_results.tex"]
    assert {c["col"] for c in main} >= {"accuracy", "ece_10"}
    for cell in main[:2]:  # each printed cell recomputes with the command the report gives
        again = audit_one(test_study / cell["table"], f"{cell['row']},{cell['col']}")
        assert again["equal"] and again["printed"] == cell["printed"]
    by_index = _mmcal(test_study, "data/metrics/summary.csv", "--row", str(report["row"]))
    assert by_index.returncode == 0 and "recompute: mmcal audit paper/tables/main_results.tex --cell" in by_index.stdout
    ambiguous = _mmcal(test_study, "data/metrics/summary.csv", "--row", "model=tiny-llava-stage2")
    assert ambiguous.returncode == 2 and "selects" in ambiguous.stderr and "not one" in ambiguous.stderr
