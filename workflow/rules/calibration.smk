# Recalibration: fit on calib, apply to test, from records only.


rule recalibrate:
    input:
        records=recalibration_records(),
        fit_records=recalibration_fit_records(),
    output:
        table=report(
            "data/metrics/recalibration.csv",
            caption="../report/recalibration.rst",
            category="Metrics",
        ),
        splits="data/metrics/recalibration_splits.csv",
        params="data/calibration/params.json",
        records="data/calibration/recalibrated.parquet",
    log:
        "logs/calibration/recalibrate.log",
    benchmark:
        "benchmarks/calibration/recalibrate.tsv"
    conda:
        "../../envs/analysis.yaml"
    params:
        cfg=recalibration_cfg(),
        metrics=config["metrics"],
        seed=config["seed"],
    script:
        "../scripts/recalibrate.py"
