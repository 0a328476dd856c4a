"""Shared machinery of the tiny-LLaVA training stages: seeding, schedule, loop, manifest.

Determinism: a stage seeds python, numpy and torch from its config seed, fixes the thread count
and draws its data order from a seeded numpy generator, so the same config on the same machine
kind gives the same weights and the same validation accuracy.
"""

from __future__ import annotations

import json
import logging
import math
import random
import time
from contextlib import contextmanager, nullcontext
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import numpy as np

log = logging.getLogger(__name__)


def seed_everything(seed: int, threads: int) -> np.random.Generator:
    """Seed every generator a stage uses; returns the stage's numpy generator."""
    import torch

    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)
    torch.set_num_threads(max(1, int(threads)))
    return np.random.default_rng(seed)


def warmup_cosine(step: int, total: int, warmup: int) -> float:
    """LR factor: linear warm-up over ``warmup`` steps, then cosine decay to 0 at ``total``."""
    if warmup > 0 and step < warmup:
        return (step + 1) / warmup
    span = max(1, total - warmup)
    return 0.5 * (1.0 + math.cos(math.pi * min(1.0, (step - warmup) / span)))


@contextmanager
def eager_attention(model):
    """Train with eager attention, then restore the model's own implementation (saved configs and
    the scoring engine keep it). Measured: for ~60-token sequences on 2 CPU cores SDPA's backward
    took a fifth of a stage-2 step; eager attention makes the step 1.2x faster."""
    before = model.config._attn_implementation
    model.set_attn_implementation("eager")
    try:
        yield model
    finally:
        model.set_attn_implementation(before)


def adamw(params, **kwargs):
    """AdamW with the fused CPU kernel: the foreach version took 0.22 s of a 1.7 s stage-2 step."""
    import torch

    return torch.optim.AdamW(params, fused=True, **kwargs)


def autocast(enabled: bool):
    """bf16 autocast on CPU: about 1.7x faster steps on AMX/AVX512-bf16 CPUs; fp32 master weights."""
    import torch

    return torch.autocast("cpu", dtype=torch.bfloat16) if enabled else nullcontext()


class _LogStream:
    """File-like sink that turns tqdm's refreshed lines into log records."""

    def __init__(self, logger: logging.Logger):
        self.logger = logger

    def write(self, text: str) -> None:
        text = text.strip("\r\n ")
        if text:
            self.logger.info(text)

    def flush(self) -> None:
        pass


@dataclass
class TrainLog:
    """Per-step losses and wall times, and the stage's wall time."""

    losses: list[float] = field(default_factory=list)
    step_seconds: list[float] = field(default_factory=list)
    # CPU seconds of the process (all threads) per step: what a step costs whatever else shares the
    # cores, as long as idle threads do not spin (GOMP_SPINCOUNT=0)
    step_cpu_seconds: list[float] = field(default_factory=list)
    seconds: float = 0.0

    @staticmethod
    def _median(times: list[float], skip: int) -> float:
        """Median after the first ``skip`` steps (allocations, first-touch)."""
        times = times[skip:] or times
        return float(np.median(times)) if times else float("nan")

    def seconds_per_step(self, skip: int = 2) -> float:
        return self._median(self.step_seconds, skip)

    def summary(self, tail: int = 10) -> dict:
        last = self.losses[-tail:] or [float("nan")]
        return {
            "steps": len(self.losses),
            "first_loss": round(self.losses[0], 4) if self.losses else None,
            "final_loss_mean_last_%d" % tail: round(float(np.mean(last)), 4),
            "train_seconds": round(self.seconds, 1),
            "median_step_seconds": round(self.seconds_per_step(), 4),
            "median_step_cpu_seconds": round(self._median(self.step_cpu_seconds, 2), 4),
        }


