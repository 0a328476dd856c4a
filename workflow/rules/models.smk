# Models the DAG builds: the SmolLM2 checkpoint and the tiny-LLaVA stages.


def training_cfg(section, idk=False):
    """The tiny-LLaVA training config for one stage: shared keys + that stage's section only,
    so changing stage 2 settings never re-trains the vision tower or stage 1."""
    t = config["training"]
    shared = {k: v for k, v in t.items() if k not in ("vision", "stage1", "stage2", "stage2_idk")}
    cfg = {
        **shared,
        "train_classes": config["classes"]["known"],
        "fmnist_root": config["fmnist_root"],
        section: {"seed": config["seed"], **(t.get(section) or {})},
    }
    if idk:
        cfg[section].update(t.get("stage2_idk") or {})
        cfg[section]["idk_train_classes"] = config["classes"]["idk_train"]
    return cfg


rule convert_smollm2:
    output:
        model_dir=directory(study.BUILD_PATHS["smollm2"]),
    log:
        "logs/models/smollm2.log",
    benchmark:
        "benchmarks/models/smollm2.tsv"
    conda:
        "../../envs/models.yaml"
    script:
        "../scripts/convert_smollm2.py"


rule train_vision:
    output:
        model_dir=directory(study.BUILD_PATHS["vision"]),
    params:
        cfg=training_cfg("vision"),
    threads: config["threads"]
    log:
        "logs/models/vision.log",
    benchmark:
        "benchmarks/models/vision.tsv"
    conda:
        "../../envs/models.yaml"
    script:
        "../scripts/train_vision.py"


rule train_stage1:
    input:
        vision=study.BUILD_PATHS["vision"],
        lm=study.BUILD_PATHS["smollm2"],
    output:
        model_dir=directory(study.BUILD_PATHS["stage1"]),
    params:
        cfg=training_cfg("stage1"),
    threads: config["threads"]
    log:
        "logs/models/stage1.log",
    benchmark:
        "benchmarks/models/stage1.tsv"
    conda:
        "../../envs/models.yaml"
    script:
        "../scripts/train_stage1.py"


rule train_stage2:
    input:
        stage1=study.BUILD_PATHS["stage1"],
    output:
        model_dir=directory(study.BUILD_PATHS["stage2"]),
    params:
        cfg=training_cfg("stage2"),
    threads: config["threads"]
    log:
        "logs/models/stage2.log",
    benchmark:
        "benchmarks/models/stage2.tsv"
    conda:
        "../../envs/models.yaml"
    script:
        "../scripts/train_stage2.py"


rule train_stage2_idk:
    input:
        stage1=study.BUILD_PATHS["stage1"],
    output:
        model_dir=directory(study.BUILD_PATHS["stage2_idk"]),
    params:
        cfg=training_cfg("stage2", idk=True),
    threads: config["threads"]
    log:
        "logs/models/stage2_idk.log",
    benchmark:
        "benchmarks/models/stage2_idk.tsv"
    conda:
        "../../envs/models.yaml"
    script:
        "../scripts/train_stage2.py"
