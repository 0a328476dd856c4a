# The iterative prompt search: paraphrased answer prompts scored on calib, the best on test.


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
    conda:
        "../../envs/models.yaml"
    threads: config["threads"]
    resources:
        **model_resources(),
        gpu=model_gpus,
    params:
        cfg=config["promptopt"],
        prompt=[config["promptopt"]["prompt"], config["promptopt"]["scenario"]],
        prompt_cfg=config["prompts"].get(config["promptopt"]["prompt"]) or {},
        scenario_cfg=config["scenarios"].get(config["promptopt"]["scenario"]) or {},
        model_cfg=lambda wildcards: config["models"][wildcards.model],
        device=config["device"],
        dtype=config["dtype"],
        batch_size=config["scoring"]["batch_size"],
        seed=config["seed"],
        cache_dir="data/promptopt/cache",
    script:
        "../scripts/prompt_search.py"
