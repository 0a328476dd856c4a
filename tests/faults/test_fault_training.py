"""kill -9 during training: each stage (vision tower, stage 1, stage 2; the same loop, checkpointing and restore,
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
    "n_validation": 200,
    "n_eval": 8,
    "vision": {"hidden_size": 64, "intermediate_size": 128, "num_layers": 2, "num_heads": 2, "epochs": 1,
               "batch_size": 128, "n_train": 4096, "warmup": 4, "threads": 1},
    # stages 1 and 2 on the real SmolLM2-135M: 12 short steps, a checkpoint every 4
    "stage1": {"steps": 12, "batch_size": 4, "warmup": 1},
    "stage2": {"steps": 12, "batch_size": 4, "warmup": 1},
}  # fmt: skip
TRAIN = """
import json, logging, sys
logging.basicConfig(level=logging.INFO)
from mmcal.tinyllava.stage1 import train_stage1
from mmcal.tinyllava.stage2 import train_stage2
from mmcal.tinyllava.vision import train_vision
stage, cfg, out, parents = sys.argv[1], json.loads(sys.argv[2]), sys.argv[3], sys.argv[4:]
{"vision": train_vision, "stage1": train_stage1, "stage2": train_stage2}[stage](cfg, *parents, out)
"""


def _weights(folder):
    return {p.name: hashlib.sha256(p.read_bytes()).hexdigest() for p in sorted(folder.glob("*.safetensors"))}


def _kill_and_resume(tmp_path, stage: str, parents: list[str], every: int):
    """Train ``stage`` straight, then killed after its first checkpoint and resumed; both output folders."""
    script = tmp_path / "train.py"
    script.write_text(TRAIN)

    def train(out):
        return [PYTHON, str(script), stage, json.dumps(CFG), str(out), *parents]

    straight = tmp_path / f"{stage}-straight"
    rc, text = run(train(straight), tmp_path, MMCAL_CHECKPOINT_EVERY=0)
    assert rc == 0, text
    reference = _weights(straight)
    assert reference

    out = tmp_path / f"{stage}-killed"
    checkpoint = checkpoint_dir_for(out) / "checkpoint.pt"
    kill_when(start(train(out), tmp_path, MMCAL_CHECKPOINT_EVERY=every), checkpoint.exists)
    assert not (out / "model.safetensors").exists()
    rc, text = run(train(out), tmp_path, MMCAL_CHECKPOINT_EVERY=every)
    assert rc == 0, text
    resumed_at = [line for line in text.splitlines() if "resuming from" in line]
    assert resumed_at and str(checkpoint) in resumed_at[0], text
    assert _weights(out) == reference, (resumed_at, _weights(out), reference)
    assert not checkpoint.parent.exists()  # removed once the stage is done
    print(stage, "straight:", reference, "\nresumed:", _weights(out), "\n", resumed_at[0])
    return straight


def test_kill9_during_training_resumes_to_identical_weights(tmp_path):
    _kill_and_resume(tmp_path, "vision", [], every=8)


def test_kill9_during_stages_1_and_2_resumes_to_identical_weights(tmp_path, smollm2_dir):
    """The long stages: the projector (stage 1) and the language model's layers (stage 2), each killed after
    step 4 of 12 and resumed, the second on the first's uninterrupted output."""
    rc, text = run([PYTHON, "-c", TRAIN, "vision", json.dumps(CFG), str(tmp_path / "vision")], tmp_path)
    assert rc == 0, text
    stage1 = _kill_and_resume(tmp_path, "stage1", [str(tmp_path / "vision"), str(smollm2_dir)], every=4)
    _kill_and_resume(tmp_path, "stage2", [str(stage1)], every=4)
