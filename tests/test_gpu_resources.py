"""GPUs on one machine: the Snakefile's global `gpu` resource, one device per job (real lock files
held by real processes), and per-model resources reaching the jobs. This machine has no GPU: the
devices are the ids CUDA_VISIBLE_DEVICES lists, which is what the allocator reads first on a GPU box too.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

from conftest import SNAKEMAKE, run_snakemake, workflow_copy
from mmcal.engine.devices import gpu_count, visible_gpus
from mmcal.errors import ConfigError

ROOT = Path(__file__).resolve().parents[1]
CLAIM = """
import logging, os, sys, time
from pathlib import Path
from mmcal.engine.devices import claim_gpus
logging.basicConfig(level=logging.INFO, stream=sys.stderr, format="%(message)s")
ids = claim_gpus(int(sys.argv[1]), lock_dir=Path(sys.argv[2]), poll_seconds=0.05)
print(",".join(ids), os.environ.get("CUDA_VISIBLE_DEVICES"), flush=True)
release = Path(sys.argv[3])
while not release.exists():
    time.sleep(0.05)
"""


def _env(devices: str | None) -> dict:
    env = {k: v for k, v in os.environ.items() if k not in ("SLURM_JOB_ID", "CUDA_VISIBLE_DEVICES")}
    env["PYTHONPATH"] = str(ROOT / "src")
    if devices is not None:
        env["CUDA_VISIBLE_DEVICES"] = devices
    return env


def _claimer(n, locks, release, devices="0,1", env=None):
    return subprocess.Popen(
        [sys.executable, "-c", CLAIM, str(n), str(locks), str(release)],
        env=env or _env(devices),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


def test_concurrent_processes_get_distinct_devices_and_release_on_exit(tmp_path):
    locks = tmp_path / "locks"
    first, second = tmp_path / "release-1", tmp_path / "release-2"
    a, b = _claimer(1, locks, first), _claimer(1, locks, second)
    dev_a, dev_b = a.stdout.readline().split(), b.stdout.readline().split()
    assert dev_a[0] == dev_a[1] and dev_b[0] == dev_b[1]  # each sees only the device it holds
    assert {dev_a[0], dev_b[0]} == {"0", "1"}
    # A third job waits while both devices are held (it says so once it found both locks taken), then takes the
    # one its predecessor left.
    third_release = tmp_path / "release-3"
    c = _claimer(1, locks, third_release)
    assert "all 2 GPUs are taken" in c.stderr.readline()
    assert c.poll() is None
    first.write_text("")
    assert a.wait(timeout=30) == 0
    assert c.stdout.readline().split() == [dev_a[0], dev_a[0]]
    second.write_text("")
    third_release.write_text("")
    for p in (b, c):
        assert p.wait(timeout=30) == 0, p.stderr.read()
    # Every lock is free again once its process exited.
    d = _claimer(2, locks, third_release)
    assert d.stdout.readline().split() == ["0,1", "0,1"]
    assert d.wait(timeout=30) == 0


def test_too_many_gpus_is_an_error_and_slurm_jobs_keep_their_devices(tmp_path):
    release = tmp_path / "release"
    release.write_text("")
    p = _claimer(3, tmp_path / "locks", release)
    assert p.wait(timeout=30) != 0
    assert "asks for 3 GPUs but this machine has 2 (0,1)" in p.stderr.read()
    env = {**_env("5"), "SLURM_JOB_ID": "42"}
    q = _claimer(1, tmp_path / "locks", release, env=env)
    assert q.stdout.readline().split() == ["5"]  # nothing claimed: SLURM's own CUDA_VISIBLE_DEVICES stays
    assert q.wait(timeout=30) == 0 and not (tmp_path / "locks").exists()


PROBE_RULES = """

rule gpu_probe:
    output:
        "gpu-probe/{i}.txt",
    threads: 1
    resources:
        gpu=1,
    script:
        "workflow/scripts/gpu_probe.py"
