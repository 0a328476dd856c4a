"""Rule no_letter: every letter_greedy group under both no-letter policies (keep, drop) → no_letter.csv."""

import sys

sys.path.insert(0, snakemake.scriptdir)  # noqa: F821
from _setup import finish, start  # noqa: E402

log = start(snakemake)  # noqa: F821
from mmcal.analysis.summary import no_letter_summary  # noqa: E402
from mmcal.records import read_records  # noqa: E402

sm = snakemake  # noqa: F821
m = sm.params.metrics
table = no_letter_summary(
    read_records(list(sm.input.records)),
    B=int(m["bootstrap"]),
    seed=int(sm.params.seed),
    level=float(m["level"]),
    split=m["split"],
)
table.to_csv(sm.output[0], index=False)
log.info("no-letter policies: %d rows", len(table))
finish(snakemake)  # noqa: F821
