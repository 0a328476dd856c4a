"""Rule import_logs: one `imports:` entry's harness logs -> records + an import report (JSON)."""

import sys

sys.path.insert(0, snakemake.scriptdir)  # noqa: F821
from _setup import finish, start  # noqa: E402

log = start(snakemake)  # noqa: F821
from mmcal.imports import run_import_entry  # noqa: E402

sm = snakemake  # noqa: F821
report = run_import_entry(
    sm.wildcards.model,
    dict(sm.params.entry),
    dict(sm.params.run),
    sm.output.records,
    sm.output.report,
    sm.input.get("item_file"),
)
log.info(
    "imported %s: %d of %d lines ok, accuracy %s",
    report["task"],
    report["lines_ok"],
    report["lines"],
    report["accuracy"],
)
finish(snakemake)  # noqa: F821
