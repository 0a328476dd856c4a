"""Injecting faults into real runs: processes killed with SIGKILL, a file-size limit (EFBIG), a small
filesystem that fills up (ENOSPC), a folder the job may not write, and the small real workflow and job
they are injected into. Used by the tests in tests/faults/ (docs/reliability.md lists them); tests/conftest.py
imports the fixtures at the end of this module."""

from __future__ import annotations

import contextlib
import ctypes
import json
import os
import resource
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pytest
import yaml

from conftest import FMNIST_ROOT, ROOT, SNAKEMAKE, workflow_copy

SRC = ROOT / "src"
PYTHON = sys.executable
# The small study every workflow fault runs: the test study's settings, one local tiny LLaVA (the session's
# random-weight model of tests/tiny_models.py) on a few Fashion-MNIST items, one item per shard.
RECORDS = "data/records/tiny/fmnist/image/default.parquet"
N_ITEMS = 6


def env(**extra) -> dict:
    """The environment of a job: this checkout's sources first, offline, one thread (the 2 cores are shared)."""
    out = {**os.environ, "PYTHONPATH": str(SRC), "HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1"}
    out.setdefault("OMP_NUM_THREADS", "1")
    out.update({k: str(v) for k, v in extra.items()})
    return out


# --- the faults ---------------------------------------------------------------------------------


def _limits(fsize: int | None, read_only_root: bool):
    """What a child process runs before exec: a file-size limit (writes past it fail with EFBIG; Python
    ignores SIGXFSZ) and, for root, the capabilities that let root write into a folder without write
    permission dropped, so a read-only folder is read-only to the job too. Its own process group, so
    SIGKILL reaches Snakemake and every job it started."""

    def apply():
        os.setsid()
        if fsize is not None:
            resource.setrlimit(resource.RLIMIT_FSIZE, (fsize, fsize))
        if read_only_root and os.geteuid() == 0:
            libc = ctypes.CDLL(None, use_errno=True)
            for cap in (1, 2, 3):  # CAP_DAC_OVERRIDE, CAP_DAC_READ_SEARCH, CAP_FOWNER
                if libc.prctl(24, cap, 0, 0, 0) != 0:  # PR_CAPBSET_DROP: gone for the exec'd program
                    raise OSError(ctypes.get_errno(), "prctl(PR_CAPBSET_DROP)")

    return apply


def start(args: list[str], cwd: Path, *, fsize: int | None = None, read_only_root: bool = False, **extra_env):
    """Start a process in its own process group, its output to a temporary file (:func:`output`)."""
    with tempfile.NamedTemporaryFile("w", prefix="mmcal-fault-", suffix=".out", delete=False) as log:
        proc = subprocess.Popen(
            args,
            cwd=cwd,
            env=env(**extra_env),
            stdout=log,
            stderr=subprocess.STDOUT,
            text=True,
            preexec_fn=_limits(fsize, read_only_root),
        )
    proc.log_path = Path(log.name)
    return proc


def run(args: list[str], cwd: Path, *, timeout: int = 600, **kw) -> tuple[int, str]:
    """Run to the end; (exit code, output)."""
    proc = start(args, cwd, **kw)
    try:
        proc.wait(timeout=timeout)
    finally:
        kill_group(proc)
    return proc.returncode, output(proc)


def output(proc: subprocess.Popen) -> str:
    """What a finished process printed (its temporary file is then removed)."""
    text = proc.log_path.read_text() if proc.log_path.exists() else ""
    proc.log_path.unlink(missing_ok=True)
    return text


def kill_group(proc: subprocess.Popen) -> None:
    """SIGKILL the process and everything it started (its process group)."""
    with contextlib.suppress(ProcessLookupError):
        os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()


def kill_when(proc: subprocess.Popen, ready, timeout: float = 300) -> None:
    """SIGKILL the process and everything it started as soon as ``ready()`` holds (polled every 10 ms)."""
    deadline = time.monotonic() + timeout
    while not ready():
        if proc.poll() is not None:
            kill_group(proc)
            raise AssertionError(f"ended (rc {proc.returncode}) before the fault's moment:\n{output(proc)[-4000:]}")
        if time.monotonic() > deadline:
            kill_group(proc)
            raise AssertionError("the fault's moment never came")
        time.sleep(0.01)
    kill_group(proc)


@contextlib.contextmanager
def small_filesystem(path: Path, size_kb: int):
    """A tmpfs of ``size_kb`` KiB mounted at ``path`` (root only; skipped where it cannot be made)."""
    path.mkdir(parents=True, exist_ok=True)
    proc = subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size_kb}k", "tmpfs", str(path)], capture_output=True)
    if proc.returncode != 0:
        pytest.skip(f"cannot mount a small tmpfs here: {proc.stderr.decode().strip()}")
    try:
        yield path
    finally:
        subprocess.run(["umount", "-l", str(path)], check=False)


def resize_filesystem(path: Path, size_kb: int) -> None:
    """Free space on a :func:`small_filesystem`, keeping its files (what an administrator does)."""
    subprocess.run(["mount", "-o", f"remount,size={size_kb}k", str(path)], check=True)