"""
PROBE = """import os
import sys
import time

sys.path.insert(0, snakemake.scriptdir)
from _setup import start

start(snakemake)
begin = time.time()
time.sleep(3)
with open(snakemake.output[0], "w") as f:
    f.write(f"{os.environ.get('CUDA_VISIBLE_DEVICES')} {begin} {time.time()}\\n")
"""


@pytest.fixture(scope="module")
def probe_workflow(tmp_path_factory):
    """The real Snakefile plus one rule asking for a GPU (script through workflow/scripts/_setup.py)."""
    wd = workflow_copy(tmp_path_factory.mktemp("gpu"))
    with open(wd / "Snakefile", "a") as f:
        f.write(PROBE_RULES)
    (wd / "workflow/scripts/gpu_probe.py").write_text(PROBE)
    return wd


def _probe(wd: Path, gpus: int) -> list[tuple[str, float, float]]:
    out = wd / "gpu-probe"
    if out.exists():
        for f in out.iterdir():
            f.unlink()
    run_snakemake(wd, "gpu-probe/a.txt", "gpu-probe/b.txt", "--cores", "2", "--config", f"gpus={gpus}")
    rows = []
    for name in ("a", "b"):
        dev, begin, end = (out / f"{name}.txt").read_text().split()
        rows.append((dev, float(begin), float(end)))
    return rows


@pytest.mark.e2e  # a Snakemake run (CI time): pytest -m e2e
@pytest.mark.slow  # two Snakemake runs of two 3 s jobs: 55 s measured on the loaded 2-core machine
def test_global_gpu_resource_limits_concurrency_and_jobs_get_their_own_device(probe_workflow, monkeypatch):
    monkeypatch.delenv("SLURM_JOB_ID", raising=False)
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "0,1")  # the machine's two "GPUs"
    (a, b) = _probe(probe_workflow, gpus=1)
    assert a[2] <= b[1] or b[2] <= a[1]  # one GPU: the two jobs never overlap
    (a, b) = _probe(probe_workflow, gpus=2)
    assert max(a[1], b[1]) < min(a[2], b[2])  # two GPUs: they run together...
    assert {a[0], b[0]} == {"0", "1"}  # ...each on its own device


FAKE_SMI = """#!/bin/sh
# nvidia-smi -L of a machine with two GPUs (this machine has none, nor nvidia-smi)
echo "GPU 0: NVIDIA H100 80GB HBM3 (UUID: GPU-00000000-0000-0000-0000-000000000000)"
echo "GPU 1: NVIDIA H100 80GB HBM3 (UUID: GPU-11111111-1111-1111-1111-111111111111)"
"""


def _fake_nvidia_smi(folder: Path) -> Path:
    folder.mkdir()
    (folder / "nvidia-smi").write_text(FAKE_SMI)
    (folder / "nvidia-smi").chmod(0o755)
    return folder


def test_gpus_unset_counts_the_visible_gpus(tmp_path, monkeypatch):
    """``gpus:`` unset (null): CUDA_VISIBLE_DEVICES when set (``-1``: none), else the GPUs ``nvidia-smi -L`` lists,
    else none; a configured count wins."""
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "0,2,3")
    assert visible_gpus() == ["0", "2", "3"] and gpu_count(None) == 3
    assert gpu_count(1) == 1
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "-1")
    assert gpu_count(None) == 0
    monkeypatch.delenv("CUDA_VISIBLE_DEVICES")
    monkeypatch.setenv("PATH", str(tmp_path))  # no nvidia-smi
    assert gpu_count(None) == 0
    monkeypatch.setenv("PATH", str(_fake_nvidia_smi(tmp_path / "bin")))
    assert visible_gpus() == ["0", "1"] and gpu_count(None) == 2
    with pytest.raises(ConfigError, match="config gpus: -1 is negative"):
        gpu_count(-1)


def test_the_snakefile_registers_the_detected_gpus_when_gpus_is_unset(tmp_path):
    """A local run with ``gpus:`` unset gets a ``gpu`` resource of the GPUs nvidia-smi lists: a job asking for
    three is scaled to the two there are (dry run; the job's resources line shows it)."""
    (tmp_path / "wd").mkdir()
    wd = workflow_copy(tmp_path / "wd")
    with open(wd / "Snakefile", "a") as f:
        f.write(
            '\nrule three_gpus:\n    output:\n        "three.txt",\n    resources:\n        gpu=3,\n'
            '    shell:\n        "touch {output}"\n'
        )
    env = {k: v for k, v in os.environ.items() if k not in ("CUDA_VISIBLE_DEVICES", "SLURM_JOB_ID")}
    bin_dir = _fake_nvidia_smi(tmp_path / "bin")
    args = [SNAKEMAKE, "three.txt", "-n", "--cores", "1", "--configfile", "config/test.yaml"]
    detected = subprocess.run(
        args, cwd=wd, env={**env, "PATH": f"{bin_dir}:{env['PATH']}"}, capture_output=True, text=True, timeout=300
    )
    assert detected.returncode == 0, detected.stderr[-3000:]
    out = detected.stdout + detected.stderr
    assert re.search(r"rule three_gpus:.*?resources: .*gpu=2\b", out, flags=re.S), out[-3000:]


def test_per_model_resources_reach_the_jobs(tmp_path):
    wd = workflow_copy(tmp_path)
    proc = run_snakemake(wd, "-n", "--configfile", "config/paper.yaml", "--cores", "1")
    jobs = re.findall(r"rule (score|prompt_search):\n(.*?)\n\n", proc.stdout, flags=re.S)
    seen = {}
    for rule, body in jobs:
        model = re.search(r"model=([^,\s]+)", body).group(1)
        res = dict(re.findall(r"(\w+)=([^,\s]+)", re.search(r"resources: (.*)", body).group(1)))
        seen[(rule, model)] = (res["mem_mb"], res["runtime"], res["gpu"])
    assert seen[("score", "smolvlm")] == ("16000", "120", "1")
    assert seen[("score", "llava-1.5-7b-stage1")] == ("32000", "240", "1")
    assert seen[("prompt_search", "qwen-vl-chat")] == ("32000", "240", "1")
    assert len({m for _, m in seen}) == 8


def test_cuda_without_a_gpu_fails_naming_the_device():
    import torch

    from mmcal.errors import MmcalError
    from mmcal.torch_device import resolve_device

    if torch.cuda.is_available():
        pytest.skip("this machine has CUDA")
    with pytest.raises(MmcalError, match="device 'cuda' requested but CUDA is not available"):
        resolve_device("cuda")


def test_a_resource_one_model_lacks_comes_from_the_defaults_or_is_named(tmp_path):
    wd = workflow_copy(tmp_path)
    extra = wd / "extra.yaml"
    extra.write_text("models:\n  smollm2:\n    resources: {mem_mb: 1000, runtime: 5}\n")
    args = ("-n", "--cores", "1", "--configfile", "config/test.yaml", str(extra))
    proc = run_snakemake(wd, *args, "--default-resources", "mem_mb=3000", "runtime=7")
    res = {
        m: dict(re.findall(r"(\w+)=([^,\s]+)", r))
        for m, r in re.findall(r"rule score:\n.*?model=([^,\s]+).*?resources: (.*?)\n", proc.stdout, flags=re.S)
    }
    assert (res["smollm2"]["mem_mb"], res["smollm2"]["runtime"]) == ("1000", "5")
    assert (res["tiny-llava-stage2"]["mem_mb"], res["tiny-llava-stage2"]["runtime"]) == ("3000", "7")
    proc = run_snakemake(wd, *args, check=False)
    assert proc.returncode != 0
    # (Snakemake always has a default mem_mb; runtime has none)
    assert "resources has no runtime (another model sets it) and there is no default-resources runtime" in (
        proc.stdout + proc.stderr
    )
