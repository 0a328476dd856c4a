"""Rules train_stage2 / train_stage2_idk: LLaVA stage 2, visual instruction tuning
(logic: mmcal.tinyllava.stage2), starting from ``input.start`` (stage 1; stage 2 for the IDK-trained
variant). With stage2.idk_train_classes in params.cfg it builds the IDK variant."""

import sys

sys.path.insert(0, snakemake.scriptdir)  # noqa: F821
from _setup import finish, start  # noqa: E402

log = start(snakemake, training=True)  # noqa: F821
from mmcal.tinyllava.stage2 import train_stage2  # noqa: E402

summary = train_stage2(
    snakemake.params.cfg,  # noqa: F821
    stage1_dir=snakemake.input.start,  # noqa: F821
    out_dir=snakemake.output.model_dir,  # noqa: F821
)
log.info("stage 2: %s", summary)
finish(snakemake)  # noqa: F821
