"""Shared start and finish of every workflow script: import path, logging to the rule's log, and
the job's provenance records (written by ``finish`` once the script's work succeeded).

Network access (``HF_HUB_OFFLINE`` and co.) is not set here: every job inherits it from the
Snakefile, which sets it from the config's ``offline`` key.
"""

import logging
import os
import sys
import time
from pathlib import Path

SRC = Path(__file__).resolve().parents[2] / "src"
# First, not just present: Snakemake's preamble appends its own sys.path (this src among it) after the
# job's, where an installed mmcal (the venv's editable install of another checkout) would win.
sys.path.insert(0, str(SRC))
if "mmcal" in sys.modules and not Path(sys.modules["mmcal"].__file__).resolve().is_relative_to(SRC):
    raise RuntimeError(f"mmcal was imported from {sys.modules['mmcal'].__file__} before the workflow's own {SRC}")
_started: float | None = None


def start(snakemake, training: bool = False) -> logging.Logger:
    """Send logging and stderr (progress bars, warnings) to the rule's log file.

    ``training``, for jobs that train weights (before torch loads its OpenMP runtime and MKL):
    - idle OpenMP threads spin (``OMP_WAIT_POLICY=ACTIVE``) instead of the workflow's passive
      default: these jobs own their cores and run thousands of small parallel regions (measured on
      2 cores: vision tower 1.9x, stage 1 1.3x faster, same weights);
    - MKL's matrix kernels take its base AVX-512 code path (``MKL_CBWR=AVX512``) on any AVX-512 CPU,
      so that a newer CPU's own path does not change the trained bits (measured here: the same
      weights as MKL's automatic choice; ``MKL_CBWR=AVX2`` gives others).
    """
    global _started
    _started = time.time()
    if training:
        if "torch" in sys.modules:
            raise RuntimeError("start(training=True) must run before torch is imported")
        os.environ["OMP_WAIT_POLICY"] = "ACTIVE"
        if _cpu_has("avx512f"):
            os.environ.setdefault("MKL_CBWR", "AVX512")
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
    _report_user_errors_plainly(getattr(snakemake, "rule", "?"))
    # A GPU job takes its own device before torch can initialise CUDA (mmcal.engine.devices).
    gpus = int(getattr(snakemake.resources, "gpu", 0) or 0)
    if gpus:
        from mmcal.engine.devices import claim_gpus

        claim_gpus(gpus)
    threads = getattr(snakemake, "threads", None)
    if threads:
        import torch

        torch.set_num_threads(int(threads))
    return logging.getLogger("mmcal")


def _cpu_has(flag: str) -> bool:
    try:
        return any(line.startswith("flags") and flag in line.split() for line in open("/proc/cpuinfo"))
    except OSError:
        return False


def _report_user_errors_plainly(rule: str) -> None:
    """An MmcalError already says what is wrong and where: print that, not a traceback."""
    from mmcal.errors import MmcalError

    previous = sys.excepthook

    def hook(kind, exc, tb):
        if isinstance(exc, MmcalError):
            sys.stderr.write(f"mmcal error in rule {rule}: {exc}\n")
        else:
            previous(kind, exc, tb)

    sys.excepthook = hook


def finish(snakemake, cleanup=None) -> None:
    """Write the provenance record of every output (mmcal.provenance); the last call of every script,
    so a failed job leaves none. Logs the seconds it took, for the overhead budget. ``cleanup()`` runs
    after the records are written (the score job's shards, kept until then)."""
    from mmcal.provenance import write_job

    if _started is None:
        raise RuntimeError("finish(snakemake) without start(snakemake)")
    seconds = write_job(snakemake, _started, script=_script_file(snakemake))
    logging.getLogger("mmcal").info("provenance: %.3f s for %d outputs", seconds, len(snakemake.output))
    if cleanup is not None:
        cleanup()


def _script_file(snakemake) -> Path | None:
    """The workflow script this job runs: Snakemake executes a copy named ``tmpXXXX.<script>.py``."""
    main = Path(getattr(sys.modules["__main__"], "__file__", "") or "")
    for name in (main.name, main.name.partition(".")[2]):
        if name and (Path(snakemake.scriptdir) / name).is_file():
            return Path(snakemake.scriptdir) / name
    return None
