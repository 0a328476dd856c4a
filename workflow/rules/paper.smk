# LaTeX tables and paper/main.tex, with provenance.


rule tables:
    input:
        **table_inputs(),
    output:
        main="paper/tables/main_results.tex",
        manifest="paper/tables/manifest.json",
    log:
        "logs/paper/tables.log",
    benchmark:
        "benchmarks/paper/tables.tsv"
    conda:
        "../../envs/analysis.yaml"
    script:
        "../scripts/tables.py"


rule paper:
    input:
        tables="paper/tables/manifest.json",
        figures=figure_targets(),
    output:
        "paper/main.tex",
    log:
        "logs/paper/main.log",
    benchmark:
        "benchmarks/paper/main.tsv"
    conda:
        "../../envs/analysis.yaml"
    script:
        "../scripts/paper.py"
