"""Shared set-up of the benchmarks: a model and real Fashion-MNIST items."""

from __future__ import annotations

import argparse
import os
import tempfile
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")


def parser(description: str) -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=description)
    p.add_argument("--model", default="data/models/tiny-llava-stage2", help="model folder")
    p.add_argument("--items", type=int, default=40, help="number of Fashion-MNIST test items")
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--batch-size", type=int, default=8)
    p.add_argument("--fmnist-root", default="/usr/share/datasets/fashion-mnist")
    p.add_argument("--device", default="auto", help="cpu, cuda or auto")
    p.add_argument("--dtype", default="auto", help="auto: float32 on CPU, bfloat16 on CUDA")
    return p


def setup(args):
    import torch

    from mmcal.data.fashion_mnist import build_fashion_mnist_items
    from mmcal.engine.loading import load_model

    torch.set_num_threads(args.threads)
    root = Path(tempfile.mkdtemp(prefix="mmcal-bench-"))
    items = build_fashion_mnist_items(args.fmnist_root, root / "images", "images", {"test": args.items}, seed=123)
    lm = load_model(Path(args.model).name, args.model, device=args.device, dtype=args.dtype)
    return lm, items, root


def timed(fn):
    """(result, seconds); waits for queued GPU work so that asynchronous kernels are counted."""
    import torch

    sync = torch.cuda.synchronize if torch.cuda.is_available() else (lambda: None)
    sync()
    t0 = time.perf_counter()
    out = fn()
    sync()
    return out, time.perf_counter() - t0
