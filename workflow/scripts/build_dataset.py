"""Rule build_dataset: write data/datasets/{dataset}/items.jsonl + manifest.json."""

import sys

sys.path.insert(0, snakemake.scriptdir)  # noqa: F821
from _setup import finish, start  # noqa: E402

log = start(snakemake)  # noqa: F821
from mmcal.data.registry import BuildContext, build_dataset  # noqa: E402

sm = snakemake  # noqa: F821
context = BuildContext(classes=dict(sm.params.classes), fmnist_root=sm.params.fmnist_root, seed=int(sm.params.seed))
info = build_dataset(sm.wildcards.dataset, dict(sm.params.cfg), sm.output.item_file, sm.output.manifest, context)
log.info("built %s: %s", sm.wildcards.dataset, info["per_split"])
finish(snakemake)  # noqa: F821
