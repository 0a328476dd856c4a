"""kill -9 during training: the vision-tower stage (the same loop, checkpointing and restore as stages 1 and 2,
mmcal.tinyllava.training) is killed after its first checkpoint; started again it continues from that step, and
its final weights equal an uninterrupted run's byte for byte (same thread count)."""

from __future__ import annotations

import hashlib
import json

import pytest

from conftest import FMNIST_ROOT
from faults.faultkit import PYTHON, kill_when, run, start
from mmcal.tinyllava.training import checkpoint_dir_for

pytestmark = pytest.mark.faults_slow

CFG = {
    "fmnist_root": FMNIST_ROOT,
    "vision": {"hidden_size": 64, "intermediate_size": 128, "num_layers": 2, "num_heads": 2, "epochs": 1,
               "batch_size": 128, "n_train": 4096, "warmup": 4, "threads": 1},
}  # fmt: skip
TRAIN = """
import json, logging, sys
logging.basicConfig(level=logging.INFO)
from mmcal.tinyllava.vision import train_vision
train_vision(json.loads(sys.argv[1]), sys.argv[2])
"""


def _weights(folder):
    return {p.name: hashlib.sha256(p.read_bytes()).hexdigest() for p in sorted(folder.glob("*.safetensors"))}


def test_kill9_during_training_resumes_to_identical_weights(tmp_path):
    script = tmp_path / "train.py"
    script.write_text(TRAIN)

    def train(out):
        return [PYTHON, str(script), json.dumps(CFG), str(out)]

    rc, text = run(train(tmp_path / "straight"), tmp_path, MMCAL_CHECKPOINT_EVERY=0)
    assert rc == 0, text
    reference = _weights(tmp_path / "straight")
    assert reference

    out = tmp_path / "killed"
    checkpoint = checkpoint_dir_for(out) / "checkpoint.pt"
    kill_when(start(train(out), tmp_path, MMCAL_CHECKPOINT_EVERY=8), checkpoint.exists)
    assert not (out / "model.safetensors").exists()
    rc, text = run(train(out), tmp_path, MMCAL_CHECKPOINT_EVERY=8)
    assert rc == 0, text
    resumed_at = [line for line in text.splitlines() if "resuming from" in line]
    assert resumed_at and str(checkpoint) in resumed_at[0], text
    assert _weights(out) == reference, (resumed_at, _weights(out), reference)
    assert not checkpoint.parent.exists()  # removed once the stage is done
    print("straight:", reference, "\nresumed:", _weights(out), "\n", resumed_at[0])
