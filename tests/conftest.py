"""Shared fixtures: the real SmolLM2 checkpoint, tiny random MLLMs of real architectures, and
real Fashion-MNIST items. Everything is built locally; the hub is never contacted."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(Path(__file__).parent))
FMNIST_ROOT = os.environ.get("MMCAL_FMNIST_ROOT", "/usr/share/datasets/fashion-mnist")


# Long end-to-end runs of documented commands: only when asked for by their marker (`pytest -m e2e`), so the
# suite CI runs stays within its time; each is run and reported by hand when the workflow changes.
ON_REQUEST = {
    "replica": "the paper study on hub-shaped replicas (minutes): pytest -m replica, in .venv-families",
    "e2e": "a documented command end to end (minutes): pytest -m e2e",
    "faults_slow": "a fault injected into a Snakemake run of the test study (minutes): pytest -m faults_slow",
}


def pytest_collection_modifyitems(config, items):
    asked = config.getoption("markexpr") or ""
    for item in items:
        for mark, why in ON_REQUEST.items():
            if item.get_closest_marker(mark) and mark not in asked:
                item.add_marker(pytest.mark.skip(reason=f"on request only: {why}"))


@pytest.fixture(scope="session")
def repo_root() -> Path:
    return ROOT


@pytest.fixture(scope="session")
def smollm2_dir(tmp_path_factory) -> Path:
    """The real SmolLM2-135M-Instruct as a HF checkpoint (converted once per session if the
    workflow has not built it yet)."""
    built = ROOT / "data/models/smollm2-135m-instruct"
    if (built / "model.safetensors").exists():
        return built
    from mmcal.tinyllava.smollm2 import convert_smollm2

    out = tmp_path_factory.mktemp("smollm2")
    convert_smollm2(out)
    return out


@pytest.fixture(scope="session")
def tiny_llava_dir(tmp_path_factory, smollm2_dir) -> Path:
    from tiny_models import build_tiny_llava

    return build_tiny_llava(tmp_path_factory.mktemp("tiny-llava"), smollm2_dir)


@pytest.fixture(scope="session")
def tiny_idefics3_dir(tmp_path_factory, smollm2_dir) -> Path:
    from tiny_models import build_tiny_idefics3

    return build_tiny_idefics3(tmp_path_factory.mktemp("tiny-idefics3"), smollm2_dir)


@pytest.fixture(scope="session")
def fmnist_items(tmp_path_factory):
    """Eight real Fashion-MNIST test items with their PNGs under ``<root>/images``."""
    from mmcal.data.fashion_mnist import build_fashion_mnist_items

    root = tmp_path_factory.mktemp("fmnist")
    items = build_fashion_mnist_items(FMNIST_ROOT, root / "images", "images", {"calib": 4, "test": 4}, seed=1)
    return root, items


# --- the workflow end to end (tests/test_workflow.py, tests/test_audit_verify.py) -----------------
SNAKEMAKE = str(Path(sys.executable).parent / "snakemake")
COPY = ["Snakefile", "workflow", "config", "profiles", "envs", "src", "pyproject.toml"]


def workflow_copy(tmp: Path) -> Path:
    for name in COPY:
        src = ROOT / name
        if src.is_dir():
            shutil.copytree(src, tmp / name, ignore=shutil.ignore_patterns("__pycache__"))
        else:
            shutil.copy(src, tmp / name)
    return tmp


def run_snakemake(workdir: Path, *args: str, check: bool = True, timeout: int = 1200) -> subprocess.CompletedProcess:
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1"}
    proc = subprocess.run([SNAKEMAKE, *args], cwd=workdir, env=env, capture_output=True, text=True, timeout=timeout)
    if check and proc.returncode != 0:
        raise AssertionError(f"snakemake {' '.join(args)} failed:\n{proc.stdout[-6000:]}\n{proc.stderr[-6000:]}")
    return proc


@pytest.fixture(scope="session")
def study(tmp_path_factory):
    """The tiny study (config/test.yaml) run once per session; tests inspect what it left, and
    tests/test_audit_verify.py tampers with a hard-linked copy of it."""
    reuse = os.environ.get("MMCAL_TEST_STUDY")  # a finished test study to reuse while developing
    if reuse:
        return Path(reuse)
    wd = workflow_copy(tmp_path_factory.mktemp("study"))
    run_snakemake(wd, "--cores", "2", "--configfile", "config/test.yaml")
    return wd


@pytest.fixture(scope="session")
def test_study(study):
    """The same study under the name the audit tests use."""
    return study


# The fault-injection suite's shared fixtures (tests/faults/, docs/reliability.md).
from faults.faultkit import fault_workdir, fault_workflow, items8, reference8  # noqa: E402, F401
