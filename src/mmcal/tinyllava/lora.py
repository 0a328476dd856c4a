"""Low-rank adapters (LoRA) for stage 2: train ``B @ A`` beside each frozen linear weight, then merge.

Each ``nn.Linear`` of the adapted layers is replaced by :class:`LoRALinear`, which computes
``x W^T + scale * (x A^T) B^T`` with ``W`` frozen, ``A`` (rank x in, seeded Kaiming-uniform) and ``B``
(out x rank, zeros: the model starts exactly where it was). After training, :func:`merge_lora` folds
``scale * B @ A`` into ``W`` and puts the plain ``nn.Linear`` back, so the saved checkpoint is an
ordinary ``LlavaForConditionalGeneration`` that the scoring engine loads as any other.
"""

from __future__ import annotations

import math


def _lora_linear_class():
    import torch

    class LoRALinear(torch.nn.Module):
        def __init__(self, base: torch.nn.Linear, rank: int, alpha: float):
            super().__init__()
            self.base = base
            self.scale = alpha / rank
            self.lora_a = torch.nn.Parameter(torch.empty(rank, base.in_features))
            self.lora_b = torch.nn.Parameter(torch.zeros(base.out_features, rank))
            torch.nn.init.kaiming_uniform_(self.lora_a, a=math.sqrt(5))

        def forward(self, x):
            return self.base(x) + (x @ self.lora_a.T @ self.lora_b.T) * self.scale

    return LoRALinear


def add_lora(modules, rank: int, alpha: float) -> list:
    """Wrap every ``nn.Linear`` inside ``modules`` (frozen) with a rank-``rank`` adapter; returns the
    adapters' parameters (the only ones to train). Draws from torch's seeded generator, in module order."""
    import torch

    lora_linear = _lora_linear_class()
    params = []
    for module in modules:
        for parent in list(module.modules()):
            for name, child in list(parent.named_children()):
                if isinstance(child, torch.nn.Linear):
                    child.weight.requires_grad_(False)
                    if child.bias is not None:
                        child.bias.requires_grad_(False)
                    wrapped = lora_linear(child, rank, alpha)
                    setattr(parent, name, wrapped)
                    params += [wrapped.lora_a, wrapped.lora_b]
    return params


def merge_lora(modules) -> int:
    """Fold each adapter into its weight and restore the plain ``nn.Linear``; returns how many merged."""
    import torch

    lora_linear_name = "LoRALinear"
    merged = 0
    for module in modules:
        for parent in list(module.modules()):
            for name, child in list(parent.named_children()):
                if type(child).__name__ == lora_linear_name:
                    with torch.no_grad():
                        child.base.weight += (child.lora_b @ child.lora_a) * child.scale
                    setattr(parent, name, child.base)
                    merged += 1
    return merged
