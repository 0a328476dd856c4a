"""mmcal.engine.qwen_remote_compat: loading Qwen's remote modeling code under transformers 5.

CI has no remote code (it is on no registry and may not be committed), so each fix is tested on the labelled
STAND-IN remote code of tests/fixtures/qwen_remote_standin/, which reproduces each failure mode of the real code
under the real transformers (the first test shows that it does). The fixes on the real code, compared with
transformers 4.32: docs/qwen-remote-code.md.
"""

from __future__ import annotations

import contextlib
import importlib
import json
import shutil
import sys
from pathlib import Path

import pytest
import torch

from conftest import own_global_state
from mmcal.engine import qwen_remote_compat as qc
from mmcal.errors import ConfigError, MmcalError

STANDIN = Path(__file__).parent / "fixtures" / "qwen_remote_standin"
AUTO_MAP = {
    "AutoConfig": "configuration_standin.StandInQwenConfig",
    "AutoModelForCausalLM": "modeling_standin.QWenLMHeadModel",
}
IDS = torch.tensor([[3, 14, 15, 9, 26, 5, 35, 8, 9, 7]])  # 10 positions: past seq_length (4), logn_tensor acts
V5 = qc.transformers_major() >= 5


def _checkpoint(folder: Path, layout: str = "safetensors", **config):
    """A stand-in checkpoint in ``folder`` (precision flags unset, as on the hub) and the model it was saved from,
    built directly (real tensors everywhere, the constructors' own values) in float32."""
    from transformers import AutoConfig
    from transformers.dynamic_module_utils import get_class_from_dynamic_module

    folder.mkdir(parents=True)
    for f in STANDIN.glob("*.py"):
        shutil.copy(f, folder)
    (folder / "config.json").write_text(json.dumps({"model_type": "standin-qwen", "auto_map": AUTO_MAP, **config}))
    cfg = AutoConfig.from_pretrained(folder, trust_remote_code=True, fp32=True)
    with qc.stand_ins_for_unimportable([qc.STREAM_GENERATOR]):  # the class passes transformers' import check
        model_class = get_class_from_dynamic_module(AUTO_MAP["AutoModelForCausalLM"], folder)
    with torch.random.fork_rng(devices=[]):  # seeded weights; the global generator left as it was
        torch.manual_seed(0)
        built = model_class(cfg).eval()
    if layout == "bin":
        torch.save(built.state_dict(), folder / "pytorch_model.bin")
    else:
        built.save_pretrained(folder, max_shard_size="1KB" if layout == "sharded" else "5GB")
    saved = json.loads((folder / "config.json").read_text())
    (folder / "config.json").write_text(json.dumps({**saved, "bf16": False, "fp16": False, "fp32": False}))
    return folder, built


@pytest.fixture(autouse=True)
def _loading_keeps_global_state_to_itself():
    """A model built or loaded here draws its missing tensors from torch's global generator."""
    with own_global_state():
        yield


def _logits(model) -> torch.Tensor:
    with torch.no_grad():
        return model(input_ids=IDS).logits


@pytest.mark.skipif(not V5, reason="the failure modes are transformers 5's")
def test_the_stand_in_fails_under_transformers_5_as_the_real_code_does(tmp_path):
    """Without mmcal's fixes, the stand-in shows each failure the real remote code shows under transformers 5."""
    from transformers import AutoModelForCausalLM

    # A folder name of its own: transformers names the remote module after the folder and, once a model of that
    # module was loaded in this process (by another test, with the stand-in), reuses the class without the check.
    folder, built = _checkpoint(tmp_path / "never_loaded")
    try:
        importlib.import_module(qc.STREAM_GENERATOR)
    except ImportError:
        with pytest.raises(ImportError):  # 1: the remote-code import check
            AutoModelForCausalLM.from_pretrained(folder, trust_remote_code=True)
    with qc.stand_ins_for_unimportable([qc.STREAM_GENERATOR]):
        auto = AutoModelForCausalLM.from_pretrained(folder, trust_remote_code=True, dtype=torch.float32)
        plain = AutoModelForCausalLM.from_pretrained(folder, trust_remote_code=True, fp32=True, dtype=torch.float32)
    assert auto.dtype == torch.bfloat16  # 5: the model picked its own precision, not the dtype asked for
    loaded, saved = plain.state_dict(), built.state_dict()
    c_proj, c_attn = "transformer.h.0.attn.c_proj.weight", "transformer.h.0.attn.c_attn.weight"
    assert not torch.equal(loaded[c_proj], saved[c_proj]) and torch.equal(loaded[c_attn], saved[c_attn])  # 4
    assert plain.transformer.rotary_emb.inv_freq.device.type == "meta"  # 3
    with pytest.raises(AttributeError, match="get_head_mask"):  # 2
        plain(input_ids=IDS)


