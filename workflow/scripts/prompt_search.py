"""Rule prompt_search: APE-style search of the answer-prompt suffix on calib, evaluated on test."""

import sys
from pathlib import Path

sys.path.insert(0, snakemake.scriptdir)  # noqa: F821
from _setup import start  # noqa: E402

log = start(snakemake)  # noqa: F821
from mmcal.engine.loading import load_model  # noqa: E402
from mmcal.promptopt.job import run_prompt_search  # noqa: E402
from mmcal.engine.prompts import PromptVariant  # noqa: E402
from mmcal.engine.scoring import Engine  # noqa: E402

sm = snakemake  # noqa: F821
mcfg = sm.params.model_cfg
lm = load_model(sm.wildcards.model, sm.input.model or mcfg["path"], kind=mcfg.get("kind", "auto"),
                device=sm.params.device, dtype=mcfg.get("dtype", sm.params.dtype))
engine = Engine(lm, PromptVariant(), readouts=["letter_restricted"], batch_size=int(sm.params.batch_size),
                image_root=str(Path(sm.input.item_file).parent))
cfg = {k: v for k, v in dict(sm.params.cfg).items() if k not in ("enabled", "model", "dataset")}
cfg["cache_dir"] = sm.params.cache_dir
best = run_prompt_search(engine, sm.input.item_file, Path(sm.output.best).parent, cfg, seed=int(sm.params.seed))
log.info("best prompt %r: %s", best["text"], best["test"])
