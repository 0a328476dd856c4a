# Data sets: every builder writes items in the common schema plus a manifest.


from mmcal.data.describe import describer_gpus, describer_settings
from mmcal.data.registry import release_inputs


rule build_dataset:
    input:
        unpack(
            lambda wildcards: release_inputs(
                wildcards.dataset, dataset_cfg(wildcards.dataset)
            )
        ),
    output:
        item_file="data/datasets/{dataset}/items.jsonl",
        manifest="data/datasets/{dataset}/manifest.json",
    log:
        "logs/datasets/{dataset}.log",
    benchmark:
        "benchmarks/datasets/{dataset}.tsv"
    conda:
        "../../envs/data.yaml"
    params:
        cfg=lambda wildcards: dataset_cfg(wildcards.dataset),
        classes=config["classes"],
        fmnist_root=config["fmnist_root"],
        seed=config["seed"],
    script:
        "../scripts/build_dataset.py"


rule describe_images:
    input:
        item_file="data/datasets/{dataset}/items.jsonl",
    output:
        "data/datasets/{dataset}/descriptions.json",
    log:
        "logs/datasets/{dataset}.describe.log",
    benchmark:
        "benchmarks/datasets/{dataset}.describe.tsv"
    conda:
        "../../envs/data.yaml"
    resources:
        gpu=describer_gpus(describer_settings(config)),
    params:
        describer=describer_settings(config),
        seed=config["seed"],
    script:
        "../scripts/describe_images.py"
