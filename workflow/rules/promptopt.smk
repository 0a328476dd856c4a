# The iterative prompt search: paraphrased answer prompts scored on calib, the best on test.
# A 2-thread job and one of the largest: before any two scoring jobs (mmcal.scheduling).
from mmcal.scheduling import PROMPT_SEARCH

# The OpenAI paraphraser needs the network, which a cluster's login node has and its compute nodes may not:
# the search then runs where Snakemake runs (its scoring too: docs/cluster.md). A local paraphraser (kind hf or
# smollm2) runs in the job, on the compute node, from the cache the download job filled.
if (config["promptopt"].get("paraphraser") or {}).get("kind") == "openai":

    localrules:
        prompt_search,


rule prompt_search:
    input:
        item_file="data/datasets/{dataset}/items.jsonl",
        model=lambda wildcards: plan.model_dir(config, wildcards.model) or [],
        # hub models (the scored one, a hub paraphraser) are read from the cache the download job fills
        downloads=lambda wildcards: (
            [hub_download.RESOLVED]
            if any(
                s["key"] in (f"models.{wildcards.model}", "promptopt.paraphraser")
                for s in hub_download.sources(config)
            )
            else []
        ),
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
