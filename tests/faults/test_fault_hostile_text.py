"""Hostile text in items: LaTeX specials, right-to-left overrides and zero-width characters, a question of
100,000 characters. Every item is a row (scored, or unscorable with its reason); text that reaches a table is
escaped so that the table is balanced LaTeX with none of the raw specials or invisible characters in it."""

from __future__ import annotations

from dataclasses import replace

from faults.faultkit import items_file, score_in_process
from mmcal.analysis.summary import summarize
from mmcal.paper.main_tex import latex_problems
from mmcal.paper.tables import main_results_table, write_table
from mmcal.records import read_records

LATEX = r"50% of $x_1$ & {y} ~ #2 ^ \textbf{z} \\ \end{document}"
# zero-width space/joiner, BOM, a right-to-left override and its end; Hebrew and Arabic words
INVISIBLE = "Which\u200b garment \u202eis this\u202c? \u05e9\u05de\u05dc\u05d4 \u0641\u0633\u062a\u0627\u0646"
INVISIBLE += "\u200d\ufeff"


def _hostile(items):
    a, b, c = items[:3]
    return [
        replace(a, question=LATEX, options=[LATEX[:9], "}{", "\\", "%"]),
        replace(b, question=INVISIBLE, options=[o + "\u200b\u202e" for o in b.options]),
        replace(c, question="Is it a shirt? " * 6667),  # 100,005 characters
        *items[3:],
    ]


def test_hostile_items_are_all_rows_and_tables_stay_latex(tiny_llava_dir, tmp_path):
    items = items_file(tmp_path / "items", n=8, edit=_hostile)
    out = tmp_path / "records.parquet"
    stats = score_in_process(items, out, tiny_llava_dir, splits=["test"])
    records = read_records(out)
    per_item = records.drop_duplicates("item_id").set_index("item_id")["status"]
    assert len(per_item) == 8 and stats["items"] == 8  # nothing lost
    ids = [line.split('"item_id": "')[1].split('"')[0] for line in items.read_text().splitlines()]
    assert per_item[ids[0]] == "ok" and per_item[ids[1]] == "ok"
    assert per_item[ids[2]].startswith("prompt too long (")  # the reason, with the count and the limit
    assert (per_item.drop(ids[2]) == "ok").all()

    # the hostile names reach a table through the group keys
    hostile = records.assign(model=LATEX, dataset=INVISIBLE + "\n\nnew paragraph")
    summary = summarize(hostile, B=20, split="test", smece_test=False)
    tex = main_results_table(summary, row_cols=["model", "dataset", "readout"])
    path = write_table(tex, tmp_path / "tables/main.tex")
    text = path.read_text()
    assert latex_problems(text) == []
    assert r"50\% of \$x\_1\$ \& \{y\}" in text and r"\textbackslash{}" in text
    assert not any(ch in text for ch in "\u200b\u202e\u202c\u200d\ufeff")
    assert "\u05e9\u05de\u05dc\u05d4" in text and "\n\n" not in text.split(r"\begin{tabular")[1]
    assert [p.name for p in path.parent.iterdir()] == ["main.tex"]  # no temporary file left beside it
