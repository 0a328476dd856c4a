"""Rule compare: the paired comparisons the config asks for → comparisons.csv (Holm-corrected)."""

import sys

sys.path.insert(0, snakemake.scriptdir)  # noqa: F821
from _setup import finish, start  # noqa: E402

log = start(snakemake)  # noqa: F821
from mmcal.analysis.summary import compare  # noqa: E402
from mmcal.records import read_records  # noqa: E402

sm = snakemake  # noqa: F821
m = sm.params.metrics
records = read_records(list(sm.input.records))
table = compare(
    records,
    [dict(c) for c in sm.params.comparisons],
    B=int(m["comparison_bootstrap"]),
    seed=int(sm.params.seed),
    level=float(m["level"]),
    margin_default=float(m["margin"]),
    split=m["split"],
    no_letter=m["no_letter"],
)
table.to_csv(sm.output[0], index=False)
log.info("comparisons: %d rows", len(table))
finish(snakemake)  # noqa: F821
