"""Build an untrained tiny-LLaVA of the default study's exact architecture and size, for timing.

    python -m mmcal.bench.random_model --lm-source data/models/smollm2-135m-instruct --out /tmp/rl

The GPU machine has no copy of the trained checkpoints (they are built by the DAG, and too large to
carry there), so speed is measured on a model with the same shapes: SmolLM2-135M's config with
random weights, a randomly initialised vision tower of the default ``vision`` config, assembled by
the very code the DAG uses (:func:`mmcal.tinyllava.model.assemble_tiny_llava`). ``--lm-source``
needs only ``config.json`` and the tokenizer files. Timings transfer; predictions do not (random
weights), so the scoring benchmark caps the reference decoder's steps at what the trained model
needs (``--max-steps``).
"""

from __future__ import annotations

import argparse
import tempfile
from pathlib import Path


def build_random_tiny_llava(lm_source: str | Path, out_dir: str | Path, seed: int = 0) -> Path:
    import torch
    from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer, CLIPVisionModel

    from mmcal.tinyllava.config import VISION_DEFAULTS
    from mmcal.tinyllava.model import assemble_tiny_llava, save_tiny_llava
    from mmcal.tinyllava.vision import make_image_processor, vision_config

    torch.manual_seed(seed)
    # the parts (~0.5 GB) only until they are assembled: removed afterwards, also when assembling fails
    with tempfile.TemporaryDirectory(prefix="mmcal-random-") as tmp:
        work = Path(tmp)
        lm = AutoModelForCausalLM.from_config(AutoConfig.from_pretrained(lm_source))
        lm.save_pretrained(work / "lm")
        AutoTokenizer.from_pretrained(lm_source).save_pretrained(work / "lm")
        tower = CLIPVisionModel(vision_config(VISION_DEFAULTS))
        tower.save_pretrained(work / "vision")
        make_image_processor(int(VISION_DEFAULTS["image_size"])).save_pretrained(work / "vision")
        model, processor = assemble_tiny_llava(work / "vision", work / "lm", seed=seed)
    return save_tiny_llava(model, processor, out_dir)


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--lm-source", required=True, help="folder with SmolLM2's config.json + tokenizer")
    p.add_argument("--out", required=True)
    p.add_argument("--seed", type=int, default=0)
    args = p.parse_args(argv)
    print(build_random_tiny_llava(args.lm_source, args.out, args.seed))


if __name__ == "__main__":
    main()
