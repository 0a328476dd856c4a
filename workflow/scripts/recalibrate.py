"""Rule recalibrate: fit on calib, apply to test, before/after with CIs and paired tests."""

import json
import sys

sys.path.insert(0, snakemake.scriptdir)  # noqa: F821
from _setup import finish, start  # noqa: E402

log = start(snakemake)  # noqa: F821
from mmcal.calibration.study import recalibration_study, split_robustness  # noqa: E402
from mmcal.records import read_records, write_records  # noqa: E402

sm = snakemake  # noqa: F821
cfg, m = sm.params.cfg, sm.params.metrics
records = read_records(list(sm.input.records))
# recalibration.fit_scenario: each target is fitted on its twin scored under that scenario
fit_records = read_records(list(sm.input.fit_records)) if sm.input.fit_records else None
table, params, recalibrated = recalibration_study(
    records,
    cfg["readouts"],
    cfg["methods"],
    B=int(m["bootstrap"]),
    seed=int(sm.params.seed),
    level=float(m["level"]),
    fit_records=fit_records,
)
table.to_csv(sm.output.table, index=False)
split_robustness(
    records, cfg["readouts"], ["temperature"], int(cfg["n_seeds"]), seed=int(sm.params.seed), fit_records=fit_records
).to_csv(sm.output.splits, index=False)
with open(sm.output.params, "w") as fh:
    json.dump(params, fh, indent=2)
write_records(recalibrated, sm.output.records)
log.info("recalibrated %d groups", len(params))
finish(snakemake)  # noqa: F821
