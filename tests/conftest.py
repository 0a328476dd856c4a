"""Shared fixtures: the real SmolLM2 checkpoint, tiny random MLLMs of real architectures, and
real Fashion-MNIST items. Everything is built locally; the hub is never contacted."""

from __future__ import annotations

import contextlib
import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

import pytest

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
# The file-hash cache (mmcal.hashing) of this session, and of every Snakemake job it starts, lives in a
# temporary folder: a test run never writes into ~/.cache/mmcal (removed at the end, pytest_unconfigure).
_SESSION_TMP = Path(tempfile.mkdtemp(prefix="mmcal-tests-"))
os.environ.setdefault("MMCAL_HASH_CACHE", str(_SESSION_TMP / "file_hashes.jsonl"))
# The same for transformers' copies of remote code (trust_remote_code: the Qwen stand-ins), instead of
# ~/.cache/huggingface/modules; transformers puts that folder on sys.path the first time it loads such code.
os.environ.setdefault("HF_MODULES_CACHE", str(_SESSION_TMP / "hf_modules"))

ROOT = Path(__file__).resolve().parents[1]
# tiny_models and conftest's helpers (pytest usually put tests/ there), then the replica builders of tests/replicas
# (`import build`): appended, once, at the end, so that no module of theirs shadows an installed one.
for _folder in (Path(__file__).parent, Path(__file__).parent / "replicas"):
    if str(_folder) not in sys.path:
        sys.path.append(str(_folder))
FMNIST_ROOT = os.environ.get("MMCAL_FMNIST_ROOT", "/usr/share/datasets/fashion-mnist")


# Long end-to-end runs of documented commands: only when asked for by their marker (`pytest -m e2e`), so the
# suite CI runs stays within its time; each is run and reported by hand when the workflow changes.
ON_REQUEST = {
    "replica": "the paper study on hub-shaped replicas (minutes): pytest -m replica, in .venv-families",
    "e2e": "a Snakemake run of a documented feature end to end (tens of seconds to minutes): pytest -m e2e",
    "faults_slow": "a fault injected into a Snakemake or training run (minutes): pytest -m faults_slow tests/faults",
}


def pytest_addoption(parser):
    parser.addoption(
        "--reverse",
        action="store_true",
        help="run the tests in reverse order (with -p randomly: a random order): no test may depend on another",
    )
    parser.addoption(
        "--no-check-global-state",
        action="store_false",
        dest="check_global_state",
        help="do not fail a test that leaves an environment variable, the cwd, sys.path, torch's threads or a global "
        "RNG changed (checked by default)",
    )


def pytest_collection_modifyitems(config, items):
    asked = config.getoption("markexpr") or ""
    for item in items:
        for mark, why in ON_REQUEST.items():
            if item.get_closest_marker(mark) and mark not in asked:
                item.add_marker(pytest.mark.skip(reason=f"on request only: {why}"))
    if config.getoption("reverse"):
        items.reverse()


def pytest_terminal_summary(terminalreporter, config):
    # The order of a random run (-p randomly) is its seed: printed also under -q, which hides the header.
    if config.pluginmanager.hasplugin("randomly"):
        seed = config.getoption("randomly_seed")
        terminalreporter.write_line(f"random order: repeat it with -p randomly --randomly-seed={seed}")


def pytest_unconfigure(config):
    shutil.rmtree(_SESSION_TMP, ignore_errors=True)


# --- global state: every test leaves the process as it found it ----------------------------------------
# A test (or a fixture it sets up) that changes an environment variable, the working directory, sys.path, torch's
# thread count or a global random generator makes later tests depend on the order they run in. The check
# below (from before the test's fixtures are set up to after they are torn down) fails that test, naming
# what changed, and puts the state back so that the tests after it still start clean (always, unless
# --no-check-global-state). Fix a leak with monkeypatch (variables, cwd, sys.path), own_global_state() around
# code that seeds or sets threads as a job's process does (a seeded build, a training run, a rescore), a seeded
# torch.Generator / np.random.default_rng for the test's own draws; mmcal's CLI in the test process: mmcal_cli.
def _global_state() -> dict:
    import random

    import numpy as np

    state = {
        "environment": {k: v for k, v in os.environ.items() if k != "PYTEST_CURRENT_TEST"},  # pytest's own
        "working directory": os.getcwd(),
        "sys.path": list(sys.path),
        "random (Python)": random.getstate(),
        "numpy.random": np.random.get_state(legacy=False),
    }
    if "torch" in sys.modules:  # not imported yet: nothing of torch's to leak
        import torch

        state["torch threads"] = torch.get_num_threads()
        state["torch RNG"] = torch.get_rng_state()
    return state


# Set by a library itself, once per process, the first time it needs it (torch: when inductor's config is first
# read): not a test's doing, and the same whatever order the tests run in.
SET_ONCE_BY_LIBRARIES = {"TORCHINDUCTOR_CACHE_DIR"}
ON_SYS_PATH_ONCE_BY_LIBRARIES = {os.environ["HF_MODULES_CACHE"]}  # transformers' remote-code modules


