"""GPUs on one machine: how many there are, and which of them a job uses.

The Snakefile registers the GPU count as the global resource ``gpu``, so a local Snakemake never runs
more GPU jobs at once than there are GPUs. Each job that asks for GPUs then takes its own devices
(``claim_gpus``, from workflow/scripts/_setup.py): an exclusive ``flock`` on one lock file per
device under the run's ``.snakemake/`` folder, held until the job's process exits (the kernel
releases it even on a crash), and ``CUDA_VISIBLE_DEVICES`` set to the claimed devices before torch
initialises CUDA. Under SLURM the scheduler has already confined the job to its devices, so nothing
is claimed there.
"""

from __future__ import annotations

import fcntl
import logging
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

from mmcal.errors import ConfigError

LOCK_DIR = Path(".snakemake/mmcal-gpu-locks")
log = logging.getLogger(__name__)
# Open lock files of this process: closing one (or exiting) releases its device.
_held: list = []


def visible_gpus() -> list[str]:
    """The GPUs this process may use: ``CUDA_VISIBLE_DEVICES`` when set, else every GPU that
    ``nvidia-smi -L`` lists (no torch import, no CUDA initialisation), else none."""
    env = os.environ.get("CUDA_VISIBLE_DEVICES")
    if env is not None:
        ids = [d.strip() for d in env.split(",") if d.strip()]
        # CUDA stops at the first invalid entry; "-1" is the usual way to hide every GPU.
        return [] if ids and ids[0] == "-1" else ids
    smi = shutil.which("nvidia-smi")
    if smi is None:
        return []
    try:
        out = subprocess.run([smi, "-L"], capture_output=True, text=True, timeout=30, check=True).stdout
    except (subprocess.SubprocessError, OSError) as err:
        log.warning("nvidia-smi -L failed (%s): counting no GPUs", err)
        return []
    return [str(i) for i, line in enumerate(line for line in out.splitlines() if line.startswith("GPU "))]


def gpu_count(configured: int | None = None) -> int:
    """The config's ``gpus`` when given, else the number of visible GPUs."""
    if configured is not None:
        if configured < 0:
            raise ConfigError(f"config gpus: {configured} is negative")
        return int(configured)
    return len(visible_gpus())


def claim_gpus(n: int, lock_dir: Path = LOCK_DIR, poll_seconds: float = 0.5) -> list[str]:
    """Take ``n`` free devices for this process and restrict CUDA to them; returns their ids.

    Waits while every device is taken (another Snakemake run on the same machine); fails at once if
    the machine has fewer than ``n``. Returns ``[]`` (and changes nothing) when ``n`` is 0, under a
    SLURM job (SLURM sets the job's devices) or when the machine has no GPU: a job configured with
    ``device: cuda`` then fails when it loads its model, naming the device.
    """
    if n <= 0 or os.environ.get("SLURM_JOB_ID"):
        return []
    if "torch" in sys.modules:
        import torch

        if torch.cuda.is_initialized():
            raise RuntimeError("claim_gpus must run before CUDA is initialised")
    devices = visible_gpus()
    if not devices:
        log.warning("the job asks for %d GPU(s) but none is visible", n)
        return []
    if n > len(devices):
        raise ConfigError(f"the job asks for {n} GPUs but this machine has {len(devices)} ({','.join(devices)})")
    lock_dir.mkdir(parents=True, exist_ok=True)
    waited = False
    while True:
        taken = []
        for device in devices:
            handle = open(lock_dir / f"{device}.lock", "a")
            try:
                fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                handle.close()
                continue
            taken.append((device, handle))
            if len(taken) == n:
                break
        if len(taken) == n:
            break
        for _, handle in taken:  # release a partial claim so two jobs cannot block each other
            handle.close()
        if not waited:
            log.info("all %d GPUs are taken (locks in %s): waiting", len(devices), lock_dir)
            waited = True
        time.sleep(poll_seconds)
    ids = [device for device, _ in taken]
    for _, handle in taken:
        handle.truncate(0)
        handle.write(f"{os.getpid()}\n")
        handle.flush()
        _held.append(handle)
    os.environ["CUDA_VISIBLE_DEVICES"] = ",".join(ids)
    log.info("GPU(s) %s claimed (CUDA_VISIBLE_DEVICES=%s)", ids, os.environ["CUDA_VISIBLE_DEVICES"])
    return ids
