"""Rule download: every hub model and data set of the study into the HF cache (or, in local mode, the
content hash of its folder) → data/downloads/resolved.json."""

import sys

sys.path.insert(0, snakemake.scriptdir)  # noqa: F821
from _setup import finish, start  # noqa: E402

log = start(snakemake)  # noqa: F821
from mmcal.engine.parity import check_deferred  # noqa: E402
from mmcal.hub.download import download_all  # noqa: E402

cfg = snakemake.params.cfg  # noqa: F821
resolved = download_all(cfg["sources"], cfg["offline"], snakemake.output[0])  # noqa: F821
for key, rec in resolved.items():
    log.info("%s: %s (%s) commit %s", key, rec["path"], rec["mode"], rec.get("commit"))
# the comparisons planning could not check: their models' own templates are in the cache now
check_deferred(dict(snakemake.params.parity))  # noqa: F821
finish(snakemake)  # noqa: F821
