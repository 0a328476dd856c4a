"""Rule prompt_search: APE-style search of the answer-prompt suffix on calib, evaluated on test."""

import sys
from pathlib import Path

sys.path.insert(0, snakemake.scriptdir)  # noqa: F821
from _setup import finish, start  # noqa: E402

log = start(snakemake)  # noqa: F821
from mmcal.promptopt.job import run_prompt_search, search_engine  # noqa: E402

sm = snakemake  # noqa: F821
engine = search_engine(
    sm.wildcards.model,
    sm.params.model_cfg,
    path=sm.input.model or None,
    device=sm.params.device,
    dtype=sm.params.dtype,
    batch_size=sm.params.batch_size,
    image_root=Path(sm.input.item_file).parent,
)
cfg = {k: v for k, v in dict(sm.params.cfg).items() if k not in ("enabled", "model", "dataset")}
cfg["cache_dir"] = sm.params.cache_dir
best = run_prompt_search(engine, sm.input.item_file, Path(sm.output.best).parent, cfg, seed=int(sm.params.seed))
log.info("best prompt %r: %s", best["text"], best["test"])
finish(snakemake)  # noqa: F821
