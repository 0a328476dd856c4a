# Hub sources: the download rule (login node: it has the network) fetches every hub model and data set
# the study reads into the HF cache, so compute jobs run offline; models assembled from hub sources.
localrules:
    download,


rule download:
    output:
        hub_download.RESOLVED,
    log:
        "logs/downloads/resolved.log",
    benchmark:
        "benchmarks/downloads/resolved.tsv"
    conda:
        "../../envs/models.yaml"
    params:
        cfg=lambda wildcards: {
            "offline": config["offline"],
            "sources": hub_download.sources(config),
        },
    script:
        "../scripts/download.py"


from mmcal.errors import ConfigError

# the config's model assembled by llava_stage1 (one folder, so at most one such model)
LLAVA_STAGE1 = [
    n for n, m in config["models"].items() if m.get("build") == "llava_stage1"
]
if len(LLAVA_STAGE1) > 1:
    raise ConfigError(
        f"models {LLAVA_STAGE1}: only one model can have build: llava_stage1"
    )

if LLAVA_STAGE1:

    rule assemble_llava_stage1:
        input:
            resolved=hub_download.RESOLVED,
        output:
            model_dir=directory(plan.BUILD_PATHS["llava_stage1"]),
        log:
            "logs/models/llava-1.5-7b-stage1.log",
        benchmark:
            "benchmarks/models/llava-1.5-7b-stage1.tsv"
        conda:
            "../../envs/models.yaml"
        resources:
            # Vicuna-7B in float16 (13.5 GB), its state dict re-keyed, and the saved copy's buffers
            mem_mb=40000,
        params:
            model=LLAVA_STAGE1[0],
            cfg=config["models"][LLAVA_STAGE1[0]],
            seed=config["seed"],
        script:
            "../scripts/assemble_llava_stage1.py"
