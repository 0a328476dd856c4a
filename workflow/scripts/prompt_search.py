"""Rule prompt_search: APE-style search of the answer-prompt suffix on calib, evaluated on test."""

import sys
from pathlib import Path

sys.path.insert(0, snakemake.scriptdir)  # noqa: F821
from _setup import finish, start  # noqa: E402

log = start(snakemake)  # noqa: F821
from mmcal.engine.prompts import prompt_from_config  # noqa: E402
from mmcal.engine.scenarios import scenario_from_config  # noqa: E402
from mmcal.promptopt.job import run_prompt_search, search_engine  # noqa: E402

sm = snakemake  # noqa: F821
# the prompt the candidates go into and the scenario they are scored in (the reference's PT.py: its raw
# prompt without a newline before the instruction, and no image)
prompt_name, scenario_name = sm.params.prompt
prompt = prompt_from_config(prompt_name, sm.params.prompt_cfg)
scenario = scenario_from_config(scenario_name, sm.params.scenario_cfg)
engine = search_engine(
    sm.wildcards.model,
    sm.params.model_cfg,
    path=sm.input.model or None,
    device=sm.params.device,
    dtype=sm.params.dtype,
    batch_size=sm.params.batch_size,
    image_root=Path(sm.input.item_file).parent,
    prompt=prompt,
)
cfg = {k: v for k, v in dict(sm.params.cfg).items() if k not in ("enabled", "model", "dataset", "prompt", "scenario")}
cfg["cache_dir"] = sm.params.cache_dir
best = run_prompt_search(
    engine, sm.input.item_file, Path(sm.output.best).parent, cfg, seed=int(sm.params.seed), scenario=scenario
)
log.info("best prompt %r: %s", best["text"], best["test"])
finish(snakemake)  # noqa: F821
