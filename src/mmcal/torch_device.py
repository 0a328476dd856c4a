"""Where and in which precision a model runs: the one rule for ``device`` / ``dtype`` config values,
shared by the scoring engine, the audit's re-scoring and the captioner describer."""

from __future__ import annotations

from mmcal.errors import ConfigError, MmcalError


def resolve_device(device: str = "auto", what: str = "device") -> str:
    """``auto``: CUDA when available, else the CPU; an explicit CUDA device without CUDA is an error
    (a 7B model must not silently run on the CPU)."""
    import torch

    if device == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    if device.startswith("cuda") and not torch.cuda.is_available():
        raise MmcalError(f"{what} {device!r} requested but CUDA is not available")
    return device


def resolve_dtype(dtype: str, device: str, what: str = "dtype"):
    """``auto``: bf16 on CUDA, fp32 elsewhere; else the torch dtype of that name."""
    import torch

    if dtype == "auto":
        return torch.bfloat16 if device.startswith("cuda") else torch.float32
    if not isinstance(getattr(torch, str(dtype), None), torch.dtype):
        raise ConfigError(f"{what} {dtype!r} is not a torch dtype (float32, bfloat16, float16, auto)")
    return getattr(torch, dtype)
