"""Rule paper: paper/main.tex that inputs every table and figure, with provenance."""

import json
import sys

sys.path.insert(0, snakemake.scriptdir)  # noqa: F821
from _setup import start  # noqa: E402

log = start(snakemake)  # noqa: F821
from mmcal.paper.main_tex import write_main_tex  # noqa: E402
from mmcal.provenance import config_hash, git_commit, today  # noqa: E402
from mmcal.figures.registry import paper_sections  # noqa: E402

sm = snakemake  # noqa: F821
tables = json.loads(open(sm.input.tables).read())["tables"]
figures = [f for f in sm.input.figures if f.endswith(".pdf")]
write_main_tex(sm.output[0], paper_sections(figures, tables), commit=git_commit(),
               config_hash=config_hash(sm.config), date=today())
log.info("paper with %d tables and %d figures", len(tables), len(figures))