def run_steps(step_fn: Callable[[int], float], n_steps: int, desc: str) -> TrainLog:
    """Call ``step_fn(step) -> loss`` ``n_steps`` times under a tqdm bar written to the log."""
    from tqdm import tqdm

    record = TrainLog()
    t0 = time.time()
    bar = tqdm(range(n_steps), desc=desc, file=_LogStream(log), mininterval=10.0, ascii=True)
    for step in bar:
        t_step, cpu_step = time.perf_counter(), time.process_time()
        loss = float(step_fn(step))
        record.step_seconds.append(time.perf_counter() - t_step)
        record.step_cpu_seconds.append(time.process_time() - cpu_step)
        if not math.isfinite(loss):
            raise FloatingPointError(f"{desc}: loss became {loss} at step {step}")
        record.losses.append(loss)
        bar.set_postfix(loss=f"{loss:.4f}", refresh=False)
    bar.close()
    record.seconds = time.time() - t0
    log.info("%s: %d steps in %.1f s, final loss %.4f", desc, n_steps, record.seconds, loss)
    return record


def bucketed_order(lengths, batch_size: int, window: int, rng: np.random.Generator) -> np.ndarray:
    """Example order for batches of similar length: within each run of ``window`` batches the examples
    are sorted by length (stable) and cut into batches, whose order within the window is then shuffled.
    ``window`` 0 or 1 keeps the given order. Which examples a window holds does not change, so the data a
    stage sees by any step stays within one window of the unbucketed order."""
    n = len(lengths)
    if window <= 1:
        return np.arange(n)
    lengths = np.asarray(lengths)
    span = window * batch_size
    order = []
    for start in range(0, n, span):
        idx = np.arange(start, min(n, start + span))
        idx = idx[np.argsort(lengths[idx], kind="stable")]
        batches = [idx[i : i + batch_size] for i in range(0, len(idx), batch_size)]
        order.extend(batches[k] for k in rng.permutation(len(batches)))
    return np.concatenate(order)


def write_manifest(out_dir: str | Path, manifest: dict) -> Path:
    """``training_manifest.json``: what a stage trained on (classes, image indices, steps, seed)."""
    path = Path(out_dir) / "training_manifest.json"
    path.write_text(json.dumps(manifest, indent=2, sort_keys=True) + "\n")
    return path


def read_manifest(model_dir: str | Path) -> dict:
    from mmcal.errors import MmcalError

    path = Path(model_dir) / "training_manifest.json"
    if not path.exists():
        raise MmcalError(
            f"{path} missing: {model_dir} was not built by mmcal.tinyllava (its training data "
            "cannot be checked against the held-out classes)"
        )
    return json.loads(path.read_text())


@dataclass
class Batch:
    """Right-padded token ids plus where the loss reads logits (``positions``) and what it wants."""

    rows: object  # long [B]: feature-cache rows of the examples' images
    input_ids: object  # long [B, L]
    attention_mask: object  # long [B, L]
    positions: object  # long [B, K]: logits at these positions predict ...
    targets: object  # long [B, K]: ... these tokens (-100: padding, ignored)


def collate(examples, pad_id: int) -> Batch:
    """Right padding never changes the logits of real tokens in a causal LM."""
    import torch

    width = max(len(e.ids) for e in examples)
    n_tgt = max(len(e.ids) - e.target_from for e in examples)
    ids = torch.full((len(examples), width), pad_id, dtype=torch.long)
    mask = torch.zeros((len(examples), width), dtype=torch.long)
    positions = torch.zeros((len(examples), n_tgt), dtype=torch.long)
    targets = torch.full((len(examples), n_tgt), -100, dtype=torch.long)
    for b, e in enumerate(examples):
        ids[b, : len(e.ids)] = torch.tensor(e.ids)
        mask[b, : len(e.ids)] = 1
        tgt = e.ids[e.target_from :]
        positions[b, : len(tgt)] = torch.arange(e.target_from - 1, len(e.ids) - 1)
        targets[b, : len(tgt)] = torch.tensor(tgt)
    rows = torch.tensor([e.image_index for e in examples], dtype=torch.long)
    return Batch(rows, ids, mask, positions, targets)


def target_loss(logits, targets, per: str):
    """Cross-entropy of the target tokens: mean per token, or summed per example then averaged.

    ``per="example"`` keeps the answer letter at full weight next to trivial ")"/end tokens, so a
    4-way guess reads ln 4 = 1.386.
    """
    import torch

    flat = torch.nn.functional.cross_entropy(
        logits.float().flatten(0, 1), targets.flatten(), ignore_index=-100, reduction="none"
    )
    if per == "token":
        return flat.sum() / (targets != -100).sum()
    return flat.sum() / targets.shape[0]
