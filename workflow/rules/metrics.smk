# Analysis on records only (CPU): metrics with CIs, paired comparisons, IDK self-assessment.


rule summarize:
    input:
        records=all_records(),
    output:
        csv="data/metrics/summary.csv",
        parquet="data/metrics/summary.parquet",
    log:
        "logs/metrics/summary.log",
    benchmark:
        "benchmarks/metrics/summary.tsv"
    conda:
        "../../envs/analysis.yaml"
    params:
        metrics=config["metrics"],
        seed=config["seed"],
    script:
        "../scripts/summarize.py"


rule compare:
    input:
        records=all_records(),
    output:
        "data/metrics/comparisons.csv",
    log:
        "logs/metrics/comparisons.log",
    benchmark:
        "benchmarks/metrics/comparisons.tsv"
    conda:
        "../../envs/analysis.yaml"
    params:
        comparisons=config["comparisons"],
        metrics=config["metrics"],
        seed=config["seed"],
    script:
        "../scripts/compare.py"


rule idk_metrics:
    input:
        records=idk_records(),
    output:
        table="data/metrics/idk.csv",
        comparisons="data/metrics/idk_comparisons.csv",
    log:
        "logs/metrics/idk.log",
    benchmark:
        "benchmarks/metrics/idk.tsv"
    conda:
        "../../envs/analysis.yaml"
    params:
        comparisons=idk_comparisons(),
        metrics=config["metrics"],
        idk=config["idk"],
        seed=config["seed"],
    script:
        "../scripts/idk_metrics.py"
