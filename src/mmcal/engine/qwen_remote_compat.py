"""Qwen's remote modeling code (Qwen-VL-Chat, Qwen-7B; written for transformers 4.32) loaded under transformers 5.

Run as it is under the pinned transformers 5.24, that code fails in four ways, two of them silently (measured on
the real remote code: docs/qwen-remote-code.md):

1. transformers' remote-code import check fails: ``modeling_qwen.py`` imports ``transformers_stream_generator``
   (for ``chat_stream`` only), whose last release (0.0.5) imports ``DisjunctiveConstraint``, gone in 5.x;
2. ``QWenModel.forward`` calls ``self.get_head_mask``, gone from ``PreTrainedModel`` in 5.x;
3. 5.x builds the model on the meta device and loads the checkpoint's tensors into it: tensors the constructors
   make as plain attributes stay on the meta device ("Cannot copy out of meta tensor"), and non-persistent
   buffers are re-created empty (uninitialised memory, no error: Qwen-7B's logn_tensor, past seq_length);
4. after loading, 5.x runs the model's ``_init_weights`` on every module whose own tensors were not all loaded
   (the attention modules, for their non-persistent buffers); QWen's re-draws the module's ``c_proj.weight`` in
   place: the loaded weights change, logits move by ~1, no error.

:func:`load_causal_lm` loads the model with a targeted fix for each of these that it finds (each logged once per
process), then checks what it loaded: no missing or mismatched checkpoint tensors, nothing left uninitialised,
weights equal to the checkpoint's (:func:`check_weights`) and the precision asked for. transformers itself is not
changed; the remote classes are, only as said (``_init_weights`` only while loading).

The remote model chooses its own precision from its config's ``bf16``/``fp16``/``fp32`` flags (none set: bf16 or
fp16 when CUDA supports it), so the flags are set here from the dtype asked for (:func:`set_precision`).
"""

from __future__ import annotations

import contextlib
import importlib
import json
import logging
import math
import re
import sys
import types
from collections import defaultdict
from pathlib import Path

from mmcal.errors import ConfigError, MmcalError

log = logging.getLogger(__name__)

STREAM_GENERATOR = "transformers_stream_generator"
PRECISION_FLAGS = ("bf16", "fp16", "fp32")
# the attention module's output projection, which QWen's _init_weights re-draws: every one is checked
REDRAWN_ROLE = "attn.c_proj.weight"
# checkpoint layouts in transformers' order of preference (safetensors first), each with its index for shards
WEIGHT_FILES = (
    ("model.safetensors.index.json", "model.safetensors"),
    ("pytorch_model.bin.index.json", "pytorch_model.bin"),
)

_logged: set[str] = set()


def _note(fixes: list[str], key: str, message: str) -> None:
    fixes.append(key)
    if message not in _logged:  # once per process (a job loads one model), again only if it says something else
        _logged.add(message)
        log.info("Qwen remote code: %s", message)


def transformers_major() -> int:
    import transformers

    return int(transformers.__version__.split(".")[0])


# --- 1. the import check ---------------------------------------------------------------------------------------


@contextlib.contextmanager
def stand_ins_for_unimportable(names):
    """While the block runs, an empty module in ``sys.modules`` for each of ``names`` that raises ImportError when
    imported; yields those names. transformers imports every module a remote file names (even one imported inside
    a function) before it runs the file; a module used only by code that is never called may stand in empty."""
    stood_in = {}
    for name in names:
        try:
            importlib.import_module(name)
        except ImportError as exc:
            module = types.ModuleType(name, "mmcal's empty stand-in for a module that does not import")
            module.__mmcal_stand_in__ = f"{type(exc).__name__}: {exc}"  # why: said in the log
            sys.modules[name] = stood_in[name] = module
    try:
        yield list(stood_in)
    finally:
        for name, module in stood_in.items():
            if sys.modules.get(name) is module:
                del sys.modules[name]


# --- 2. get_head_mask -------------------------------------------------------------------------------------------


def _no_head_mask(self, head_mask, num_hidden_layers: int, is_attention_chunked: bool = False):
    """``PreTrainedModel.get_head_mask`` of transformers 4 for the only case scoring meets: no head mask, one
    ``None`` per layer."""
    if head_mask is not None:
        raise NotImplementedError(
            f"{type(self).__name__}.get_head_mask was added by mmcal (transformers 5 has none) and takes no head mask"
        )
    return [None] * num_hidden_layers


