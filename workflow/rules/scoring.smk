# Scoring: model × dataset × scenario × prompt → records (one forward pass per item).
# Largest jobs first, the IDK variant's before the others (mmcal.scheduling).
from mmcal.scheduling import score_priorities

SCORE_PRIORITIES = score_priorities(config)


def score_priority(wildcards):
    key = (wildcards.model, wildcards.dataset, wildcards.scenario, wildcards.prompt)
    return SCORE_PRIORITIES.get(key, 1)


rule score:
    input:
        unpack(score_inputs),
    output:
        plan.RECORDS,
    log:
        "logs/score/{model}/{dataset}/{scenario}/{prompt}.log",
    benchmark:
        "benchmarks/score/{model}/{dataset}/{scenario}/{prompt}.tsv"
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
