"""Rule figure: draw one planned figure (PDF + PNG) from its inputs and its spec (params)."""

import sys
from pathlib import Path

sys.path.insert(0, snakemake.scriptdir)  # noqa: F821
from _setup import finish, start  # noqa: E402

log = start(snakemake)  # noqa: F821
from mmcal.figures.registry import render_figure  # noqa: E402

sm = snakemake  # noqa: F821
inputs = {
    name: list(sm.input[name]) if isinstance(sm.input[name], list) else [sm.input[name]] for name in sm.input.keys()
}
paths = render_figure(inputs, sm.params.spec, Path(sm.output.pdf).with_suffix(""))
log.info("wrote %s", [str(p) for p in paths])
finish(snakemake)  # noqa: F821
