# Data sets: every builder writes items in the common schema plus a manifest.


def dataset_inputs(wildcards):
    """A released file read by a builder is a job input (its download rule, or the user, makes it)."""
    cfg = dataset_cfg(wildcards.dataset)
    path = str(cfg.get("path", ""))
    if cfg.get("builder") in ("llava_json", "dated_news") and not path.startswith(
        "hf:"
    ):
        return {"release": path}
    return {}


def describer_cfg():
    """The describer block; a captioner runs on the study's device and dtype unless it names its own."""
    cfg = dict(config["describer"])
    if cfg.get("kind") == "captioner":
        cfg = {"device": config["device"], "dtype": config["dtype"], **cfg}
    return cfg


def describer_gpus(wildcards):
    # a captioner on CUDA holds a GPU like a scoring job; the template describer needs none
    cfg = describer_cfg()
    return int(str(cfg.get("device", "cpu")).startswith("cuda"))


rule build_dataset:
    input:
        unpack(dataset_inputs),
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
        gpu=describer_gpus,
    params:
        describer=describer_cfg(),
        seed=config["seed"],
    script:
        "../scripts/describe_images.py"
