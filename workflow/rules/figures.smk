# Figures: one job per planned figure (mmcal.figures.registry.figure_plan). Its params are the
# figure's spec, the slice of `parts` and of the figure options its renderer reads, so editing one
# re-runs exactly the figures that show it and nothing upstream.


rule figure:
    input:
        unpack(lambda wildcards: FIGURES[wildcards.kind].inputs),
    output:
        pdf="figures/{kind}.pdf",
        png=report(
            "figures/{kind}.png",
            caption="../report/figure.rst",
            category="Figures",
            subcategory=figure_section_title,
            labels={"figure": "{kind}"},
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
        spec=lambda wildcards: FIGURES[wildcards.kind].spec,
        # read by the report's caption template only (workflow/report/figure.rst)
        caption=lambda wildcards: FIGURES[wildcards.kind].caption,
    script:
        "../scripts/figure.py"
