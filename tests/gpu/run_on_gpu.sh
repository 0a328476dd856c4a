#!/usr/bin/env bash
# The GPU checks, on a machine with a CUDA GPU, torch and transformers (not part of CI):
#   1. tests/gpu: the engine on CUDA for LLaVA, Idefics3 and Qwen2-VL (fp32 vs a hand computation,
#      batch-size invariance, bf16 default, shared-prefix candidates);
#   2. the two benchmarks on CUDA, on an untrained model of the default study's exact size.
# Usage: bash tests/gpu/run_on_gpu.sh [LM_SOURCE] [FMNIST_ROOT] [OUT_DIR]
# LM_SOURCE needs only SmolLM2's config.json + tokenizer; FMNIST_ROOT only the t10k files.
set -uo pipefail
LM=${1:-data/models/smollm2-135m-instruct}
FM=${2:-/usr/share/datasets/fashion-mnist}
OUT_DIR=${3:-gpu-results}
mkdir -p "$OUT_DIR"
export HF_HUB_OFFLINE=1 PYTHONUNBUFFERED=1 TOKENIZERS_PARALLELISM=false
nvidia-smi -L | tee "$OUT_DIR/device.txt"
python3 -c "import torch, transformers; print('torch', torch.__version__, '| transformers', transformers.__version__)" \
  | tee -a "$OUT_DIR/device.txt"
MMCAL_LM_SOURCE=$LM MMCAL_FMNIST_ROOT=$FM python3 -m pytest -q -p no:cacheprovider -rs tests/gpu 2>&1 \
  | tee "$OUT_DIR/gpu_tests.txt"
MODEL=/tmp/mmcal-random-llava
python3 -m mmcal.bench.random_model --lm-source "$LM" --out $MODEL > /dev/null 2>&1
# The trained stage-2 model emits its letter at the first step: --max-steps 1 is the reference's best case.
python3 -m mmcal.bench.scoring --model $MODEL --device cuda --items 512 --batch-size 64 --max-steps 1 \
  --fmnist-root "$FM" 2>&1 | grep -v "Loading weights" | tee "$OUT_DIR/bench_scoring.txt"
python3 -m mmcal.bench.prefix_reuse --model $MODEL --device cuda --items 256 --candidates 20 --batch-size 16 \
  --fmnist-root "$FM" 2>&1 | grep -v "Loading weights" | tee "$OUT_DIR/bench_prefix_reuse.txt"
