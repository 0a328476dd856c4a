"""GPUs on one machine: the Snakefile's global `gpu` resource, one device per job (real lock files
held by real processes), and per-model resources reaching the jobs. This machine has no GPU: the
devices are the ids CUDA_VISIBLE_DEVICES lists, which is what the allocator reads first on a GPU box too.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
import time
from pathlib import Path

import pytest

from conftest import run_snakemake, workflow_copy

ROOT = Path(__file__).resolve().parents[1]
CLAIM = """
import os, sys, time
from pathlib import Path
from mmcal.engine.devices import claim_gpus
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
    # A third job waits while both devices are held, then takes the one its predecessor left.
    third_release = tmp_path / "release-3"
    c = _claimer(1, locks, third_release)
    time.sleep(1.0)
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
