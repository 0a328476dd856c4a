"""Rule score: one (model, dataset, scenario, prompt) → records Parquet (resumable)."""

import sys

sys.path.insert(0, snakemake.scriptdir)  # noqa: F821
from _setup import finish, start  # noqa: E402

log = start(snakemake)  # noqa: F821
from mmcal.engine.job import remove_shards, score_to_records  # noqa: E402
from mmcal.engine.prompts import prompt_from_config  # noqa: E402
from mmcal.engine.scenarios import scenario_from_config  # noqa: E402

sm = snakemake  # noqa: F821
p = sm.params.cfg
score_to_records(
    sm.wildcards.model,
    p["model_cfg"],
    sm.wildcards.dataset,
    sm.input.item_file,
    sm.output[0],
    scenario_from_config(sm.wildcards.scenario, p["scenario_cfg"]),
    prompt_from_config(sm.wildcards.prompt, p["prompt_cfg"]),
    readouts=p["readouts"],
    splits=p["splits"],
    device=p["device"],
    dtype=p["dtype"],
    batch_size=p["batch_size"],
    shard_size=p["shard_size"],
    limit_per_split=p.get("limit_per_split"),
    model_path=sm.input.get("model"),
    descriptions_path=sm.input.get("descriptions"),
    max_unscorable=p["max_unscorable"],
    keep_shards=True,
)
# the shards go only once provenance is written: a job failing there (a full disk) is assembled again, not re-scored
finish(snakemake, cleanup=lambda: remove_shards(sm.output[0]))  # noqa: F821
