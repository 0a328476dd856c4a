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

    ``training``, for jobs that train weights (before torch loads its OpenMP runtime, MKL and oneDNN):
    ``mmcal.tinyllava.kernels.pin_training_kernels`` caps ATen and oneDNN at their AVX2 kernels (and MKL
    at its AVX2 branch on Intel CPUs), so other CPUs of the vendor train the same bits, and lets idle
    OpenMP threads spin instead of the workflow's passive default when the machine is otherwise idle.
    """
    global _started
    _started = time.time()
    kernels = None
    if training:
        from mmcal.tinyllava.kernels import pin_training_kernels

        kernels = pin_training_kernels()
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
    if kernels:
        logging.getLogger("mmcal").info("training kernels: %s", kernels)
    # A GPU job takes its own device before torch can initialise CUDA (mmcal.engine.devices).
    gpus = int(getattr(snakemake.resources, "gpu", 0) or 0)
    if gpus:
        from mmcal.engine.devices import claim_gpus

        claim_gpus(gpus)
    threads = getattr(snakemake, "threads", None)
    if threads:
        # torch takes its thread count from OMP_NUM_THREADS when it loads, so a job that never loads it
        # (figures, tables, metrics) does not pay the ~1.5 s of importing torch just to set it.
        os.environ["OMP_NUM_THREADS"] = str(int(threads))
        if "torch" in sys.modules:
            sys.modules["torch"].set_num_threads(int(threads))
    return logging.getLogger("mmcal")


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
