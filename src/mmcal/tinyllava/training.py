"""Shared machinery of the tiny-LLaVA training stages: seeding, schedule, loop, manifest.

Determinism: a stage seeds python, numpy and torch from its config seed, fixes the thread count
and draws its data order from a seeded numpy generator, so the same config on the same machine
kind gives the same weights and the same validation accuracy.

Resuming: every :func:`checkpoint_every` steps the loop saves what the remaining steps depend on (the
trained tensors, the optimiser's state, every random generator's state, the losses so far) beside the
output folder, in ``<out_dir>.checkpoint/``. A killed job started again reloads it and continues from
that step; the final weights equal an uninterrupted run's bit for bit (same thread count and kernels:
the data order and features are recomputed from the seed, the rest is restored exactly). A checkpoint
of another run (other config, other data order: its ``key``) or one that cannot be read is ignored
with a warning. How often to save is no part of the recipe (it changes no result), so it is not a
config key: ``MMCAL_CHECKPOINT_EVERY`` (steps; 0 turns it off) overrides the default.
"""

from __future__ import annotations

import hashlib
import json
import logging
import math
import os
import random
import shutil
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


CHECKPOINT_EVERY = 50  # steps: a paper-scale stage 2 step takes ~1.5 s, so at most ~75 s of work is lost


def checkpoint_every() -> int:
    return int(os.environ.get("MMCAL_CHECKPOINT_EVERY", CHECKPOINT_EVERY))


def checkpoint_dir_for(out_dir: str | Path) -> Path:
    out_dir = Path(out_dir)
    return out_dir.with_name(out_dir.name + ".checkpoint")


def run_key(cfg: dict, order) -> str:
    """What a checkpoint belongs to: the stage's whole config and its data order."""
    h = hashlib.sha256(json.dumps(cfg, sort_keys=True, default=str).encode())
    h.update(np.asarray(order, dtype=np.int64).tobytes())
    return h.hexdigest()


@dataclass
class Checkpointing:
    """What :func:`run_steps` saves and restores to resume a stage: ``params`` (the tensors that train, in a
    fixed order), ``optimizer``, ``rng`` (the stage's numpy generator, if steps draw from it) and ``key``
    (:func:`run_key`)."""

    folder: Path
    params: list
    optimizer: object
    key: str
    rng: np.random.Generator | None = None
    every: int = field(default_factory=checkpoint_every)

    @property
    def path(self) -> Path:
        return self.folder / "checkpoint.pt"

    def save(self, step: int, record: TrainLog) -> None:
        import torch

        from mmcal.atomic import write_atomically

        state = {
            "key": self.key,
            "step": step,
            "params": [p.detach().clone() for p in self.params],
            "optimizer": self.optimizer.state_dict(),
            "torch_rng": torch.get_rng_state(),
            "python_rng": random.getstate(),
            "numpy_rng": np.random.get_state(),
            "stage_rng": self.rng.bit_generator.state if self.rng is not None else None,
            "losses": list(record.losses),
            "step_seconds": list(record.step_seconds),
            "step_cpu_seconds": list(record.step_cpu_seconds),
        }
        write_atomically(self.path, lambda tmp: torch.save(state, tmp), "training checkpoint")

    def restore(self, record: TrainLog) -> int:
        """Load the checkpoint into the model, optimiser and generators; the step to continue from (0: none)."""
        import torch

        if not self.path.exists():
            return 0
        try:
            state = torch.load(self.path, weights_only=False)  # written by save() above: the RNG states are tuples
            if state["key"] != self.key:
                log.warning("ignoring %s: written by another run (config or data order differ)", self.path)
                return 0
            if len(state["params"]) != len(self.params):
                raise ValueError(f"{len(state['params'])} tensors, the model trains {len(self.params)}")
        except Exception as exc:  # a damaged file: start over rather than fail or train from garbage
            log.warning("ignoring %s: cannot be read (%s); training from step 0", self.path, exc)
            return 0
        with torch.no_grad():
            for p, saved in zip(self.params, state["params"]):
                p.copy_(saved)
        self.optimizer.load_state_dict(state["optimizer"])
        torch.set_rng_state(state["torch_rng"])
        random.setstate(state["python_rng"])
        np.random.set_state(state["numpy_rng"])
        if self.rng is not None:
            self.rng.bit_generator.state = state["stage_rng"]
        record.losses = list(state["losses"])
        record.step_seconds = list(state["step_seconds"])
        record.step_cpu_seconds = list(state["step_cpu_seconds"])
        log.info("resuming from %s at step %d", self.path, state["step"])
        return int(state["step"])

    def remove(self) -> None:
        shutil.rmtree(self.folder, ignore_errors=True)


def run_steps(
    step_fn: Callable[[int], float], n_steps: int, desc: str, checkpointing: Checkpointing | None = None
) -> TrainLog:
    """Call ``step_fn(step) -> loss`` ``n_steps`` times under a tqdm bar written to the log; with
    ``checkpointing``, continue from its checkpoint and save one every ``checkpointing.every`` steps."""
    from tqdm import tqdm

    record = TrainLog()
    t0 = time.time()
    first = checkpointing.restore(record) if checkpointing is not None else 0
    bar = tqdm(range(first, n_steps), desc=desc, file=_LogStream(log), mininterval=10.0, ascii=True)
    loss = record.losses[-1] if record.losses else float("nan")
    for step in bar:
        t_step, cpu_step = time.perf_counter(), time.process_time()
        loss = float(step_fn(step))
        record.step_seconds.append(time.perf_counter() - t_step)
        record.step_cpu_seconds.append(time.process_time() - cpu_step)
        if not math.isfinite(loss):
            raise FloatingPointError(f"{desc}: loss became {loss} at step {step}")
        record.losses.append(loss)
        bar.set_postfix(loss=f"{loss:.4f}", refresh=False)
        done = step + 1
        if checkpointing is not None and checkpointing.every > 0 and done % checkpointing.every == 0 and done < n_steps:
            checkpointing.save(done, record)
    bar.close()
    if checkpointing is not None:
        checkpointing.remove()
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
