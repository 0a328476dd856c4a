# Helpers shared by the workflow: config lookups, the figure plan and the list of final targets.
import re

from mmcal.errors import ConfigError
from mmcal.scheduling import score_priorities
from mmcal.tinyllava.config import resolve_config, stage_config
from mmcal.promptopt.openai_paraphraser import check_no_key

# A prompt-search API key comes from the environment only: params (and so provenance) never hold it.
check_no_key(config["promptopt"].get("paraphraser"))
for _key, _section in (("prompt", "prompts"), ("scenario", "scenarios")):
    if (
        config["promptopt"]["enabled"]
        and config["promptopt"][_key] not in config[_section]
    ):
        raise ConfigError(
            f"promptopt.{_key}: {config['promptopt'][_key]!r} is not one of the config's {_section} "
            f"{sorted(config[_section])}"
        )


def dataset_cfg(name):
    return config["datasets"][name]


def score_inputs(wildcards):
    """Items, the model folder when the DAG builds it (else the download rule's record of the model's
    source), descriptions when the scenario needs them."""
    inputs = {"item_file": f"data/datasets/{wildcards.dataset}/items.jsonl"}
    local = plan.model_dir(config, wildcards.model)
    if local:
        inputs["model"] = local
    else:
        inputs["downloads"] = hub_download.RESOLVED
    if plan.scenario_needs_descriptions(config, wildcards.scenario):
        inputs["descriptions"] = f"data/datasets/{wildcards.dataset}/descriptions.json"
    return inputs


def score_params(wildcards):
    run = plan.run_for(
        config, wildcards.model, wildcards.dataset, wildcards.scenario, wildcards.prompt
    )
    mcfg = config["models"][wildcards.model]
    return {
        "model_cfg": mcfg,
        "prompt_cfg": config["prompts"][wildcards.prompt] or {},
        "scenario_cfg": config["scenarios"][wildcards.scenario] or {},
        "splits": run["splits"],
        "readouts": plan.run_readouts(config, run),
        "device": config["device"],
        "dtype": mcfg.get("dtype", config["dtype"]),
        "batch_size": mcfg.get("batch_size", config["scoring"]["batch_size"]),
        "shard_size": config["scoring"]["shard_size"],
        "max_unscorable": config["scoring"]["max_unscorable"],
        "limit_per_split": run["limit"] or config["scoring"]["limit_per_split"],
    }


def model_gpus(wildcards):
    return int((config["models"][wildcards.model].get("resources") or {}).get("gpu", 0))


def model_resources():
    """The rule resources named in any model's `resources` besides gpu (mem_mb, runtime,
    slurm_partition, ...), each read per job from the job's model entry."""
    names = {k for m in config["models"].values() for k in (m.get("resources") or {})}
    return {name: _model_resource(name) for name in sorted(names - {"gpu"})}


def _model_resource(name):
    def get(wildcards, **aux):
        own = (config["models"][wildcards.model].get("resources") or {}).get(name)
        if own is not None:
            return own
        # A model without its own value takes the run's default (e.g. the profile's default-resources).
        defaults = workflow.resource_settings.default_resources
        default = defaults.get(name) if defaults is not None else None
        if default is None:
            raise ConfigError(
                f"models.{wildcards.model}.resources has no {name} (another model sets it) and "
                f"there is no default-resources {name}: set it for this model or as a default"
            )
        # aux: what Snakemake gives a resource function (input, threads, attempt, ...)
        return default.evaluate(wildcards, **aux).value

    return get


def all_targets():
    # recalibration runs wherever a run has calib rows to fit on, also when no figure or table part shows it
    recalibration = (
        ["data/metrics/recalibration.csv"] if recalibration_records() else []
    )
    return (
        [
            "data/metrics/summary.csv",
            "data/metrics/comparisons.csv",
            "paper/tables",
            "paper/main.tex",
        ]
        + recalibration
        + figure_targets()
    )


IDK_BUILDERS = ("fmnist_idk", "llava_json", "dated_news")
IDK_SETS = {n for n, d in config["datasets"].items() if d["builder"] in IDK_BUILDERS}


def idk_records():
    return [plan.records_path(r) for r in RUNS if r["dataset"] in IDK_SETS]


def idk_comparisons():
    """Configured comparisons on IDK data sets (also tested on self-assessment rates)."""
    return [
        c
        for c in config["comparisons"]
        if (c.get("where") or {}).get("dataset") in IDK_SETS
    ]


def recalibration_records():
    targets = (
        plan.expand_runs(
            {**config, "runs": config["recalibration"].get("targets") or []}, key="runs"
        )
        if config["recalibration"].get("targets")
        else [
            r
            for r in RUNS
            if "calib" in r["splits"]
            and r["dataset"] not in IDK_SETS
            and (r["scenario"] == "image" or r.get("import"))
            and not (
                r.get("import")
                and config["imports"][r["import"]]["harness"] == "vlmevalkit"
            )
        ]
    )
    return [plan.records_path(r) for r in targets]


def recalibration_fit_records():
    """With `recalibration.fit_scenario`, the records each target is fitted on: its model, data set and
    prompt scored under that scenario, on calib (the reference fitted its temperature on text-only prompts).
    """
    scenario = config["recalibration"]["fit_scenario"]
    if not scenario:
        return []
    scored = {(r["model"], r["dataset"], r["scenario"], r["prompt"]): r for r in RUNS}
    out = []
    for path in recalibration_records():
        model, dataset, _, prompt = path.split("/")[2:6]
        run = scored.get((model, dataset, scenario, prompt.removesuffix(".parquet")))
        if run is None or "calib" not in run["splits"]:
            raise ConfigError(
                f"recalibration.fit_scenario: {scenario!r}: no run scores {model}/{dataset}/{scenario}/"
                f"{prompt.removesuffix('.parquet')} on calib, which the target {path} would be fitted on"
            )
        out.append(plan.records_path(run))
    return sorted(set(out))


def recalibration_cfg():
    """`recalibration`, plus the harness readouts that carry a confidence when the study imports logs."""
    cfg = dict(config["recalibration"])
    if config.get("imports"):
        extra = ["harness_loglik", "harness_loglik_norm"]
        cfg["readouts"] = list(cfg["readouts"]) + [
            r for r in extra if r not in cfg["readouts"]
        ]
    return cfg


IMPORT_NAMES = [r["import"] for r in plan.import_runs(config)]
# A records path is scored unless its model is an imported run's (rule import_logs writes those); the
# model wildcard is followed by "/" in every path of the score rule.
SCORED_MODEL = (
    r"(?!(?:%s)(?:/|$))[A-Za-z0-9_.\-]+" % "|".join(re.escape(n) for n in IMPORT_NAMES)
    if IMPORT_NAMES
    else r"[A-Za-z0-9_.\-]+"
)


def import_inputs(wildcards):
    """The items an imported log joins by doc_id, when the entry's dataset is a `datasets:` entry."""
    items = plan.import_items(config, wildcards.model)
    return {"item_file": items} if items else {}


def import_run(wildcards):
    """An import entry's run keys; a path with other keys is not that entry's records file."""
    run = plan.import_run(config, wildcards.model)
    asked = {
        k: getattr(wildcards, k) for k in ("model", "dataset", "scenario", "prompt")
    }
    if any(run[k] != v for k, v in asked.items()):
        raise ConfigError(
            f"imports.{wildcards.model} writes {plan.records_path(run)}, not that path"
        )
    return run


FIGURES = figure_plan(config, RUNS)


def figure_targets():
    return [f"figures/{name}.{ext}" for name in FIGURES for ext in ("pdf", "png")]


def figure_section_title(wildcards):
    return PART_TITLES[FIGURES[wildcards.kind].section]


def paper_figures():
    """Per figure: its name, the part of main.tex that shows it, and its caption."""
    return [
        {"name": name, "section": fig.section, "caption": fig.caption}
        for name, fig in FIGURES.items()
    ]


def training_cfg(section, idk=False):
    """The tiny-LLaVA training config for one stage (mmcal.tinyllava.config.stage_config)."""
    return stage_config(config, "stage2_idk" if idk else section)


# --- priorities and thread counts (mmcal.scheduling; the training recipe fixes its threads) ---
SCORE_PRIORITIES = score_priorities(config)


def score_priority(wildcards):
    key = (wildcards.model, wildcards.dataset, wildcards.scenario, wildcards.prompt)
    return SCORE_PRIORITIES.get(key, 1)


def training_threads(section, idk=False):
    """The thread count a stage's recipe fixes (its weights depend on it): its job reserves that many cores.
    Resolved when a job is planned, so a study that trains nothing (or no IDK variant) is not checked for it.
    """

    def threads(wildcards):
        return resolve_config(training_cfg(section, idk=idk))[section]["threads"]

    return threads
