"""Rules download_release / hash_release: a data set's release (hub snapshot → data/downloads/{dataset}/,
or a local folder's content hash) → data/downloads/{dataset}.resolved.json."""

import sys

sys.path.insert(0, snakemake.scriptdir)  # noqa: F821
from _setup import finish, start  # noqa: E402

log = start(snakemake)  # noqa: F821
from mmcal.hub.download import download_release  # noqa: E402

sm = snakemake  # noqa: F821
rec = download_release(
    sm.wildcards.dataset,
    dict(sm.params.release),
    sm.params.offline,
    dict(sm.output.items()).get("folder"),  # hash_release (local mode) has no folder output
    sm.output.record,
    dict(sm.params.layout),  # the data set's path / image_root, checked against what the release holds
)
log.info("%s: %s (%s) commit %s sha256 %s", rec["key"], rec["path"], rec["mode"], rec.get("commit"), rec["sha256"])
finish(snakemake)  # noqa: F821
