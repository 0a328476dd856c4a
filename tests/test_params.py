"""Editing one `parts:` entry or one figure option re-runs exactly the figure/table jobs that read it.

Every job of config/test.yaml is recorded as done with its current params (`--touch --forceall` on
placeholder outputs writes the same metadata a real run does, in seconds); then a config edit is
dry-run and the jobs Snakemake schedules are compared with the expected ones. (A dry run, not
`--list-changes params`: the latter also lists outputs whose params did not change.)
"""

from __future__ import annotations

import re

import pytest
import yaml

from test_workflow import _run, _workdir

DIRECTORIES = ("data/models/", "paper/tables")


@pytest.fixture(scope="module")
def done(tmp_path_factory):
    wd = _workdir(tmp_path_factory.mktemp("params"))
    summary = _run(wd, "--summary", "--configfile", "config/test.yaml").stdout
    for line in summary.splitlines()[1:]:
        path = wd / line.split("\t")[0]
        if line.split("\t")[0].startswith(DIRECTORIES):
            path.mkdir(parents=True, exist_ok=True)
        else:
            path.parent.mkdir(parents=True, exist_ok=True)
            path.touch()
    _run(wd, "--touch", "--forceall", "--cores", "1", "--configfile", "config/test.yaml")
    assert "Nothing to be done" in _run(wd, "-n", "--configfile", "config/test.yaml").stdout
    return wd


def _jobs_after(wd, edit) -> set[tuple[str, str]]:
    """(rule, first output) of every job a dry run schedules after ``edit`` changes the test config."""
    cfg = yaml.safe_load((wd / "config/test.yaml").read_text())
    edit(cfg)
    # keep the key order: Snakemake compares params by their serialisation
    (wd / "config/edited.yaml").write_text(yaml.safe_dump(cfg, sort_keys=False))
    out = _run(wd, "-n", "--configfile", "config/edited.yaml").stdout
    jobs = re.findall(r"^(?:local)?rule (\w+):\n(?:    .*\n)*?    output: ([^,\n]+)", out, re.M)
    return {(rule, output) for rule, output in jobs}


def _set(*keys, value):
    def edit(cfg):
        node = cfg
        for key in keys[:-1]:
            node = node.setdefault(key, {})
        node[keys[-1]] = value

    return edit


def test_a_parts_entry_reruns_its_figures_and_the_paper(done):
    jobs = _jobs_after(done, _set("parts", "idk", "readout", value="option_loglik"))
    assert jobs == {
        ("figure", "figures/idk_tradeoff.pdf"),
        ("figure", "figures/idk_confidence.pdf"),
        ("paper", "paper/main.tex"),
    }


def test_a_table_part_reruns_its_figure_and_the_tables(done):
    jobs = _jobs_after(done, _set("parts", "option_order", "readout", value="option_loglik"))
    assert jobs == {("figure", "figures/option_order.pdf"), ("tables", "paper/tables"), ("paper", "paper/main.tex")}


def test_figure_options_rerun_only_the_figures_that_use_them(done):
    bins = _jobs_after(done, _set("figures", "reliability_bins", value=12))
    assert bins == {
        ("figure", f"figures/{name}.pdf")
        for name in (
            "reliability_smollm2",
            "reliability_tiny-llava-stage1",
            "reliability_tiny-llava-stage2",
            "reliability_tiny-llava-stage2-idk",
            "visual_finetuning",
            "base_vs_mllm",
            "recalibration_reliability",
        )
    } | {("paper", "paper/main.tex")}
    dpi = _jobs_after(done, _set("figures", "dpi", value=120))
    assert {rule for rule, _ in dpi} == {"figure", "paper"}
    assert len(dpi) == 18 + 1  # every figure of the test study (reported_metrics the 18th), then the paper