def _changes(before: dict, after: dict, reseeded: bool = False) -> list[str]:
    """What differs; ``reseeded``: pytest-randomly seeds Python's and numpy's global generators before and after
    every test (``-p randomly``), so a draw from them cannot carry over to the next test and is not compared."""
    import numpy as np

    out = []
    env_a, env_b = before["environment"], after["environment"]
    for name in sorted(set(env_a) | set(env_b)):
        if name in SET_ONCE_BY_LIBRARIES and name not in env_a:
            continue
        if env_a.get(name) != env_b.get(name):
            out.append(f"environment variable {name}: {env_a.get(name)!r} -> {env_b.get(name)!r}")
    for key in ("working directory", "torch threads"):
        if key in before and before[key] != after[key]:
            out.append(f"{key} changed: {before[key]} -> {after[key]}")
    path_a, path_b = (
        [p for p in state["sys.path"] if p not in ON_SYS_PATH_ONCE_BY_LIBRARIES] for state in (before, after)
    )
    if path_a != path_b:
        out.append(f"sys.path changed (added {[p for p in path_b if p not in path_a]})")
    if not reseeded and before["random (Python)"] != after["random (Python)"]:
        out.append("random (Python)'s global state changed (use random.Random(seed))")
    a, b = before["numpy.random"], after["numpy.random"]
    if not reseeded and (
        a["state"]["key"].tobytes() != b["state"]["key"].tobytes() or a["state"]["pos"] != b["state"]["pos"]
    ):
        out.append("numpy.random's global state changed (use np.random.default_rng(seed))")
    if "torch RNG" in before and not np.array_equal(before["torch RNG"].numpy(), after["torch RNG"].numpy()):
        out.append("torch's global RNG changed (use torch.random.fork_rng() or a seeded torch.Generator)")
    return out


def _restore(state: dict) -> None:
    import random

    import numpy as np

    for name in set(os.environ) - set(state["environment"]) - {"PYTEST_CURRENT_TEST"}:
        del os.environ[name]
    os.environ.update(state["environment"])
    os.chdir(state["working directory"])
    sys.path[:] = state["sys.path"] + [p for p in sys.path if p in ON_SYS_PATH_ONCE_BY_LIBRARIES]
    random.setstate(state["random (Python)"])
    np.random.set_state(state["numpy.random"])
    if "torch threads" in state:
        import torch

        torch.set_num_threads(state["torch threads"])
        torch.set_rng_state(state["torch RNG"])


_STATE_BEFORE = pytest.StashKey[dict]()


@contextlib.contextmanager
def own_global_state():
    """Run code that seeds or draws from the global generators, sets torch's thread count or environment variables
    (a seeded model build, a training run: what a Snakemake job does in its own process) and put all of it back
    afterwards."""
    import random

    import numpy as np
    import torch

    py, legacy, threads, env = random.getstate(), np.random.get_state(), torch.get_num_threads(), dict(os.environ)
    with torch.random.fork_rng(devices=[]):
        try:
            yield
        finally:
            random.setstate(py)
            np.random.set_state(legacy)
            torch.set_num_threads(threads)
            for name in set(os.environ) - set(env):
                del os.environ[name]
            os.environ.update(env)


@pytest.hookimpl(wrapper=True, tryfirst=True)
def pytest_runtest_setup(item):
    if not item.config.getoption("check_global_state"):
        return (yield)
    item.stash[_STATE_BEFORE] = _global_state()  # before any fixture: a fixture's leak is its first user's
    return (yield)


@pytest.hookimpl(wrapper=True, tryfirst=True)
def pytest_runtest_teardown(item, nextitem):
    result = yield
    before, after = item.stash.get(_STATE_BEFORE, None), _global_state()
    if before is None:
        return result
    if "torch threads" not in before and "torch threads" in after:  # torch first imported by this test
        before = {**before, "torch threads": after["torch threads"], "torch RNG": after["torch RNG"]}
    reseeded = item.config.pluginmanager.hasplugin("randomly") and item.config.getoption("randomly_reset_seed")
    changes = _changes(before, after, reseeded=bool(reseeded))
    if changes:
        _restore(before)
        pytest.fail(f"{item.nodeid} left global state changed:\n  " + "\n  ".join(changes), pytrace=False)
    return result


@pytest.fixture
def mmcal_cli(monkeypatch):
    """``mmcal``'s command line run in this process: it sets the hub's offline variables for the libraries it
    imports (``mmcal.cli.set_offline``), as the ``mmcal`` process does; here they are put back after the test."""
    from mmcal.cli import HUB_OFFLINE_VARS, main

    for name in HUB_OFFLINE_VARS:
        monkeypatch.setenv(name, os.environ.get(name, "1"))
    return main


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
    with own_global_state():  # the conversion seeds torch
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


def own_items_file(fmnist_items, folder: Path, items=None, name: str = "items.jsonl") -> Path:
    """``fmnist_items`` (or ``items`` made from them) written to ``folder/name``, the session's images linked
    beside it: a test writes its own items file, never into the shared fixture's folder."""
    from mmcal.items import write_items

    root, all_items = fmnist_items
    folder.mkdir(parents=True, exist_ok=True)
    if not (folder / "images").exists():
        (folder / "images").symlink_to(root / "images")
    write_items(all_items if items is None else items, folder / name)
    return folder / name


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
