"""Rule tables: every booktabs table of the study under paper/tables/ with its cell map
(<table>.cells.json), plus manifest.json."""

import json
import sys
from pathlib import Path

sys.path.insert(0, snakemake.scriptdir)  # noqa: F821
from _setup import finish, start  # noqa: E402

log = start(snakemake)  # noqa: F821
from mmcal.paper.build import make_tables  # noqa: E402

sm = snakemake  # noqa: F821
inputs = {name: sm.input[name] for name in sm.input.keys()}
out_dir = Path(sm.output.tables)
written = make_tables(inputs, out_dir, sm.params.parts, sm.params.level, dict(sm.params.methods))
manifest = {
    "tables": [str(p) for p in written],
    "cell_maps": [str(p.with_suffix(".cells.json")) for p in written],
    "inputs": inputs,
}
(out_dir / "manifest.json").write_text(json.dumps(manifest, indent=2))
log.info("wrote %d tables", len(written))
finish(snakemake)  # noqa: F821
