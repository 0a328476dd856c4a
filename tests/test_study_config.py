"""A study's config (mmcal.config): the base chain, overlays, and the strict check — a misspelt key at any
level is an error naming its path with the nearest known key suggested, every problem reported at once,
at planning (the Snakefile) and by ``mmcal config check``."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from conftest import SNAKEMAKE, workflow_copy
from mmcal.config import config_errors, load_schema, load_study
from mmcal.errors import ConfigError

ROOT = Path(__file__).resolve().parents[1]
SCHEMA = load_schema(ROOT)


def _write(path: Path, data: dict) -> Path:
    path.write_text(yaml.safe_dump(data, sort_keys=False))
    return path


def _errors_of(tmp_path: Path, overrides: dict, base: str = "config.yaml") -> list[str]:
    """The problems of the default study with ``overrides`` merged over it (as a user file on that base)."""
    study = _write(tmp_path / "study.yaml", {"base": str(ROOT / "config" / base), **overrides})
    return config_errors(load_study([study], root=ROOT), SCHEMA)


def test_every_shipped_config_is_valid():
    for path in sorted((ROOT / "config").glob("**/*.yaml")):
        if path.name.startswith("training-plan"):
            continue
        assert config_errors(load_study([path], root=ROOT), SCHEMA) == [], path


def test_a_user_config_inherits_settings_but_no_study(tmp_path):
    mine = _write(tmp_path / "mine.yaml", {"threads": 4})
    study = load_study([mine], root=ROOT)
    defaults = yaml.safe_load((ROOT / "config/defaults.yaml").read_text())
    assert study["threads"] == 4 and study["scenarios"] == defaults["scenarios"]
    assert study["runs"] == [] and "models" not in study and "datasets" not in study
    assert study["promptopt"]["enabled"] is False  # nothing of the default study's prompt search


def test_the_test_preset_builds_on_the_default_study():
    default = load_study([ROOT / "config/config.yaml"], root=ROOT)
    test = load_study([ROOT / "config/test.yaml"], root=ROOT)
    assert test["models"].keys() == default["models"].keys()
    assert test["training"] != default["training"]  # its own (tiny) recipe


def test_overlays_merge_and_name_no_base(tmp_path):
    over = _write(tmp_path / "over.yaml", {"metrics": {"bootstrap": 10}})
    study = load_study([ROOT / "config/config.yaml", over], root=ROOT)
    assert study["metrics"]["bootstrap"] == 10 and study["metrics"]["level"] == 0.95
    bad = _write(tmp_path / "bad.yaml", {"base": "defaults"})
    with pytest.raises(ConfigError, match="only the first config file names a base"):
        load_study([ROOT / "config/config.yaml", bad], root=ROOT)


def test_a_base_loop_and_a_missing_base_are_named(tmp_path):
    _write(tmp_path / "a.yaml", {"base": "b.yaml"})
    _write(tmp_path / "b.yaml", {"base": "a.yaml"})
    with pytest.raises(ConfigError, match="base chain loops"):
        load_study([tmp_path / "a.yaml"], root=ROOT)
    _write(tmp_path / "c.yaml", {"base": "nowhere.yaml"})
    with pytest.raises(ConfigError, match=r"c\.yaml: its base 'nowhere\.yaml'"):
        load_study([tmp_path / "c.yaml"], root=ROOT)


@pytest.mark.parametrize(
    "overrides, expected",
    [
        ({"thread": 2}, "thread: unknown key (did you mean 'threads'?)"),
        (
            {"datasets": {"fmnist": {"splts": {"test": 5}}}},
            "datasets.fmnist.splts: unknown key (did you mean 'splits'?)",
        ),
        ({"models": {"smollm2": {"revison": "abc"}}}, "models.smollm2.revison: unknown key (did you mean 'revision'?)"),
        ({"training": {"n_evl": 10}}, "training.n_evl: unknown key (did you mean 'n_eval'?)"),
        ({"training": {"stage2": {"stpes": 10}}}, "training.stage2.stpes: unknown key (did you mean 'steps'?)"),
        ({"parts": {"main": {"datset": "fmnist"}}}, "parts.main.datset: unknown key (did you mean 'dataset'?)"),
        ({"parts": {"optin_order": {}}}, "parts.optin_order: unknown key (did you mean 'option_order'?)"),
        ({"scoring": {"batchsize": 4}}, "scoring.batchsize: unknown key (did you mean 'batch_size'?)"),
        (
            {"promptopt": {"paraphraser": {"kind": "openai", "api_key": "sk-x"}}},
            "promptopt.paraphraser.api_key: unknown key",
        ),
    ],
)
def test_a_misspelt_key_names_its_path_and_the_right_one(tmp_path, overrides, expected):
    errors = _errors_of(tmp_path, overrides)
    assert len(errors) == 1 and errors[0].startswith(expected), errors


def test_every_problem_is_reported_at_once(tmp_path):
    errors = _errors_of(tmp_path, {"thread": 2, "seed": "zero", "models": {"smollm2": {"revison": "abc"}}})
    assert len(errors) == 3
    assert any(e.startswith("seed:") and "not of type 'integer'" in e for e in errors)


def test_the_training_schema_lists_every_recipe_key():
    from mmcal.tinyllava import config as recipe

    training = SCHEMA["properties"]["training"]["properties"]
    shared = set(recipe.SHARED_DEFAULTS) - {"train_classes", "fmnist_root"}  # from classes.known, fmnist_root
    assert set(training) == shared | set(recipe.SECTIONS) | {"stage2_idk"}
    for name, defaults in {**recipe.SECTIONS, "stage2_idk": recipe.STAGE2_DEFAULTS}.items():
        assert set(training[name]["properties"]) == set(defaults), name


def test_threads_reach_the_scoring_jobs_unless_scoring_threads_says_otherwise(tmp_path):
    """paper.yaml's `threads: 8` reaches every scoring job; the default study's `scoring.threads: 1` wins."""
    wd = workflow_copy(tmp_path)
    (wd / "data/replica/July24-NewsVQA").mkdir(parents=True, exist_ok=True)
    for configfile, threads in (("config/paper.yaml", 8), ("config/config.yaml", 1)):
        out = subprocess.run(
            [SNAKEMAKE, "-n", "--cores", "16", "--nolock", "--configfile", configfile],
            cwd=wd,
            capture_output=True,
            text=True,
            timeout=180,
        )
        assert out.returncode == 0, out.stdout[-3000:] + out.stderr[-3000:]
        jobs = re.findall(r"^rule score:\n((?:    .*\n)+)", out.stdout, re.M)
        assert jobs and all(f"threads: {threads}\n" in j if threads > 1 else "threads:" not in j for j in jobs)


def test_snakemake_refuses_a_misspelt_key_at_planning(tmp_path):
    wd = workflow_copy(tmp_path)
    _write(
        wd / "config/typo.yaml",
        {"base": "config.yaml", "datasets": {"fmnist": {"splts": {"test": 5}}}, "training": {"stage1": {"lr_lm": 1}}},
    )
    out = subprocess.run(
        [SNAKEMAKE, "-n", "--nolock", "--configfile", "config/typo.yaml"], cwd=wd, capture_output=True, text=True
    )
    assert out.returncode != 0
    text = out.stdout + out.stderr
    assert "2 problem(s)" in text
    assert "datasets.fmnist.splts: unknown key (did you mean 'splits'?)" in text
    assert "training.stage1.lr_lm: unknown key" in text
    assert "Traceback" not in text


def test_mmcal_config_check_prints_every_problem(tmp_path):
    typo = _write(
        tmp_path / "typo.yaml",
        {"thread": 2, "parts": {"main": {"datset": "x", "scenario": "image", "prompt": "default"}}},
    )
    out = subprocess.run(
        [str(Path(SNAKEMAKE).parent / "mmcal"), "config", "check", str(typo), "--root", str(ROOT)],
        capture_output=True,
        text=True,
    )
    assert out.returncode == 1
    assert "3 problem(s)" in out.stdout and "'threads'?" in out.stdout
    assert "parts.main.datset: unknown key (did you mean 'dataset'?)" in out.stdout
    assert "parts.main: 'dataset' is a required property" in out.stdout


def _planned(tmp_path: Path, overrides: dict) -> dict:
    """The default study with ``overrides``, its schema defaults filled as the Snakefile fills them."""
    study = _write(tmp_path / "study.yaml", {"base": str(ROOT / "config/config.yaml"), **overrides})
    return _filled(load_study([study], root=ROOT))


def _filled(study: dict) -> dict:
    """``study`` with the schema's defaults filled in by Snakemake's own ``validate``, as the Snakefile does."""
    saved = list(sys.path)
    from snakemake.utils import validate  # importing Snakemake adds its deployment folder to sys.path

    sys.path[:] = saved
    validate(study, str(ROOT / "workflow/schemas/config.schema.yaml"))
    return study


def test_the_master_seed_reaches_every_training_stage_unless_the_stage_sets_its_own(tmp_path):
    """config/README.md: `seed` seeds training too. The schema used to fill each stage's `seed: 0`, which hid it."""
    from mmcal.tinyllava.config import STAGES, stage_config

    def seeds(overrides):
        study = _planned(tmp_path, overrides)
        return {s: stage_config(study, s)["stage2" if s == "stage2_idk" else s]["seed"] for s in STAGES}

    assert seeds({}) == dict.fromkeys(STAGES, 0)
    assert seeds({"seed": 3}) == dict.fromkeys(STAGES, 3)
    assert seeds({"seed": 3, "training": {"stage1": {"seed": 7}}}) == {**dict.fromkeys(STAGES, 3), "stage1": 7}


