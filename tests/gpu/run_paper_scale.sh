#!/usr/bin/env bash
# Issue 22's GPU checks, about 8 minutes on one H100 (each step has its own time limit):
#   1. python -m mmcal.bench.paper_scale: a random-weight model of LLaVA-1.5-7B's exact shapes, bf16, on the
#      GPU: items/s and model FLOPs utilisation of the letter readouts and of all three readouts at batch
#      sizes 1, 8, 32, 64 (target: >= 40 % MFU for the letter readouts);
#   2. tests/gpu: the engine on CUDA (tiny LLaVA, Idefics3, Qwen2-VL), the packed pass included;
#   3. tests/test_families.py: every family replica (rendering, tokens, readouts against hand computations,
#      the packed pass against separate passes within 1e-5), on the CPU as in CI; Qwen2-VL runs where
#      torchvision imports (on the GPU machine it does).
# The GPU machine reaches no registry, so the replicas' files come with the working tree:
#   REPLICAS: a copy of ~/.cache/mmcal/replicas without _artifacts/ (the sources and built/, ~330 MB; steps 1
#   and 3 need only built/llava-1.5 without model.safetensors, ~3.5 MB, for step 1). A family whose sources
#   are missing is skipped by step 3, saying so.
#   LM_SOURCE, FMNIST_ROOT: as tests/gpu/run_on_gpu.sh (SmolLM2's config + tokenizer; the t10k files).
# Usage: bash tests/gpu/run_paper_scale.sh REPLICAS [LM_SOURCE] [FMNIST_ROOT] [OUT_DIR]
set -uo pipefail
REPLICAS=$(realpath "${1:?usage: run_paper_scale.sh REPLICAS [LM_SOURCE] [FMNIST_ROOT] [OUT_DIR]}")
LM=${2:-data/models/smollm2-135m-instruct}
FM=${3:-/usr/share/datasets/fashion-mnist}
OUT_DIR=${4:-gpu-results}
mkdir -p "$OUT_DIR"
export HF_HUB_OFFLINE=1 HF_DATASETS_OFFLINE=1 PYTHONUNBUFFERED=1 TOKENIZERS_PARALLELISM=false
export PYTHONPATH="$PWD/src${PYTHONPATH:+:$PYTHONPATH}" MMCAL_REPLICA_CACHE="$REPLICAS"
nvidia-smi -L | tee "$OUT_DIR/device.txt"
python3 -c "import torch, transformers; print('torch', torch.__version__, '| transformers', transformers.__version__)" \
  | tee -a "$OUT_DIR/device.txt"
git rev-parse --short HEAD 2>/dev/null | sed 's/^/commit /' | tee -a "$OUT_DIR/device.txt"

timeout -k 10 240 python3 -m mmcal.bench.paper_scale --device cuda --batch-sizes 1 8 32 64 \
  --processor "$REPLICAS/built/llava-1.5" 2>&1 | grep -v "Loading weights" | tee "$OUT_DIR/paper_scale.txt"
MMCAL_LM_SOURCE=$LM MMCAL_FMNIST_ROOT=$FM timeout -k 10 120 python3 -m pytest -q -p no:cacheprovider -rs tests/gpu \
  2>&1 | tee "$OUT_DIR/gpu_tests.txt"
MMCAL_FMNIST_ROOT=$FM timeout -k 10 150 python3 -m pytest -q -p no:cacheprovider -rs tests/test_families.py \
  2>&1 | tee "$OUT_DIR/family_tests.txt"
