# Models the DAG builds: the SmolLM2 checkpoint and the tiny-LLaVA stages. Training is one serial chain
# that every scoring job waits on: its jobs go first whenever they are ready (mmcal.scheduling).
from mmcal.scheduling import TRAINING


rule convert_smollm2:
    output:
        model_dir=directory(plan.BUILD_PATHS["smollm2"]),
    log:
        "logs/models/smollm2.log",
    benchmark:
        "benchmarks/models/smollm2.tsv"
    priority: TRAINING
    conda:
        "../../envs/models.yaml"
    script:
        "../scripts/convert_smollm2.py"


rule train_vision:
    output:
        model_dir=directory(plan.BUILD_PATHS["vision"]),
    log:
        "logs/models/vision.log",
    benchmark:
        "benchmarks/models/vision.tsv"
    priority: TRAINING
    conda:
        "../../envs/models.yaml"
    threads: training_threads("vision")
    params:
        cfg=training_cfg("vision"),
    script:
        "../scripts/train_vision.py"


rule train_stage1:
    input:
        vision=plan.BUILD_PATHS["vision"],
        lm=plan.BUILD_PATHS["smollm2"],
    output:
        model_dir=directory(plan.BUILD_PATHS["stage1"]),
    log:
        "logs/models/stage1.log",
    benchmark:
        "benchmarks/models/stage1.tsv"
    priority: TRAINING
    conda:
        "../../envs/models.yaml"
    threads: training_threads("stage1")
    params:
        cfg=training_cfg("stage1"),
    script:
        "../scripts/train_stage1.py"


rule train_stage2:
    input:
        start=plan.BUILD_PATHS["stage1"],
    output:
        model_dir=directory(plan.BUILD_PATHS["stage2"]),
    log:
        "logs/models/stage2.log",
    benchmark:
        "benchmarks/models/stage2.tsv"
    priority: TRAINING
    conda:
        "../../envs/models.yaml"
    threads: training_threads("stage2")
    params:
        cfg=training_cfg("stage2"),
    script:
        "../scripts/train_stage2.py"


# The IDK-trained variant continues from stage 2 (same recipe, IDK examples mixed in),
# so it does not pay stage 2's plateau again.
rule train_stage2_idk:
    input:
        start=plan.BUILD_PATHS["stage2"],
    output:
        model_dir=directory(plan.BUILD_PATHS["stage2_idk"]),
    log:
        "logs/models/stage2_idk.log",
    benchmark:
        "benchmarks/models/stage2_idk.tsv"
    priority: TRAINING
    conda:
        "../../envs/models.yaml"
    threads: training_threads("stage2", idk=True)
    params:
        cfg=training_cfg("stage2", idk=True),
    script:
        "../scripts/train_stage2.py"
