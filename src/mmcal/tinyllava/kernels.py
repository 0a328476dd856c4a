"""CPU kernel settings of the training jobs: the same trained bits on other x86-64 CPUs with AVX2.

fp32 training is bit-identical across runs at a fixed thread count, but the kernels' arithmetic
(vector width, FMA order, blocking of the sums) follows what each library picks at run time for the
CPU it finds. Three libraries pick:

- ATen (element-wise ops, reductions, softmax, layer norms) by instruction set: capped at AVX2
  (``ATEN_CPU_CAPABILITY=avx2``), which every x86-64 CPU since Intel Haswell and AMD Zen has.
- oneDNN (the vision tower's patch convolution) by instruction set: capped the same way.
- MKL (the matrix products) by *vendor* first. On AMD CPUs it runs its own Zen kernels
  (``mkl_blas_def_sgemm_kernel_0_zen``) whatever the instruction set; its reproducibility branches
  other than COMPATIBLE exist only on Intel CPUs, and asking for one on AMD switches to its AUTO
  reproducibility mode, whose bits differ from the Zen kernels' (measured here, MKL 2024.2). So MKL is
  left alone on AMD; on Intel CPUs its AVX2 branch (``MKL_CBWR=AVX2``) gives the same results on every
  Intel CPU with AVX2 (Intel's documentation; not checked here: no Intel CPU).

Measured (docs/training-plan.md): with these settings this AMD EPYC (Zen 4, AVX-512) trains the
weights an AVX2-only AMD EPYC trained without them. Intel and AMD CPUs do not share MKL kernels, so
their bits differ; ``MKL_CBWR=COMPATIBLE`` (SSE2 on every vendor) is MKL's one cross-vendor branch, at
the cost docs/training-plan.md gives.

They must be in the environment before torch (and with it MKL and oneDNN) is loaded.
"""

from __future__ import annotations

import os
import sys

# Set unless the caller's environment already names one (an explicit choice wins).
AVX2_KERNELS = {
    "ATEN_CPU_CAPABILITY": "avx2",
    "ONEDNN_MAX_CPU_ISA": "AVX2",
}
INTEL_MKL = {"MKL_CBWR": "AVX2"}

# Idle OpenMP workers: spin (ACTIVE) or sleep (PASSIVE, the workflow's default). Spinning made stage 1
# 1.3x faster on an idle 2-core machine (README, measured before), but a spinning worker holds a core
# its partner needs when other processes want the cores too: measured under load ~12 on 2 cores, a
# spin of 10,000 (libgomp's GOMP_SPINCOUNT) made vision-tower steps 6.5x and 100,000 36x slower than
# sleeping. So a training job spins only if the machine was idle when it started (load average below
# the core count + 0.5: the job's own predecessors included). Which one never changes the bits.
IDLE_MARGIN = 0.5


def wait_policy(load: float | None = None, cpus: int | None = None) -> str:
    load = os.getloadavg()[0] if load is None else load
    cpus = (os.cpu_count() or 1) if cpus is None else cpus
    return "ACTIVE" if load < cpus + IDLE_MARGIN else "PASSIVE"


def cpu_vendor() -> str:
    try:
        for line in open("/proc/cpuinfo"):
            if line.startswith("vendor_id"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return "unknown"


def pin_training_kernels(environ=os.environ, vendor: str | None = None, load: float | None = None) -> dict:
    """Set the kernel pins and the OpenMP wait policy in ``environ``; returns the settings in force.

    Raises if torch is already imported: its libraries read these variables once, at load.
    """
    if environ is os.environ and "torch" in sys.modules:
        raise RuntimeError("pin_training_kernels() must run before torch is imported")
    pins = dict(AVX2_KERNELS)
    if (vendor or cpu_vendor()) == "GenuineIntel":
        pins.update(INTEL_MKL)
    for name, value in pins.items():
        environ.setdefault(name, value)
    environ["OMP_WAIT_POLICY"] = wait_policy(load)
    names = (*AVX2_KERNELS, *INTEL_MKL, "OMP_WAIT_POLICY")
    return {name: environ[name] for name in names if name in environ}
