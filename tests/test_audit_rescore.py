"""Re-execution audit on the test study's records: the recorded model re-scores its items within
tolerance, and a model copy with one perturbed weight tensor is caught."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from safetensors.torch import load_file, save_file

from conftest import own_global_state
from mmcal.audit.rescore import TOLERANCE, rescore

RECORDS = "data/records/tiny-llava-stage2/fmnist/image/default.parquet"
MODEL = "data/models/tiny-llava-stage2"


@pytest.fixture(autouse=True)
def _rescoring_keeps_its_threads_to_itself():
    """The rescore sets torch's threads as the scoring job ran (its own process in the workflow)."""
    with own_global_state():
        yield


def test_rescore_equals_the_stored_rows(test_study, capsys):
    assert rescore(test_study / RECORDS, 2, "config/test.yaml", as_json=True) == 0
    report = json.loads(capsys.readouterr().out)
    assert report["device"] == "cpu" and report["dtype"] == "float32"
    assert report["tolerance"] == TOLERANCE[("cpu", "float32")] == 1e-5
    assert report["model_fingerprint"]["equal"] and report["prompt_hash"]["equal"]
    assert len(report["items"]) == 2 and report["seed"] == 0
    assert set(report["readouts"]) == {"letter_restricted", "letter_full_vocab", "option_loglik"}
    for r in report["readouts"].values():
        assert r["n"] == 2 and r["pred_changed"] == 0
        assert r["max_abs_diff_confidence"] < 1e-5 and r["max_abs_diff_option_probs"] < 1e-5
    assert report["ok"] and report["max_abs_diff"] < 1e-5


def _link_tree(src: Path, dst: Path, own: Path) -> None:
    """``dst`` mirrors ``src`` with symlinks, except the folder ``own`` (relative), whose files are
    linked one by one so that one of them can be replaced."""
    for name in ("config", "workflow", "data/datasets"):
        (dst / name).parent.mkdir(parents=True, exist_ok=True)
        (dst / name).symlink_to(src / name)
    (dst / RECORDS).parent.mkdir(parents=True)
    (dst / RECORDS).symlink_to(src / RECORDS)
    (dst / own).mkdir(parents=True)
    for f in (src / own).iterdir():
        (dst / own / f.name).symlink_to(f)


def test_a_perturbed_weight_is_drift(test_study, tmp_path, capsys):
    _link_tree(test_study, tmp_path, Path(MODEL))
    weights = tmp_path / MODEL / "model.safetensors"
    tensors = load_file(weights.resolve())
    # One weight tensor, the language model's final norm. The fingerprint hashes only the first MiB of
    # the weights file and may not see this change; re-scoring does.
    name = next(k for k in sorted(tensors) if k.endswith("norm.weight") and "layers" not in k and "vision" not in k)
    tensors[name] = tensors[name] * 1.05
    weights.unlink()
    save_file(tensors, weights, metadata={"format": "pt"})
    assert rescore(tmp_path / RECORDS, 1, "config/test.yaml") == 1
    text = capsys.readouterr().out
    assert "ABOVE TOLERANCE" in text and "DRIFT" in text, (name, text)


@pytest.mark.parametrize("device,dtype", [("cuda:0", "bfloat16"), ("cpu", "float8")])
def test_tolerance_is_per_device_and_dtype(device, dtype):
    from mmcal.audit.rescore import tolerance_for
    from mmcal.errors import ConfigError

    if dtype == "float8":
        with pytest.raises(ConfigError, match="float8"):
            tolerance_for(device, dtype)
    else:
        assert tolerance_for(device, dtype) == 2e-2