def fill(path: Path, leave_bytes: int = 0) -> None:
    """Fill the filesystem holding ``path`` up to ``leave_bytes`` free."""
    free = shutil.disk_usage(path).free - leave_bytes
    with open(path / "filler", "wb") as fh:
        with contextlib.suppress(OSError):
            fh.write(b"\0" * max(0, free))


# --- the real runs they are injected into --------------------------------------------------------


def fault_config(tiny_model: Path) -> dict:
    return {
        "base": "test.yaml",
        "models": {"tiny": {"path": str(tiny_model), "kind": "mllm"}},
        "datasets": {"fmnist": {"splits": {"calib": 2, "test": N_ITEMS}}},
        "scoring": {"shard_size": 1},
        "runs": [
            {
                "models": ["tiny"],
                "datasets": ["fmnist"],
                "scenarios": ["image"],
                "prompts": ["default"],
                "splits": ["test"],
            }
        ],  # fmt: skip
        "comparisons": [],
    }


def snakemake(workdir: Path, *targets: str, configfile: str = "config/faults.yaml", cores: int = 1) -> list[str]:
    return [SNAKEMAKE, "--cores", str(cores), "--configfile", configfile, "--", *targets]


def build_fault_workflow(base: Path, tiny_model: Path) -> Path:
    """A workflow copy with config/faults.yaml whose inputs of the scoring job (items, the download record
    of the local model) are built: a test copies it and runs the one scoring job."""
    workflow_copy(base)
    (base / "config/faults.yaml").write_text(yaml.safe_dump(fault_config(tiny_model)))
    rc, out = run(snakemake(base, "data/datasets/fmnist/items.jsonl", "data/downloads/resolved.json"), base)
    assert rc == 0, out
    return base


def copy_workflow(base: Path, dst: Path) -> Path:
    shutil.copytree(base, dst, symlinks=True)
    return dst


def score_cli(items: Path, out: Path, model: Path, cfg: dict | None = None, *, cwd: Path) -> list[str]:
    """``mmcal score`` (the scoring job's own entry point, score_to_records) on ``items``."""
    args = [PYTHON, "-m", "mmcal", "score", "--model-path", str(model), "--items", str(items), "--out", str(out)]
    if cfg:
        path = cwd / f"score-{len(list(cwd.glob('score-*.yaml')))}.yaml"
        path.write_text(yaml.safe_dump(cfg))
        args += ["--config", str(path)]
    return args


def items_file(folder: Path, n: int = 8, edit=None) -> Path:
    """``n`` real Fashion-MNIST test items with their PNGs in ``folder`` (``edit(items)`` may change them)."""
    from mmcal.data.fashion_mnist import build_fashion_mnist_items
    from mmcal.items import write_items

    items = build_fashion_mnist_items(FMNIST_ROOT, folder / "images", "images", {"test": n}, seed=3)
    if edit:
        items = edit(items)
    path = folder / "items.jsonl"
    write_items(items, path)
    return path


def log_lines(path: Path, marker: str) -> list[str]:
    return [line for line in path.read_text().splitlines() if marker in line]


def shard_stats(log_text: str) -> list[dict]:
    """The "done: {...}" stats every finished scoring job logs."""
    return [json.loads(line.split("done: ", 1)[1]) for line in log_text.splitlines() if "done: {" in line]


# --- fixtures (imported by the test modules that use them) ----------------------------------------


@pytest.fixture(scope="session")
def fault_workflow(tmp_path_factory, tiny_llava_dir) -> Path:
    return build_fault_workflow(tmp_path_factory.mktemp("fault-workflow"), tiny_llava_dir)


@pytest.fixture
def fault_workdir(fault_workflow, tmp_path) -> Path:
    """A fresh copy of the fault workflow, its scoring job not yet run."""
    return copy_workflow(fault_workflow, tmp_path / "wd")


@pytest.fixture(scope="session")
def items8(tmp_path_factory) -> Path:
    """Eight real Fashion-MNIST test items (items.jsonl + images/)."""
    return items_file(tmp_path_factory.mktemp("items8"), n=8)


@pytest.fixture(scope="session")
def reference8(tmp_path_factory, items8, tiny_llava_dir):
    """The records of an uninterrupted ``mmcal score`` of :func:`items8`: what every faulted run must end with."""
    import pandas as pd

    folder = tmp_path_factory.mktemp("reference8")
    out = folder / "records.parquet"
    rc, text = run(score_cli(items8, out, tiny_llava_dir, cwd=folder), folder)
    assert rc == 0, text
    return pd.read_parquet(out)


def score_in_process(items: Path, out: Path, model: Path, scenario_cfg: dict | None = None, **kw) -> dict:
    """The scoring job's library entry point with ``mmcal score``'s defaults (so its records equal the CLI's)."""
    from mmcal.engine.job import score_to_records
    from mmcal.engine.prompts import prompt_from_config
    from mmcal.engine.scenarios import scenario_from_config

    args = {
        "readouts": ["letter_restricted", "letter_full_vocab", "option_loglik"],
        "splits": ["calib", "test"],
        "device": "auto",
        "dtype": "auto",
        "batch_size": 8,
        "progress": False,
        **kw,
    }
    scenario = scenario_from_config("image", scenario_cfg or {"image": True})
    prompt = prompt_from_config("default", None)
    return score_to_records("model", {"path": str(model)}, items.parent.name, items, out, scenario, prompt, **args)
