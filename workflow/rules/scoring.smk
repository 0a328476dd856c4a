# Scoring: model × dataset × scenario × prompt → records (one forward pass per item).
# Largest jobs first, the IDK variant's before the others (mmcal.scheduling).
rule score:
    input:
        unpack(score_inputs),
    output:
        plan.RECORDS,
    log:
        "logs/score/{model}/{dataset}/{scenario}/{prompt}.log",
    benchmark:
        "benchmarks/score/{model}/{dataset}/{scenario}/{prompt}.tsv"
    wildcard_constraints:
        model=SCORED_MODEL,
    priority: score_priority
    conda:
        "../../envs/models.yaml"
    threads: config["scoring"]["threads"]
    resources:
        **model_resources(),
        gpu=model_gpus,
    params:
        cfg=score_params,
    script:
        "../scripts/score.py"
