"""Rule describe_images: text descriptions of each item's image (for the text-vs-image scenarios)."""

import sys
from pathlib import Path

sys.path.insert(0, snakemake.scriptdir)  # noqa: F821
from _setup import finish, start  # noqa: E402

log = start(snakemake)  # noqa: F821
from mmcal.data.describe import build_descriptions, measured_error_rate, write_descriptions  # noqa: E402
from mmcal.items import read_items  # noqa: E402

sm = snakemake  # noqa: F821
items = read_items(sm.input.item_file)
cfg = dict(sm.params.describer)
descriptions = build_descriptions(
    items,
    error_rate=float(cfg.get("error_rate", 0.1)),
    seed=int(sm.params.seed),
    describer=cfg,
    image_root=Path(sm.input.item_file).parent,
)
write_descriptions(descriptions, sm.output[0])
log.info("described %d items; measured error rate %.3f", len(descriptions), measured_error_rate(descriptions))
finish(snakemake)  # noqa: F821
