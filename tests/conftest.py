"""Shared fixtures: the real SmolLM2 checkpoint, tiny random MLLMs of real architectures, and
real Fashion-MNIST items. Everything is built locally; the hub is never contacted."""

from __future__ import annotations

import os
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


@pytest.fixture(scope="session")
def test_study(tmp_path_factory) -> Path:
    """The tiny study (config/test.yaml) run once per session through real Snakemake, in a copy of
    the project; shared by the workflow tests and the audit tests so that CI runs it once."""
    from test_workflow import _run, _workdir

    wd = _workdir(tmp_path_factory.mktemp("study"))
    _run(wd, "--cores", "2", "--configfile", "config/test.yaml")
    return wd
