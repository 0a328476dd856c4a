# Figures: one job per figure kind (see mmcal.figures.registry.figure_plan); figure options are params of
# these rules only, so changing them re-runs figures and nothing upstream.


rule figure:
    input:
        unpack(lambda wildcards: FIGURES[wildcards.kind]),
    output:
        pdf="figures/{kind}.pdf",
        png=report(
            "figures/{kind}.png",
            caption="../report/figure.rst",
            category="Figures",
        ),
    log:
        "logs/figures/{kind}.log",
    benchmark:
        "benchmarks/figures/{kind}.tsv"
    wildcard_constraints:
        kind="|".join(FIGURES) if FIGURES else "none",
    conda:
        "../../envs/analysis.yaml"
    params:
        figures=config["figures"],
    script:
        "../scripts/figure.py"