@pytest.mark.parametrize("as_buffers", [False, True], ids=["plain attributes (Qwen-VL-Chat)", "buffers (Qwen-7B)"])
@pytest.mark.parametrize("layout", ["safetensors", "sharded", "bin"])
def test_load_equals_the_model_as_built(tmp_path, as_buffers, layout):
    """With the fixes, the loaded model is the one that was saved: the same weights, the constructors' own values
    for the tensors outside the checkpoint, the same logits bit for bit."""
    folder, built = _checkpoint(tmp_path / "ckpt", layout, tensors_as_buffers=as_buffers)
    model, fixes = qc.load_causal_lm("standin", str(folder), None, torch.float32)
    if V5:
        assert set(fixes) >= {"no _init_weights on load", "get_head_mask", "recomputed tensors"}
    assert "precision flags" in fixes and model.config.fp32 and not model.config.bf16
    assert model.dtype == torch.float32
    for name, tensor in built.state_dict().items():
        assert torch.equal(model.state_dict()[name], tensor), name
    attrs = ("rotary_emb.inv_freq", "h.0.attn.logn_tensor", "h.1.attn.masked_bias", "h.1.attn.cache_qmax")
    for name in (*attrs, "h.0.attn.cache_qmin"):
        path, attr = name.rsplit(".", 1)
        want = getattr(built.transformer.get_submodule(path), attr, None)
        got = getattr(model.transformer.get_submodule(path), attr, None)
        assert (want is None) == (got is None) == (not as_buffers and "cache" in name), name
        if want is not None:
            assert got.dtype == want.dtype and got.device.type == "cpu" and torch.equal(got, want), name
    assert torch.equal(_logits(model), _logits(built))
    assert qc.STREAM_GENERATOR not in sys.modules or not getattr(
        sys.modules[qc.STREAM_GENERATOR], "__mmcal_stand_in__", None
    ), "the stand-in outlives the load"
    base = type(model.transformer).__mro__[1]
    assert base._init_weights is not qc._keep_loaded  # the remote _init_weights is back after loading


def test_the_weight_check_catches_the_redraw(tmp_path, monkeypatch):
    """Without the no-re-initialisation fix transformers 5 re-draws c_proj: the check after loading says so."""
    folder, _ = _checkpoint(tmp_path / "ckpt")
    if V5:
        monkeypatch.setattr(qc, "remote_init_weights_disabled", lambda cls: contextlib.nullcontext([]))
        with pytest.raises(MmcalError, match=r"2 of \d+ checked weights differ .*h\.0\.attn\.c_proj\.weight"):
            qc.load_causal_lm("standin", str(folder), None, torch.float32)
        monkeypatch.undo()
    model, _ = qc.load_causal_lm("standin", str(folder), None, torch.float32)
    with torch.no_grad():
        model.lm_head.weight[3, 1] += 1e-3
    with pytest.raises(MmcalError, match=r"lm_head\.weight \(max \|diff\| 0\.001"):
        qc.check_weights(model, str(folder), None, "standin")