def add_missing_get_head_mask(model) -> list[str]:
    """Give every ``PreTrainedModel`` class in ``model`` that lacks ``get_head_mask`` :func:`_no_head_mask`;
    returns the names of the classes that have it (added now or by an earlier load of the same remote code)."""
    from transformers import PreTrainedModel

    added = {}
    for module in model.modules():
        cls = type(module)
        if isinstance(module, PreTrainedModel) and not hasattr(cls, "get_head_mask"):
            cls.get_head_mask = _no_head_mask
        if isinstance(module, PreTrainedModel) and getattr(cls, "get_head_mask", None) is _no_head_mask:
            added[cls.__name__] = True
    return list(added)


# --- 3. tensors the checkpoint does not hold ---------------------------------------------------------------------
# Values as the remote constructors compute them (Qwen-VL-Chat: plain attributes; Qwen-7B: non-persistent buffers),
# in float64 or, where the constructor computes in float32, in float32; cast to the placeholder's dtype.


def _rotary_inv_freq(module, like):
    # rotary frequencies 1 / base^(2i / dim), i < dim / 2, computed in float32 (the constructor's arithmetic)
    import torch

    return 1.0 / (module.base ** (torch.arange(0, module.dim, 2).float() / module.dim))


def _logn_scale(module, like):
    # the query scale at position p = 1, 2, ...: log_L(p) past the trained length L (seq_length), else 1
    import torch

    trained = module.seq_length
    values = [math.log(p, trained) if p > trained else 1.0 for p in range(1, like.shape[1] + 1)]
    return torch.tensor(values, dtype=torch.float64).reshape(like.shape)


def _constant(value: float):
    def fill(module, like):
        import torch

        return torch.full(like.shape, value, dtype=torch.float64)

    return fill


RECOMPUTE = {
    ("RotaryEmbedding", "inv_freq"): _rotary_inv_freq,
    ("QWenAttention", "logn_tensor"): _logn_scale,
    ("QWenAttention", "masked_bias"): _constant(-1e4),  # unused by forward
    ("QWenAttention", "cache_qmax"): _constant(255),  # uint8 range, for the KV-cache quantisation (off)
    ("QWenAttention", "cache_qmin"): _constant(0),
}


def uninitialised_tensors(model, non_persistent_buffers: bool) -> list[tuple[str, object, str, object, bool]]:
    """(module path, module, attribute, tensor, is_buffer) of every plain tensor attribute on the meta device and,
    if ``non_persistent_buffers`` (transformers 5: re-created empty), every non-persistent buffer."""
    import torch

    out = []
    for path, module in model.named_modules():
        for attr, value in vars(module).items():
            if isinstance(value, torch.Tensor) and value.device.type == "meta":
                out.append((path, module, attr, value, False))
        if non_persistent_buffers:
            for attr in sorted(module._non_persistent_buffers_set):
                if module._buffers.get(attr) is not None:
                    out.append((path, module, attr, module._buffers[attr], True))
    return out


def restore_uninitialised(model, non_persistent_buffers: bool) -> list[str]:
    """Recompute what :func:`uninitialised_tensors` finds with :data:`RECOMPUTE`; returns ``Class.attr`` names.
    A tensor with no known formula, or whose formula gives another shape, is an error (nothing is changed)."""
    found = uninitialised_tensors(model, non_persistent_buffers)
    unknown = [f"{type(m).__name__}.{a} ({p})" for p, m, a, _, _ in found if (type(m).__name__, a) not in RECOMPUTE]
    if unknown:
        raise MmcalError(
            "transformers left these tensors of the remote model uninitialised and mmcal knows no formula for them "
            f"(a revision of the remote code it was not checked on?): {', '.join(unknown[:8])}"
        )
    values = []
    for path, module, attr, like, _ in found:
        try:
            value = RECOMPUTE[(type(module).__name__, attr)](module, like)
        except AttributeError as exc:  # the formula reads the module's own settings (dim, base, seq_length)
            raise MmcalError(f"{type(module).__name__}.{attr} ({path}): cannot recompute it: {exc}") from None
        if tuple(value.shape) != tuple(like.shape):
            raise MmcalError(
                f"{type(module).__name__}.{attr} ({path}): mmcal's formula gives shape {tuple(value.shape)}, the "
                f"remote code made {tuple(like.shape)} (a revision it was not checked on?)"
            )
        values.append(value.to(like.dtype))
    for (_, module, attr, like, is_buffer), value in zip(found, values):
        if is_buffer:
            module._buffers[attr] = value.to(like.device)
        else:  # a plain attribute: on the CPU, where the constructor made it
            setattr(module, attr, value)
    return sorted({f"{type(m).__name__}.{a}" for _, m, a, _, _ in found})


# --- 4. no re-initialisation of loaded weights ------------------------------------------------------------------


