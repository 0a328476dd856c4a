"""Rule idk_metrics: self-assessment metrics with CIs per model × prompt on IDK sets → idk.csv."""

import sys

sys.path.insert(0, snakemake.scriptdir)  # noqa: F821
from _setup import start  # noqa: E402

log = start(snakemake)  # noqa: F821
import pandas as pd  # noqa: E402

from mmcal.idk_metrics import idk_table  # noqa: E402
from mmcal.records import read_records  # noqa: E402

sm = snakemake  # noqa: F821
m = sm.params.metrics
if sm.input.records:
    table = idk_table(read_records(list(sm.input.records)), split=m["split"], B=int(m["bootstrap"]),
                      seed=int(sm.params.seed), level=float(m["level"]),
                      thresholds=tuple(sm.params.idk["thresholds"]))
else:
    table = pd.DataFrame()
table.to_csv(sm.output[0], index=False)
log.info("idk metrics: %d groups", len(table))
