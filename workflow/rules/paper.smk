# LaTeX tables and paper/main.tex, with provenance.

from mmcal.paper.build import table_methods


rule tables:
    input:
        **table_inputs(FIGURES),
    output:
        tables=report(
            directory("paper/tables"),
            # beside each {name}.tex: {name}.cells.json, each cell's source row and method
            patterns=["{name}.tex"],
            caption="../report/table.rst",
            category="Tables",
            labels={"table": "{name}"},
        ),
    log:
        "logs/paper/tables.log",
    benchmark:
        "benchmarks/paper/tables.tsv"
    conda:
        "../../envs/analysis.yaml"
    params:
        parts=table_parts(config["parts"], plan.import_runs(config)),
        level=config["metrics"]["level"],
        # How each metric file was computed, written into the cell maps (<table>.cells.json) that
        # `mmcal audit TABLE --cell ROW,COL` recomputes a printed number with.
        methods=table_methods(config),
    script:
        "../scripts/tables.py"


rule paper:
    input:
        tables="paper/tables",
        figures=figure_targets(),
    output:
        report("paper/main.tex", caption="../report/paper.rst", category="Paper"),
    log:
        "logs/paper/main.log",
    benchmark:
        "benchmarks/paper/main.tsv"
    conda:
        "../../envs/analysis.yaml"
    params:
        figures=paper_figures(),
        # main.tex prints the hash of the config it was built from. The job never sees the config,
        # so the hash is computed here; as a param, any config edit re-writes main.tex (a second's
        # work) and the printed hash is never stale.
        config_hash=provenance.config_hash(config),
    script:
        "../scripts/paper.py"