def _keep_loaded(self, module) -> None:
    """Stands in for a remote ``_init_weights`` while transformers 5 loads: every tensor comes from the checkpoint
    (missing keys are refused after loading), so nothing is to be drawn."""


def _is_remote(cls: type) -> bool:
    return cls.__module__.split(".")[0] not in ("transformers", "torch", "builtins")


@contextlib.contextmanager
def remote_init_weights_disabled(model_class: type | None):
    """While the block runs, every remote class in ``model_class``'s MRO that defines its own ``_init_weights``
    has it replaced by :func:`_keep_loaded`; yields their names. ``None``: nothing is replaced."""
    owners = [k for k in (model_class.__mro__ if model_class else ()) if "_init_weights" in vars(k) and _is_remote(k)]
    saved = [(k, vars(k)["_init_weights"]) for k in owners]
    for k in owners:
        k._init_weights = _keep_loaded
    try:
        yield [k.__name__ for k in owners]
    finally:
        for k, original in saved:
            k._init_weights = original


# --- the loaded weights against the checkpoint -------------------------------------------------------------------


def checkpoint_files(path: str, revision: str | None) -> dict[str, Path]:
    """Tensor name → the checkpoint file holding it (a local folder or the hub cache), as transformers picks the
    files: safetensors before ``pytorch_model.bin``, through the index when sharded."""
    from transformers.utils import cached_file

    def find(filename):
        found = cached_file(
            path,
            filename,
            revision=revision,
            _raise_exceptions_for_missing_entries=False,
            _raise_exceptions_for_connection_errors=False,
        )
        return Path(found) if found else None

    for index_name, single_name in WEIGHT_FILES:
        index = find(index_name)
        if index is not None:
            weight_map = json.loads(index.read_text())["weight_map"]
            files = {f: find(f) for f in set(weight_map.values())}
            absent = sorted(f for f, p in files.items() if p is None)
            if absent:
                raise MmcalError(f"{path}: {index_name} names shards that are not there: {absent[:4]}")
            return {key: files[f] for key, f in weight_map.items()}
        single = find(single_name)
        if single is not None:
            return {key: single for key in _CheckpointReader(single).keys()}
    raise MmcalError(f"{path}: no checkpoint file ({', '.join(n for pair in WEIGHT_FILES for n in pair)})")


class _CheckpointReader:
    """Lazy read access to one checkpoint file (safetensors or a torch zip file, memory-mapped)."""

    def __init__(self, file: Path):
        import torch

        if file.suffix == ".safetensors":
            from safetensors import safe_open

            self._st = safe_open(str(file), framework="pt")
            self.keys, self.get = self._st.keys, self._st.get_tensor
        else:
            state = torch.load(file, map_location="cpu", mmap=True, weights_only=True)
            self.keys, self.get = state.keys, state.__getitem__


def checked_names(names: list[str]) -> list[str]:
    """Which parameters :func:`check_weights` compares: every attention output projection (``attn.c_proj.weight``,
    what QWen's ``_init_weights`` re-draws) and, of every other role (the name with block numbers as ``*``), the
    first and the last block's."""
    by_role = defaultdict(list)
    for name in names:
        by_role[re.sub(r"\.\d+\.", ".*.", name)].append(name)
    out = []
    for role, members in by_role.items():
        out.extend(members if role.endswith(REDRAWN_ROLE) else dict.fromkeys([members[0], members[-1]]))
    return out


def check_weights(model, path: str, revision: str | None, name: str) -> int:
    """The loaded parameters of :func:`checked_names` equal the checkpoint's tensors (cast to the parameter's dtype,
    as loading casts them), bit for bit; returns how many were compared. A difference is an error."""
    import torch

    files = checkpoint_files(path, revision)
    params = dict(model.named_parameters())
    names = checked_names([n for n in params if n in files])
    if not names:
        raise MmcalError(f"model {name!r}: no parameter of the loaded model is named as in {path}'s checkpoint")
    opened: dict[Path, _CheckpointReader] = {}
    wrong = []
    for n in names:
        if files[n] not in opened:
            opened[files[n]] = _CheckpointReader(files[n])
        weights = opened[files[n]]
        saved = weights.get(n)
        loaded = params[n].detach()
        if loaded.shape != saved.shape or not torch.equal(loaded.cpu(), saved.to(loaded.dtype)):
            diff = (loaded.cpu().double() - saved.double()).abs().max().item() if loaded.shape == saved.shape else None
            wrong.append(f"{n} (max |diff| {diff})" if diff is not None else f"{n} (shape {tuple(saved.shape)})")
    if wrong:
        raise MmcalError(
            f"model {name!r}: after loading, {len(wrong)} of {len(names)} checked weights differ from the checkpoint "
            f"in {path} (re-initialised while loading?): {', '.join(wrong[:4])}"
        )
    return len(names)


