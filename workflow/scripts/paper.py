"""Rule paper: paper/main.tex that inputs every table and figure, with provenance."""

import json
import sys
from pathlib import Path

sys.path.insert(0, snakemake.scriptdir)  # noqa: F821
from _setup import finish, start  # noqa: E402

log = start(snakemake)  # noqa: F821
from mmcal.paper.build import paper_sections  # noqa: E402
from mmcal.paper.main_tex import write_main_tex  # noqa: E402
from mmcal.provenance import git_commit, today  # noqa: E402

sm = snakemake  # noqa: F821
tables = json.loads((Path(sm.input.tables) / "manifest.json").read_text())["tables"]
write_main_tex(
    sm.output[0],
    paper_sections(sm.params.figures, tables),
    commit=git_commit(),
    config_hash=sm.params.config_hash,
    date=today(),
)
log.info("paper with %d tables and %d figures", len(tables), len(sm.params.figures))
finish(snakemake)  # noqa: F821