def test_precision_follows_the_dtype_asked_for(tmp_path, monkeypatch):
    folder, built = _checkpoint(tmp_path / "ckpt")
    model, _ = qc.load_causal_lm("standin", str(folder), None, torch.bfloat16)
    assert model.dtype == torch.bfloat16 and (model.config.bf16, model.config.fp16, model.config.fp32) == (
        True,
        False,
        False,
    )
    assert torch.equal(model.lm_head.weight, built.lm_head.weight.to(torch.bfloat16))
    with pytest.raises(ConfigError, match="models.standin: Qwen's remote code runs in bfloat16, float16 or float32"):
        qc.load_causal_lm("standin", str(folder), None, torch.float64)
    monkeypatch.setattr(qc, "set_precision", lambda config, dtype, name: None)  # the flags left as the hub sets them
    with pytest.raises(MmcalError, match="loaded in torch.bfloat16, not the torch.float32 asked for"):
        qc.load_causal_lm("standin", str(folder), None, torch.float32)


@pytest.mark.skipif(not V5, reason="only transformers 5 leaves tensors uninitialised")
def test_a_tensor_without_a_known_formula_is_an_error(tmp_path):
    folder, _ = _checkpoint(tmp_path / "ckpt", mystery_tensor=True)
    with pytest.raises(
        MmcalError, match=r"knows no formula for them .*QWenAttention\.mystery \(transformer\.h\.0\.attn\)"
    ):
        qc.load_causal_lm("standin", str(folder), None, torch.float32)


def test_a_tensor_missing_from_the_checkpoint_is_an_error(tmp_path):
    from safetensors.torch import load_file, save_file

    folder, _ = _checkpoint(tmp_path / "ckpt")
    weights = load_file(folder / "model.safetensors")
    del weights["transformer.h.1.attn.c_attn.bias"]
    save_file(weights, folder / "model.safetensors", metadata={"format": "pt"})
    with pytest.raises(MmcalError, match=r"lacks or mismatches .*missing \['transformer\.h\.1\.attn\.c_attn\.bias'\]"):
        qc.load_causal_lm("standin", str(folder), None, torch.float32)


def test_stand_in_modules_only_for_what_does_not_import(tmp_path, monkeypatch):
    broken = tmp_path / "mmcal_test_broken_pkg"
    broken.mkdir()
    (broken / "__init__.py").write_text("from json import NoSuchName\n")  # imports, then fails, like tsg 0.0.5
    monkeypatch.syspath_prepend(str(tmp_path))
    names = ["mmcal_test_broken_pkg", "mmcal_test_absent_pkg", "json"]
    with qc.stand_ins_for_unimportable(names) as stood_in:
        assert stood_in == ["mmcal_test_broken_pkg", "mmcal_test_absent_pkg"]
        reasons = [importlib.import_module(name).__mmcal_stand_in__ for name in stood_in]
        assert reasons[0].startswith("ImportError: cannot import name 'NoSuchName'")
        assert reasons[1] == "ModuleNotFoundError: No module named 'mmcal_test_absent_pkg'"
        assert not hasattr(sys.modules["json"], "__mmcal_stand_in__")
    assert "mmcal_test_broken_pkg" not in sys.modules and "mmcal_test_absent_pkg" not in sys.modules


def test_checked_names_cover_every_redrawn_tensor_and_each_role_at_both_ends():
    names = [f"t.h.{i}.{p}" for i in range(4) for p in ("ln_1.weight", "attn.c_proj.weight", "mlp.w1.weight")]
    names += ["t.wte.weight", "t.visual.blocks.0.attn.out.weight", "t.visual.blocks.1.attn.out.weight"]
    assert qc.checked_names(names) == [
        "t.h.0.ln_1.weight",
        "t.h.3.ln_1.weight",
        *(f"t.h.{i}.attn.c_proj.weight" for i in range(4)),
        "t.h.0.mlp.w1.weight",
        "t.h.3.mlp.w1.weight",
        "t.wte.weight",
        "t.visual.blocks.0.attn.out.weight",
        "t.visual.blocks.1.attn.out.weight",
    ]


def test_the_added_get_head_mask_takes_no_head_mask():
    assert qc._no_head_mask(object(), None, 3) == [None, None, None]
    with pytest.raises(NotImplementedError, match="takes no head mask"):
        qc._no_head_mask(object(), torch.ones(2), 3)
