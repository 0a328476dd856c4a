"""The study plan: which (model, dataset, scenario, prompt) combinations the config asks for.

The Snakefile and the CLI both use this, so the DAG is planned from config data alone: a user adds
a model pair, a condition or a prompt by editing config, not code.
"""

from __future__ import annotations

from itertools import product

from mmcal.errors import ConfigError

RECORDS = "data/records/{model}/{dataset}/{scenario}/{prompt}.parquet"


def _check_names(config: dict, section: str, names: list[str], where: str) -> None:
    known = config.get(section) or {}
    missing = [n for n in names if n not in known]
    if missing:
        raise ConfigError(f"{where}: unknown {section} {missing}; defined: {sorted(known)}")


def expand_runs(config: dict, key: str = "runs") -> list[dict]:
    """Expand each entry of ``config[key]`` (lists of models × datasets × scenarios × prompts)."""
    out, seen = [], set()
    for i, run in enumerate(config.get(key) or []):
        where = f"config {key}[{i}]"
        for section in ("models", "datasets", "scenarios", "prompts"):
            if not run.get(section):
                raise ConfigError(f"{where}: needs a non-empty list '{section}'")
            _check_names(config, section, run[section], where)
        splits = list(run.get("splits") or ["calib", "test"])
        limit = run.get("limit")
        readouts = run.get("readouts")  # None: the top-level `readouts`
        for m, d, s, p in product(run["models"], run["datasets"], run["scenarios"], run["prompts"]):
            mcfg = config["models"][m]
            scfg = config["scenarios"][s] or {}
            if mcfg.get("kind", "mllm") == "llm" and scfg.get("image", True):
                raise ConfigError(f"{where}: model {m!r} is text-only (kind: llm) but scenario {s!r} shows an image")
            combo = (m, d, s, p)
            if combo in seen:  # listed by two runs: score the union of their splits
                prev = next(r for r in out if (r["model"], r["dataset"], r["scenario"], r["prompt"]) == combo)
                prev["splits"] = sorted(set(prev["splits"]) | set(splits))
                prev["limit"] = None if prev["limit"] is None or limit is None else max(prev["limit"], limit)
                if prev["readouts"] != readouts:
                    raise ConfigError(f"{where}: {'/'.join(combo)} is also scored by another run with other readouts")
                continue
            seen.add(combo)
            out.append(
                {
                    "model": m,
                    "dataset": d,
                    "scenario": s,
                    "prompt": p,
                    "splits": splits,
                    "limit": limit,
                    "readouts": readouts,
                }
            )
    return out


def run_readouts(config: dict, run: dict) -> list[str]:
    """The readouts a run's scoring job computes: its own, else the top-level ``readouts``."""
    return list(run.get("readouts") or config["readouts"])


def run_for(config: dict, model: str, dataset: str, scenario: str, prompt: str) -> dict:
    for r in expand_runs(config):
        if (r["model"], r["dataset"], r["scenario"], r["prompt"]) == (model, dataset, scenario, prompt):
            return r
    raise ConfigError(f"no run in the config scores {model}/{dataset}/{scenario}/{prompt}")


def records_path(run: dict) -> str:
    return RECORDS.format(model=run["model"], dataset=run["dataset"], scenario=run["scenario"], prompt=run["prompt"])


def all_records(config: dict) -> list[str]:
    """Every records file the analysis reads: the scored runs' and the imported runs'."""
    return [records_path(r) for r in expand_runs(config) + import_runs(config)]


# Imported runs (config `imports:`): harness logs turned into records by the rule import_logs.
IMPORT_REPORT = "data/imports/{model}/{dataset}/{scenario}/{prompt}.json"
IMPORT_DEFAULT_SCENARIO = {"lm-eval": "blind", "lmms-eval": "image", "vlmevalkit": "image"}


def import_runs(config: dict) -> list[dict]:
    """Each ``imports:`` entry as a run: model = the entry's name, dataset = its ``dataset`` (else its
    ``task``, else the name), scenario = its ``scenario`` (else image; blind for lm-eval), prompt = its
    ``prompt`` (else the harness's name). A name that is also a ``models:`` entry is an error."""
    out = []
    for name, entry in (config.get("imports") or {}).items():
        if name in (config.get("models") or {}):
            raise ConfigError(f"imports.{name}: a models: entry has this name; an imported run needs its own")
        harness = entry["harness"]
        if harness not in IMPORT_DEFAULT_SCENARIO:
            raise ConfigError(f"imports.{name}: harness {harness!r} is not one of {sorted(IMPORT_DEFAULT_SCENARIO)}")
        out.append(
            {
                "model": name,
                "dataset": entry.get("dataset") or entry.get("task") or name,
                "scenario": entry.get("scenario") or IMPORT_DEFAULT_SCENARIO[harness],
                "prompt": entry.get("prompt") or harness,
                "splits": ["calib", "test"],
                "limit": None,
                "readouts": None,
                "import": name,
            }
        )
    return out


def import_run(config: dict, name: str) -> dict:
    for run in import_runs(config):
        if run["import"] == name:
            return run
    raise ConfigError(f"no imports: entry named {name!r}; defined: {sorted(config.get('imports') or {})}")


def import_items(config: dict, name: str) -> str | None:
    """The items file an import joins by doc_id: its ``dataset`` when that names a ``datasets:`` entry."""
    dataset = (config["imports"][name] or {}).get("dataset")
    return f"data/datasets/{dataset}/items.jsonl" if dataset in (config.get("datasets") or {}) else None


# Where the DAG writes each model it builds (the Snakemake rules produce exactly these folders).
BUILD_PATHS = {
    "smollm2": "data/models/smollm2-135m-instruct",
    "vision": "data/models/tiny-llava-vision",
    "stage1": "data/models/tiny-llava-stage1",
    "stage2": "data/models/tiny-llava-stage2",
    "stage2_idk": "data/models/tiny-llava-stage2-idk",
    "llava_stage1": "data/models/llava-1.5-7b-stage1",
}
# Builds assembled from hub sources (their `sources:`), which the download rule fetches first.
HUB_BUILDS = ("llava_stage1",)


def model_dir(config: dict, model: str) -> str | None:
    """Local folder the DAG builds for this model, or None for a model it does not build."""
    mcfg = config["models"][model]
    build = mcfg.get("build")
    if not build:
        return None
    if mcfg["path"] != BUILD_PATHS[build]:
        raise ConfigError(
            f"model {model!r}: a model built by the DAG (build: {build}) lives at "
            f"{BUILD_PATHS[build]}, not {mcfg['path']}"
        )
    return BUILD_PATHS[build]


def scenario_needs_descriptions(config: dict, scenario: str) -> bool:
    return (config["scenarios"][scenario] or {}).get("description") is not None
