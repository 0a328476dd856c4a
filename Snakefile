# mmcal: calibration of multimodal LLMs as one Snakemake DAG.
#   data → models → scoring (one forward pass per item) → metrics / recalibration / IDK /
#   prompt search → figures/ and paper/tables/.
# Default study: `snakemake --cores all`; paper scale: add `--configfile config/paper.yaml`.
import os
import sys

from snakemake.utils import min_version, validate

min_version("9.0")

sys.path.insert(0, os.path.join(workflow.basedir, "src"))
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
# Idle OpenMP threads sleep instead of spinning: with spinning, a job whose threads share cores
# with another process runs up to 30x slower (measured on 2 cores). Training scripts, whose jobs
# own their cores, switch spinning back on (workflow/scripts/_setup.py: start).
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

from mmcal import plan  # noqa: E402


configfile: "config/config.yaml"


report: "workflow/report/workflow.rst"


validate(config, "workflow/schemas/config.schema.yaml")
RUNS = plan.expand_runs(config)


container: "docker://ghcr.io/mmcal/mmcal:0.1.0"


wildcard_constraints:
    model=r"[A-Za-z0-9_.\-]+",
    dataset=r"[A-Za-z0-9_.\-]+",
    scenario=r"[A-Za-z0-9_.\-]+",
    prompt=r"[A-Za-z0-9_.\-]+",


include: "workflow/rules/common.smk"
include: "workflow/rules/datasets.smk"
include: "workflow/rules/models.smk"
include: "workflow/rules/inference.smk"
include: "workflow/rules/metrics.smk"
include: "workflow/rules/calibration.smk"
include: "workflow/rules/figures.smk"
include: "workflow/rules/paper.smk"


rule all:
    default_target: True
    input:
        all_targets(),
