"""Rule figure: render one figure kind of the study (PDF + PNG)."""

import sys
from pathlib import Path

sys.path.insert(0, snakemake.scriptdir)  # noqa: F821
from _setup import start  # noqa: E402

log = start(snakemake)  # noqa: F821
from mmcal.figures.registry import make_figure  # noqa: E402

sm = snakemake  # noqa: F821
inputs = {name: list(sm.input[name]) if isinstance(sm.input[name], list) else [sm.input[name]]
          for name in sm.input.keys()}
paths = make_figure(sm.wildcards.kind, inputs, Path(sm.output.pdf).with_suffix(""), sm.config)
log.info("wrote %s", [str(p) for p in paths])
