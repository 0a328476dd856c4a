# mmcal: calibration of multimodal LLMs as one Snakemake DAG.
#   data (datasets.smk) → tiny LLaVA (tinyllava.smk) → scoring, one forward pass per item
#   (scoring.smk; harness logs: imports.smk) → metrics, comparisons, IDK (analysis.smk) /
#   recalibration (calibration.smk) / prompt search (promptopt.smk) → figures/ (figures.smk) and paper/ (paper.smk).
# Default study: `snakemake --cores all`; paper scale: add `--configfile config/paper.yaml`.
import os
import sys

from snakemake.utils import min_version, validate

min_version("9.0")

sys.path.insert(0, os.path.join(workflow.basedir, "src"))
# Idle OpenMP threads sleep instead of spinning: with spinning, a job whose threads share cores
# with another process runs up to 30x slower (measured on 2 cores). Training scripts, whose jobs
# own their cores, switch spinning back on (workflow/scripts/_setup.py: start).
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

from mmcal import config as study_config  # noqa: E402
from mmcal import plan, provenance  # noqa: E402
from mmcal.errors import ConfigError  # noqa: E402
from mmcal.cli import set_hub_offline  # noqa: E402
from mmcal.engine import parity  # noqa: E402
from mmcal.engine.devices import gpu_count  # noqa: E402
from mmcal.figures.registry import figure_plan  # noqa: E402
from mmcal.hub import download as hub_download  # noqa: E402
from mmcal.paper.build import table_inputs, table_parts  # noqa: E402
from mmcal.paper.main_tex import PARTS  # noqa: E402

PART_TITLES = {key: title for key, title, _ in PARTS}


# The study: one config file (default config/config.yaml, the default study) on its base chain (a file without
# `base` builds on config/defaults.yaml: settings, scenarios and prompts, no runs), then further --configfile
# overlays and --config values (mmcal.config). Every problem of the merged config is reported at once, each
# naming its key, before anything is planned.
# this workflow's own config/defaults.yaml and schema, also when another Snakefile includes this one
WORKFLOW_ROOT = workflow.current_basedir.get_path_or_uri(secret_free=True)
config.clear()
config.update(
    study_config.load_study(
        [str(f) for f in workflow.overwrite_configfiles] or ["config/config.yaml"],
        dict(workflow.config_settings.config),
        root=WORKFLOW_ROOT,
    )
)
study_config.check(
    config, study_config.load_schema(WORKFLOW_ROOT), "the study's config"
)


report: "workflow/report/workflow.rst"


validate(config, "workflow/schemas/config.schema.yaml")  # fills the schema's defaults
# Network access is configuration (`offline:`): jobs inherit these variables from this process (a
# cluster job re-reads this Snakefile with the same config), so no rule passes them.
set_hub_offline(config["offline"])
RUNS = plan.expand_runs(config) + plan.import_runs(config)  # scored and imported runs
if not RUNS:
    raise ConfigError("the config has neither runs nor imports: nothing to analyse")
# Two models compared on the same data set, scenario and prompt must be shown the same text (a base LLM
# and its MLLM): checked now, or, for a hub model's own template, by the download job once it has the files.
PARITY_AFTER_DOWNLOAD = parity.check_comparisons(config)
# GPUs are a global resource (config `gpus`, else those detected), so a local `--cores all` runs at
# most that many GPU jobs at once, each on its own device (_setup.py); `--resources gpu=N` overrides
# it; a cluster allocates its own. With no GPU detected nor configured nothing is registered: jobs
# keep their gpu request (a `device: cuda` job then fails naming the device) rather than gpu=0.
if (
    workflow.is_main_process
    and workflow.local_exec
    and "gpu" not in workflow.global_resources
):
    n_gpus = gpu_count(config.get("gpus"))
    if n_gpus or config.get("gpus") is not None:
        workflow.register_resource("gpu", n_gpus)


# Image for `--sdm apptainer` (config key `container`, docs/setup.md: built from envs/Dockerfile).
container: config["container"]


wildcard_constraints:
    model=r"[A-Za-z0-9_.\-]+",
    dataset=r"[A-Za-z0-9_.\-]+",
    scenario=r"[A-Za-z0-9_.\-]+",
    prompt=r"[A-Za-z0-9_.\-]+",


include: "workflow/rules/common.smk"
include: "workflow/rules/datasets.smk"
include: "workflow/rules/tinyllava.smk"
include: "workflow/rules/hub.smk"
include: "workflow/rules/scoring.smk"
include: "workflow/rules/imports.smk"
include: "workflow/rules/analysis.smk"
include: "workflow/rules/calibration.smk"
include: "workflow/rules/promptopt.smk"
include: "workflow/rules/figures.smk"
include: "workflow/rules/paper.smk"


rule all:
    default_target: True
    input:
        all_targets(),
