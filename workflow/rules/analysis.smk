# Analysis on records only (CPU): metrics with CIs, paired comparisons, IDK self-assessment.
# Before the figures and tables that read them (mmcal.scheduling).
from mmcal.scheduling import ANALYSIS


rule summarize:
    input:
        records=plan.all_records(config),
    output:
        csv=report(
            "data/metrics/summary.csv",
            caption="../report/summary.rst",
            category="Metrics",
        ),
        parquet="data/metrics/summary.parquet",
    log:
        "logs/metrics/summary.log",
    benchmark:
        "benchmarks/metrics/summary.tsv"
    priority: ANALYSIS
    conda:
        "../../envs/analysis.yaml"
    params:
        metrics=config["metrics"],
        seed=config["seed"],
    script:
        "../scripts/summarize.py"


rule compare:
    input:
        records=plan.all_records(config),
    output:
        report(
            "data/metrics/comparisons.csv",
            caption="../report/comparisons.rst",
            category="Metrics",
        ),
    log:
        "logs/metrics/comparisons.log",
    benchmark:
        "benchmarks/metrics/comparisons.tsv"
    priority: ANALYSIS
    conda:
        "../../envs/analysis.yaml"
    params:
        comparisons=config["comparisons"],
        metrics=config["metrics"],
        seed=config["seed"],
    script:
        "../scripts/compare.py"


rule no_letter:
    input:
        records=plan.all_records(config),
    output:
        "data/metrics/no_letter.csv",
    log:
        "logs/metrics/no_letter.log",
    benchmark:
        "benchmarks/metrics/no_letter.tsv"
    priority: ANALYSIS
    conda:
        "../../envs/analysis.yaml"
    params:
        metrics=config["metrics"],
        seed=config["seed"],
    script:
        "../scripts/no_letter.py"


rule idk_metrics:
    input:
        records=idk_records(),
    output:
        table=report(
            "data/metrics/idk.csv", caption="../report/idk.rst", category="Metrics"
        ),
        comparisons=report(
            "data/metrics/idk_comparisons.csv",
            caption="../report/idk_comparisons.rst",
            category="Metrics",
        ),
    log:
        "logs/metrics/idk.log",
    benchmark:
        "benchmarks/metrics/idk.tsv"
    priority: ANALYSIS
    conda:
        "../../envs/analysis.yaml"
    params:
        comparisons=idk_comparisons(),
        metrics=config["metrics"],
        idk=config["idk"],
        seed=config["seed"],
    script:
        "../scripts/idk_metrics.py"
