"""Rule summarize: every metric with cluster-bootstrap CIs per scored group → summary.csv/.parquet."""

import sys

sys.path.insert(0, snakemake.scriptdir)  # noqa: F821
from _setup import finish, start  # noqa: E402

log = start(snakemake)  # noqa: F821
from mmcal.analysis.summary import summarize  # noqa: E402
from mmcal.records import read_records  # noqa: E402

sm = snakemake  # noqa: F821
m = sm.params.metrics
table = summarize(
    read_records(list(sm.input.records)),
    B=int(m["bootstrap"]),
    seed=int(sm.params.seed),
    level=float(m["level"]),
    split=m["split"],
    no_letter=m["no_letter"],
)
table.to_csv(sm.output.csv, index=False)
table.to_parquet(sm.output.parquet, index=False)
log.info("summary: %d groups", len(table))
finish(snakemake)  # noqa: F821