def test_the_idk_variant_trains_with_stage_2_settings_its_section_does_not_override(tmp_path):
    """`stage2_idk` holds overrides of `stage2`: a schema default there used to undo a study's stage-2 setting
    (the test study's stage 2 trained at batch 4, its IDK variant at the schema's 16)."""
    from mmcal.tinyllava.config import stage_config

    study = _planned(tmp_path, {"training": {"stage2": {"batch_size": 8, "lr_lm": 5.0e-4}}})
    stage2, idk = stage_config(study, "stage2")["stage2"], stage_config(study, "stage2_idk")["stage2"]
    own = study["training"]["stage2_idk"]
    assert own == {"idk_fraction": 0.2, "steps": 80, "warmup": 5}  # config.yaml's, nothing filled in
    assert idk == {**stage2, **own, "idk_train_classes": study["classes"]["idk_train"]}
    assert idk["batch_size"] == 8 and idk["lr_lm"] == 5.0e-4 and idk["steps"] == 80
    test = _filled(load_study([ROOT / "config/test.yaml"], root=ROOT))
    assert stage_config(test, "stage2")["stage2"]["batch_size"] == 4
    assert stage_config(test, "stage2_idk")["stage2"]["batch_size"] == 4


def test_a_training_stage_outside_the_recipe_is_named():
    from mmcal.tinyllava.config import stage_config

    with pytest.raises(ConfigError, match="training stage 'stage3'"):
        stage_config({"training": {}, "classes": {"known": [0, 1]}, "seed": 0}, "stage3")
