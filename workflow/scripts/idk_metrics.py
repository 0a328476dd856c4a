"""Rule idk_metrics: self-assessment metrics with CIs per model × prompt on IDK sets → idk.csv."""

import sys

sys.path.insert(0, snakemake.scriptdir)  # noqa: F821
from _setup import finish, start  # noqa: E402

log = start(snakemake)  # noqa: F821
import pandas as pd  # noqa: E402

from mmcal.analysis.idk import idk_table  # noqa: E402
from mmcal.analysis.idk_comparisons import idk_paired  # noqa: E402
from mmcal.records import read_records  # noqa: E402

sm = snakemake  # noqa: F821
m = sm.params.metrics
table = comparisons = pd.DataFrame()
if sm.input.records:
    records = read_records(list(sm.input.records))
    table = idk_table(
        records,
        split=m["split"],
        B=int(m["bootstrap"]),
        seed=int(sm.params.seed),
        level=float(m["level"]),
        thresholds=tuple(sm.params.idk["thresholds"]),
    )
    comparisons = idk_paired(
        records,
        [dict(c) for c in sm.params.comparisons],
        B=int(m["comparison_bootstrap"]),
        seed=int(sm.params.seed),
        level=float(m["level"]),
        split=m["split"],
    )
table.to_csv(sm.output.table, index=False)
comparisons.to_csv(sm.output.comparisons, index=False)
log.info("idk metrics: %d groups", len(table))
finish(snakemake)  # noqa: F821
