"""House habits of the workflow: `snakemake --lint` clean for the default and test configs, and
the Snakefile and rule files formatted with snakefmt."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from conftest import workflow_copy
from test_workflow import ROOT, _run

BIN = Path(sys.executable).parent


@pytest.mark.parametrize("configs", [[], ["--configfile", "config/test.yaml"]], ids=["default", "test"])
def test_snakemake_lint_is_clean(configs, tmp_path):
    # in a copy: Snakemake writes its log folder (.snakemake/) where it runs, never into the checkout
    out = _run(workflow_copy(tmp_path), "--lint", *configs)
    assert "Congratulations, your workflow is in a good condition!" in out.stdout + out.stderr


def test_rule_files_are_snakefmt_formatted():
    proc = subprocess.run(
        [str(BIN / "snakefmt"), "--check", "Snakefile", "workflow/rules"], cwd=ROOT, capture_output=True, text=True
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr


@pytest.mark.parametrize("command", [["check"], ["format", "--check"]], ids=["lint", "format"])
def test_python_is_ruff_clean(command):
    # One line length and import order for the library, the tests and the workflow scripts
    # (settings in pyproject.toml).
    proc = subprocess.run(
        [str(BIN / "ruff"), *command, "--no-cache", "src", "tests", "workflow"],
        cwd=ROOT,
        capture_output=True,
        text=True,
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr
