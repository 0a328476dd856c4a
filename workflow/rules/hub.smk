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
        # comparisons whose models' own templates are read once downloaded (mmcal.engine.parity)
        parity=parity.deferred_check_slice(config, PARITY_AFTER_DOWNLOAD),
    script:
        "../scripts/download.py"


import re

from mmcal.data.registry import release_layout

# data sets with a release (mmcal.hub.download.download_release): a hub one is snapshot into
# data/downloads/<data set>/; a local one (release.path, the replica study) is only hashed, its folder the input
RELEASES = hub_download.releases(config)
HUB_RELEASES = [n for n, r in RELEASES.items() if not r.get("path")]
LOCAL_RELEASES = [n for n, r in RELEASES.items() if r.get("path")]

if HUB_RELEASES:

    localrules:
        download_release,

    rule download_release:
        output:
            folder=directory("data/downloads/{dataset}"),
            record="data/downloads/{dataset}.resolved.json",
        log:
            "logs/downloads/{dataset}.log",
        benchmark:
            "benchmarks/downloads/{dataset}.tsv"
        wildcard_constraints:
            dataset="|".join(re.escape(n) for n in HUB_RELEASES),
        conda:
            "../../envs/models.yaml"
        params:
            release=lambda wildcards: config["datasets"][wildcards.dataset]["release"],
            layout=lambda wildcards: release_layout(
                config["datasets"][wildcards.dataset]
            ),
            offline=config["offline"],
        script:
            "../scripts/download_release.py"


if LOCAL_RELEASES:

    localrules:
        hash_release,

    rule hash_release:
        input:
            folder=lambda wildcards: RELEASES[wildcards.dataset]["path"],
        output:
            record="data/downloads/{dataset}.resolved.json",
        log:
            "logs/downloads/{dataset}.log",
        benchmark:
            "benchmarks/downloads/{dataset}.tsv"
        wildcard_constraints:
            dataset="|".join(re.escape(n) for n in LOCAL_RELEASES),
        conda:
            "../../envs/models.yaml"
        params:
            release=lambda wildcards: RELEASES[wildcards.dataset],
            layout=lambda wildcards: release_layout(
                config["datasets"][wildcards.dataset]
            ),
            offline=config["offline"],
        script:
            "../scripts/download_release.py"


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
