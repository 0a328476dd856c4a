# The iterative prompt search: paraphrased answer prompts scored on calib, the best on test.
# A 2-thread job and one of the largest: before any two scoring jobs (mmcal.scheduling).
from mmcal.scheduling import PROMPT_SEARCH


rule prompt_search:
    input:
        item_file="data/datasets/{dataset}/items.jsonl",
        model=lambda wildcards: plan.model_dir(config, wildcards.model) or [],
    output:
        trajectory="data/promptopt/{model}/{dataset}/trajectory.csv",
        best="data/promptopt/{model}/{dataset}/best.json",
        search="data/promptopt/{model}/{dataset}/search.json",
    log:
        "logs/promptopt/{model}/{dataset}.log",
    benchmark:
        "benchmarks/promptopt/{model}/{dataset}.tsv"
    priority: PROMPT_SEARCH
    conda:
        "../../envs/models.yaml"
    threads: config["threads"]
    resources:
        **model_resources(),
        gpu=model_gpus,
    params:
        cfg=config["promptopt"],
        model_cfg=lambda wildcards: config["models"][wildcards.model],
        device=config["device"],
        dtype=config["dtype"],
        batch_size=config["scoring"]["batch_size"],
        seed=config["seed"],
        cache_dir="data/promptopt/cache",
    script:
        "../scripts/prompt_search.py"
