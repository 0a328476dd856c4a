"""Rule train_vision: pretrain the tiny-LLaVA vision tower (logic: mmcal.tinyllava.vision)."""

import sys

sys.path.insert(0, snakemake.scriptdir)  # noqa: F821
from _setup import finish, start  # noqa: E402

log = start(snakemake, training=True)  # noqa: F821
from mmcal.tinyllava.vision import train_vision  # noqa: E402

summary = train_vision(
    snakemake.params.cfg,
    snakemake.output.model_dir,
)
log.info("vision tower: %s", summary)
finish(snakemake)  # noqa: F821
