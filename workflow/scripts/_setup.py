"""Shared start of every workflow script: import path, offline hub, logging to the rule's log."""

import logging
import os
import sys
from pathlib import Path

SRC = Path(__file__).resolve().parents[2] / "src"
if str(SRC) not in sys.path:
    sys.path.insert(0, str(SRC))
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")


def start(snakemake) -> logging.Logger:
    """Send logging and stderr (progress bars, warnings) to the rule's log file."""
    log_path = snakemake.log[0] if snakemake.log else None
    if log_path:
        Path(log_path).parent.mkdir(parents=True, exist_ok=True)
        sys.stderr = open(log_path, "a", buffering=1)
    logging.basicConfig(
        stream=sys.stderr,
        level=logging.INFO,
        format="%(asctime)s %(name)s %(levelname)s %(message)s",
        force=True,
    )
    threads = getattr(snakemake, "threads", None)
    if threads:
        import torch

        torch.set_num_threads(int(threads))
    return logging.getLogger("mmcal")
