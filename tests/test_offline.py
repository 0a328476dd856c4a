"""Network access is configuration: the config's ``offline`` key reaches every job, the CLI's ``--online``.

The workflow test runs the real Snakefile (included by a probe Snakefile that adds one rule) with
the test config; the probe rule is a ``script:`` job, started as every job of the study is, which
imports the workflow's ``_setup`` (as every script does) and writes the flags it sees.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from mmcal.cli import HUB_OFFLINE_VARS, main

REPO = Path(__file__).resolve().parents[1]
SNAKEMAKE = Path(sys.executable).with_name("snakemake")

PROBE_SNAKEFILE = f"""
include: {str(REPO / "Snakefile")!r}


rule probe_offline_flags:
    output:
        "flags.json",
    script:
        "probe.py"
"""

PROBE_SCRIPT = f"""
import json
import os
import sys

sys.path.insert(0, {str(REPO / "workflow" / "scripts")!r})
import _setup  # noqa: E402,F401 - every workflow script starts with it; it must not touch the flags

names = {list(HUB_OFFLINE_VARS)!r}
with open(snakemake.output[0], "w") as fh:
    json.dump({{name: os.environ.get(name) for name in names}}, fh)
"""


def job_flags(workdir: Path, exported: dict, overrides: str = "") -> dict:
    """The flags a job of ``snakemake --configfile config/test.yaml overrides.yaml`` sees, with
    ``exported`` in the environment Snakemake was started from."""
    workdir.mkdir()
    configfiles = ["config/test.yaml"]
    if overrides:
        (workdir / "overrides.yaml").write_text(overrides)
        configfiles.append("overrides.yaml")
    (workdir / "Snakefile").write_text(PROBE_SNAKEFILE)
    (workdir / "probe.py").write_text(PROBE_SCRIPT)
    (workdir / "config").symlink_to(REPO / "config")  # the Snakefile's `configfile:` is workdir-relative
    env = {k: v for k, v in os.environ.items() if k not in HUB_OFFLINE_VARS}
    env.update(exported, PYTHONPATH=str(REPO / "src"))
    cmd = [str(SNAKEMAKE), "flags.json", "--cores", "1", "--configfile", *configfiles]
    done = subprocess.run(cmd, cwd=workdir, env=env, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr[-3000:]
    return json.loads((workdir / "flags.json").read_text())


@pytest.mark.skipif(not SNAKEMAKE.exists(), reason="snakemake is not installed beside this Python")
def test_config_offline_key_reaches_jobs(tmp_path):
    # offline: true (test.yaml) sets every flag, also when none was exported.
    assert job_flags(tmp_path / "on", {}) == dict.fromkeys(HUB_OFFLINE_VARS, "1")
    # offline: false turns them off, even over flags exported in the shell (the README's old recipe).
    exported = dict.fromkeys(HUB_OFFLINE_VARS, "1")
    assert job_flags(tmp_path / "off", exported, "offline: false\n") == dict.fromkeys(HUB_OFFLINE_VARS, "0")


def test_paper_config_is_online_and_default_configs_offline():
    from mmcal.config import load_study

    for name, offline in (("config.yaml", True), ("test.yaml", True), ("paper.yaml", False)):
        assert load_study([REPO / "config" / name], root=REPO)["offline"] is offline, name


def test_cli_is_offline_unless_online(tmp_path, monkeypatch, capsys):
    records = tmp_path / "records.parquet"
    pd = pytest.importorskip("pandas")
    row = {"item_id": "a", "status": "ok", "readout": "r", "correct": True, "confidence": 0.5}
    pd.DataFrame([row]).to_parquet(records)
    for name in HUB_OFFLINE_VARS:
        monkeypatch.setenv(name, "0")
    assert main(["records", str(records)]) == 0
    assert {name: os.environ[name] for name in HUB_OFFLINE_VARS} == dict.fromkeys(HUB_OFFLINE_VARS, "1")
    assert main(["--online", "records", str(records)]) == 0
    assert {name: os.environ[name] for name in HUB_OFFLINE_VARS} == dict.fromkeys(HUB_OFFLINE_VARS, "0")
    assert "1 rows, 1 items, 0 unscorable rows" in capsys.readouterr().out
