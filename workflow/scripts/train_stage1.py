"""Rule train_stage1: LLaVA stage 1, projector alignment (logic: mmcal.tinyllava.stage1)."""

import sys

sys.path.insert(0, snakemake.scriptdir)  # noqa: F821
from _setup import finish, start  # noqa: E402

log = start(snakemake, training=True)  # noqa: F821
from mmcal.tinyllava.stage1 import train_stage1  # noqa: E402

summary = train_stage1(
    snakemake.params.cfg,  # noqa: F821
    vision_dir=snakemake.input.vision,  # noqa: F821
    lm_dir=snakemake.input.lm,  # noqa: F821
    out_dir=snakemake.output.model_dir,  # noqa: F821
)
log.info("stage 1: %s", summary)
finish(snakemake)  # noqa: F821
