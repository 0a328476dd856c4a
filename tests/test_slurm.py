"""The tiny study (config/test.yaml) through a real SLURM cluster with profiles/slurm, end to end.

Optional: it installs Debian's SLURM and starts its daemons as root (envs/slurm/start-local-slurm.sh),
then runs ~50 jobs through the cluster (minutes), so it runs only when asked:
    MMCAL_TEST_SLURM=1 python -m pytest -m slurm tests/test_slurm.py
with the SLURM executor plugin installed (`pip install -e ".[slurm]"`). It is skipped, with the
reason, where SLURM cannot be started. docs/cluster.md records a run.
"""

from __future__ import annotations

import importlib.util
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from conftest import workflow_copy

ROOT = Path(__file__).resolve().parents[1]
START = ROOT / "envs/slurm/start-local-slurm.sh"

pytestmark = [pytest.mark.slurm, pytest.mark.slow]


def _cluster_up() -> bool:
    if shutil.which("sinfo") is None:
        return False
    proc = subprocess.run(["sinfo", "-h", "-N", "-o", "%t"], capture_output=True, text=True, timeout=30)
    return proc.returncode == 0 and bool({"idle", "mix", "alloc"} & set(proc.stdout.split()))


@pytest.fixture(scope="module")
def slurm_cluster():
    if os.environ.get("MMCAL_TEST_SLURM") != "1":
        pytest.skip("optional: set MMCAL_TEST_SLURM=1 (installs and starts a local SLURM as root)")
    if importlib.util.find_spec("snakemake_executor_plugin_slurm") is None:
        pytest.skip('snakemake-executor-plugin-slurm is not installed (pip install -e ".[slurm]")')
    if not _cluster_up():
        if os.geteuid() != 0:
            pytest.skip("no running SLURM cluster, and starting one needs root")
        if shutil.which("apt-get") is None and shutil.which("slurmctld") is None:
            pytest.skip("no running SLURM cluster, and no apt-get to install one")
        proc = subprocess.run([str(START), "start"], capture_output=True, text=True, timeout=600)
        if proc.returncode != 0:
            pytest.skip(f"SLURM could not be started: {(proc.stdout + proc.stderr)[-2000:]}")
    config = subprocess.run(["scontrol", "show", "config"], capture_output=True, text=True, timeout=30).stdout
    return dict(re.findall(r"^(\w+)\s+=\s+(.*?)\s*$", config, flags=re.M))


def test_test_study_through_slurm(slurm_cluster, tmp_path):
    wd = workflow_copy(tmp_path)
    cmd = [
        # the plugin ignores SIGTERM while it waits for a job it lost: the hard kill bounds the test
        *("timeout", "-k", "30", "2400"),
        *(sys.executable, "-m", "snakemake", "--profile", "profiles/slurm", "--configfile", "config/test.yaml"),
        # no slurmdbd here: job states from squeue, not sacct
        *("--slurm-status-command", "squeue", "--slurm-init-seconds-before-status-checks", "1"),
    ]
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1"}
    proc = subprocess.run(cmd, cwd=wd, env=env, capture_output=True, text=True)
    out = proc.stdout + proc.stderr
    assert proc.returncode == 0, out[-6000:]
    assert (wd / "data/metrics/summary.csv").exists() and (wd / "paper/main.tex").exists()
    # Every job of the run went through SLURM: the plugin names each job after the run's id, and the
    # cluster's job-completion log lists them, on the partitions the profile chose.
    run_id = re.search(r"SLURM run ID: (\S+)", out).group(1)
    n_jobs = int(re.search(r"^total\s+(\d+)", out, flags=re.M).group(1)) - 1  # less the local `all`
    assert slurm_cluster.get("JobCompType") == "jobcomp/filetxt", slurm_cluster.get("JobCompType")
    lines = [line for line in Path(slurm_cluster["JobCompLoc"]).read_text().splitlines() if f"Name={run_id} " in line]
    assert len(lines) == n_jobs and all("JobState=COMPLETED" in line for line in lines)
    partitions = [re.search(r"Partition=(\S+)", line).group(1) for line in lines]
    assert partitions.count("gpu") == out.count("rule score:") + out.count("rule prompt_search:") + out.count(
        "rule describe_images:"
    )
    assert "cpu" in partitions
