"""Rule assemble_llava_stage1: the released stage-1 projector + Vicuna-7B-v1.5 + CLIP ViT-L/336 → a
LlavaForConditionalGeneration in llava-hf's layout (mmcal.hub.llava_stage1)."""

import sys

sys.path.insert(0, snakemake.scriptdir)  # noqa: F821
from _setup import finish, start  # noqa: E402

log = start(snakemake)  # noqa: F821
from mmcal.hub.download import read_resolved  # noqa: E402
from mmcal.hub.llava_stage1 import build  # noqa: E402

p = snakemake.params  # noqa: F821
record = build(p.model, p.cfg, read_resolved(snakemake.input.resolved), snakemake.output.model_dir, seed=p.seed)  # noqa: F821
log.info("assembled: %s", record["assembly"])
finish(snakemake)  # noqa: F821
