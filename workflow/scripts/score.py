"""Rule score: one (model, dataset, scenario, prompt) → records Parquet (resumable)."""

import sys

sys.path.insert(0, snakemake.scriptdir)  # noqa: F821
from _setup import start  # noqa: E402

log = start(snakemake)  # noqa: F821
from mmcal.cli import score_from_params  # noqa: E402

sm = snakemake  # noqa: F821
score_from_params(
    dict(sm.params.cfg), sm.wildcards, sm.input, sm.output[0],
)