# --- precision -----------------------------------------------------------------------------------------------------


def set_precision(config, dtype, name: str) -> str | None:
    """Set the config's ``bf16``/``fp16``/``fp32`` flags (the remote code's precision switch) to ``dtype``; returns
    a note when that changes what the checkpoint's config said, else None. Other dtypes are refused."""
    import torch

    flags = {torch.bfloat16: "bf16", torch.float16: "fp16", torch.float32: "fp32"}
    if dtype not in flags:
        raise ConfigError(
            f"models.{name}: Qwen's remote code runs in bfloat16, float16 or float32 (its config flags "
            f"bf16/fp16/fp32), not {dtype}"
        )
    before = {f: bool(getattr(config, f, False)) for f in PRECISION_FLAGS}
    for flag in PRECISION_FLAGS:
        setattr(config, flag, flag == flags[dtype])
    if before != {f: f == flags[dtype] for f in PRECISION_FLAGS}:
        return f"config precision flags set to {flags[dtype]}=true for dtype {dtype} (the checkpoint's: {before})"
    return None


# --- all together --------------------------------------------------------------------------------------------------


def load_causal_lm(name: str, path: str, revision: str | None, dtype) -> tuple[object, list[str]]:
    """The remote ``AutoModelForCausalLM`` of ``path`` in ``dtype`` (a torch dtype), on the CPU, with the fixes it
    needs under the installed transformers; returns the model and the keys of the fixes applied."""
    from transformers import AutoConfig, AutoModelForCausalLM
    from transformers.dynamic_module_utils import get_class_from_dynamic_module

    fixes: list[str] = []
    v5 = transformers_major() >= 5
    kw = {"revision": revision, "trust_remote_code": True}
    with stand_ins_for_unimportable([STREAM_GENERATOR]) as stood_in:
        if stood_in:
            _note(
                fixes,
                "stand-in " + STREAM_GENERATOR,
                f"{STREAM_GENERATOR} does not import ({sys.modules[STREAM_GENERATOR].__mmcal_stand_in__}); an empty "
                "stand-in passes transformers' import check while loading (modeling_qwen.py needs it for chat_stream "
                "only, which scoring never calls)",
            )
        config = AutoConfig.from_pretrained(path, **kw)
        note = set_precision(config, dtype, name)
        if note:
            _note(fixes, "precision flags", note)
        ref = (getattr(config, "auto_map", None) or {}).get("AutoModelForCausalLM")
        if not ref:
            raise MmcalError(f"model {name!r}: {path} names no remote model class (auto_map.AutoModelForCausalLM)")
        model_class = get_class_from_dynamic_module(ref, path, revision=revision)
        with remote_init_weights_disabled(model_class if v5 else None) as owners:
            if owners:
                _note(
                    fixes,
                    "no _init_weights on load",
                    f"{', '.join(owners)}._init_weights skipped while loading (transformers 5 runs it over loaded "
                    "modules; QWen's re-draws attn.c_proj.weight)",
                )
            model, info = AutoModelForCausalLM.from_pretrained(
                path, config=config, dtype=dtype, output_loading_info=True, **kw
            )
    missing, mismatched = sorted(info.get("missing_keys") or []), list(info.get("mismatched_keys") or [])
    if missing or mismatched:  # their _init_weights was skipped: they would hold whatever memory they got
        raise MmcalError(
            f"model {name!r}: the checkpoint in {path} lacks or mismatches tensors of the model: "
            f"missing {missing[:6]}, mismatched {mismatched[:6]}"
        )
    if not isinstance(model, model_class):
        raise MmcalError(f"model {name!r}: transformers loaded {type(model).__name__}, not the remote {ref}")
    added = add_missing_get_head_mask(model)
    if added:
        _note(fixes, "get_head_mask", f"{', '.join(added)}.get_head_mask added (gone from PreTrainedModel in 5.x)")
    restored = restore_uninitialised(model, non_persistent_buffers=v5)
    if restored:
        _note(
            fixes,
            "recomputed tensors",
            f"recomputed {', '.join(restored)} (not in the checkpoint; transformers 5 leaves them on the meta device "
            "or uninitialised)",
        )
    n = check_weights(model, path, revision, name)
    log.info("model %r: %d checked weights equal the checkpoint's", name, n)
    if model.dtype != dtype:
        raise MmcalError(f"model {name!r}: the remote model loaded in {model.dtype}, not the {dtype} asked for")
    return model, fixes
