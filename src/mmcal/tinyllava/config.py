"""Configuration of the tiny-LLaVA build: defaults, the CI-sized preset, validation.

Every training function takes one dict shaped like ``config.yaml: tiny_llava``::

    {
      "train_classes": [0, 1, 2, 3, 4, 6, 7],   # Fashion-MNIST classes any stage may train on
      "fmnist_root": "/usr/share/datasets/fashion-mnist",
      "n_validation": 2000,   # last N known-class images of the train file: never trained on
      "n_eval": 500,          # validation items scored for the model cards
      "vision": {...}, "stage1": {...}, "stage2": {...},
    }

Missing keys take the defaults below; unknown keys are an error (a typo must not silently train
a different model). Only the Fashion-MNIST *train* file is ever read for training; its t10k file
is the study's calib/test data.
"""

from __future__ import annotations

import copy

from mmcal.data.fashion_mnist import CLASSES, DEFAULT_ROOT
from mmcal.errors import ConfigError

SHARED_DEFAULTS = {
    # Sandal (5) trains the IDK variant; Bag (8) and Ankle boot (9) are IDK test classes.
    "train_classes": [0, 1, 2, 3, 4, 6, 7],
    "fmnist_root": DEFAULT_ROOT,
    "n_validation": 2000,
    "n_eval": 500,
    # Intra-op threads of every training stage: part of the recipe, not of the machine. Backward
    # reductions split their sums by thread count, so 1 and 2 threads give other weights (measured).
    # A stage's own ``threads`` (not None) overrides it; the stage's job reserves that many cores.
    "threads": 2,
}

VISION_DEFAULTS = {
    "image_size": 28,
    "patch_size": 14,  # 28/14 = 2x2 = 4 patch tokens (+ CLS, dropped by LLaVA's "default")
    "hidden_size": 128,
    "intermediate_size": 256,
    "num_layers": 4,
    "num_heads": 4,
    "epochs": 6,
    "batch_size": 128,
    "lr": 2e-3,
    "weight_decay": 0.05,
    # Augmentation, off by default: measured no gain (flip 0.5: 87.1 %, + 2-px shifts: 84.2 %,
    # none: 87.7 % validation accuracy).
    "flip": 0.0,  # probability of a horizontal flip per training image
    "max_shift": 0,  # random shift of up to this many pixels each way
    "warmup": 100,  # optimizer steps of linear warm-up, then cosine decay to 0
    "seed": 0,
    "n_train": None,  # None: every known-class image outside the validation slice
    "bf16": False,  # measured: bf16 autocast slows this small ViT down on CPU
    # Measured (docs/training-plan.md): its steps cost the same CPU time at 1 thread as at 2, so one
    # thread trains it as fast and leaves the other core to the jobs that start beside it.
    "threads": 1,
}

# bf16 autocast (``bf16: true``) trains stages 1-2 faster on AMX CPUs, but oneDNN picks its bf16
# kernels at run time by instruction set (AMX, AVX512-BF16, AVX512) and each gives other weights
# (measured): fp32 is the default, whose weights are the same on every run at a fixed thread count
# (README, "Reproducibility").
STAGE1_DEFAULTS = {
    # Measured: a better-aligned projector shortens stage 2's plateau at chance a lot (200 steps
    # here: 88 % option_loglik, stage 2 escapes at ~70 steps; 100 steps: 83 %, escape at ~130).
    "steps": 200,
    "batch_size": 16,
    # Share of captions asked as the study's question with options ("Answer: <class>"); the rest
    # answer a brief-description request ("A photo of a <class>.").
    "question_fraction": 0.75,
    "lr": 3e-3,
    "warmup": 10,
    "seed": 0,
    "n_train": None,  # None: steps * batch_size captions, each on a different image
    "feature_layer": -2,  # LLaVA-1.5's choice: the penultimate vision layer
    "projector_act": "gelu",  # LLaVA-1.5's mlp2x_gelu projector
    # Length buckets: examples sorted by length within windows of this many batches, the batches of a
    # window in seeded random order (0: no bucketing). Captions vary 22-65 tokens: unbucketed batches
    # pad 24 % more tokens than they hold; windows of 8 batches, 4 %.
    "bucket_window": 0,
    "bf16": False,  # see the note on bf16 above STAGE1_DEFAULTS
    "threads": None,  # None: the shared ``threads``
}

STAGE2_DEFAULTS = {
    # Measured (default stage 1): 300 steps give 85-87 % letter accuracy on the 1,000 test items (~4.5 s/step
    # at 2 threads on a Zen 4 EPYC in fp32, docs/training-plan.md); the loss sits at ln 4 for the first
    # 60-100 steps, whose length varies with the stage-1 projector (batch 8 x 400 steps or lr_lm 6e-4: ~80 %).
    "steps": 300,
    "batch_size": 16,
    # Measured: lr_lm 5e-5 stays at chance (ln 4) for 150+ steps; 3e-4 escapes within ~60-100.
    "lr_lm": 3e-4,
    "lr_projector": 1e-3,
    "betas": [0.9, 0.95],  # AdamW betas; measured with (0.9, 0.95), the usual LLM setting
    "warmup": 10,
    "seed": 0,
    "n_train": None,  # None: steps * batch_size instructions, each on a different image
    # Distinct instruction examples (image + options), cycled in reshuffled epochs over the steps; None: each of
    # the steps * batch_size examples is new. When the bottom is frozen (train_layers N, train_projector and
    # train_embeddings false), the frozen layers run once per distinct example (cached), not once per step.
    "n_examples": None,
    "n_options": 4,  # an int, or a list of ints to mix (one drawn per example)
    "train_embeddings": False,  # the tied (49k x 576) embedding matrix stays frozen: cheaper steps
    # Which decoder layers train: None, all of them; N, the top N (+ the final norm). With the projector
    # frozen too (train_projector: false), nothing below the lowest trained layer needs a gradient, so
    # autograd records nothing there: the frozen layers cost one forward pass and keep no activations.
    "train_layers": None,
    "train_projector": True,
    # LoRA: rank > 0 trains low-rank adapters (scale alpha / rank) beside the trained layers' frozen linear
    # weights instead of the weights themselves, merged into them before saving (mmcal.tinyllava.lora).
    "lora_rank": 0,
    "lora_alpha": 16.0,
    "bucket_window": 0,  # as in stage 1; questions vary 57-63 tokens, so it buys little here
    "threads": None,  # None: the shared ``threads``
    "idk_train_classes": None,  # e.g. [5]: images whose gold answer is the IDK option
    "idk_fraction": 0.0,
    "idk_text": "I don't know",
    "bf16": False,  # see the note on bf16 above STAGE1_DEFAULTS
}

SECTIONS = {"vision": VISION_DEFAULTS, "stage1": STAGE1_DEFAULTS, "stage2": STAGE2_DEFAULTS}

# The CI preset: every stage trains a handful of steps on a few hundred images.
TINY_TEST_CONFIG = {
    "n_validation": 200,
    "n_eval": 8,
    "vision": {
        "hidden_size": 32,
        "intermediate_size": 64,
        "num_layers": 1,
        "num_heads": 2,
        "epochs": 1,
        "batch_size": 64,
        "n_train": 256,
        "warmup": 1,
    },
    "stage1": {"steps": 3, "batch_size": 4, "warmup": 1},
    "stage2": {"steps": 3, "batch_size": 4, "warmup": 1},
}


STAGES = ("vision", "stage1", "stage2", "stage2_idk")  # a training job each; stage2_idk: the IDK-trained variant


def stage_config(config: dict, stage: str) -> dict:
    """What the training job of ``stage`` is given, from a study config (schema defaults filled): the shared
    training keys, the known classes, the Fashion-MNIST folder (when the config names one) and that stage's
    section alone, so that changing one stage never retrains another. The master ``seed`` is the stage's
    unless its section sets one; ``stage2_idk`` is stage 2's section with its own keys on top (the schema
    gives that section no defaults, so what it leaves out stays as stage 2 has it)."""
    if stage not in STAGES:
        raise ConfigError(f"training stage {stage!r}: one of {', '.join(STAGES)}")
    training = config["training"]
    section = "stage2" if stage == "stage2_idk" else stage
    cfg = {k: v for k, v in training.items() if k not in STAGES}
    cfg["train_classes"] = config["classes"]["known"]
    if "fmnist_root" in config:
        cfg["fmnist_root"] = config["fmnist_root"]
    cfg[section] = {"seed": config["seed"], **(training.get(section) or {})}
    if stage == "stage2_idk":
        cfg[section].update(training.get("stage2_idk") or {})
        cfg[section]["idk_train_classes"] = config["classes"]["idk_train"]
    return cfg


def resolve_config(cfg: dict | None) -> dict:
    """Defaults filled in, keys and class lists checked; raises ConfigError naming the problem."""
    cfg = copy.deepcopy(dict(cfg or {}))
    out = copy.deepcopy(SHARED_DEFAULTS)
    for name, defaults in SECTIONS.items():
        section = dict(cfg.pop(name, None) or {})
        unknown = set(section) - set(defaults)
        if unknown:
            raise ConfigError(f"tiny_llava.{name}: unknown keys {sorted(unknown)}; known: {sorted(defaults)}")
        out[name] = {**copy.deepcopy(defaults), **section}
    unknown = set(cfg) - set(SHARED_DEFAULTS)
    if unknown:
        raise ConfigError(
            f"tiny_llava: unknown keys {sorted(unknown)}; known: {sorted(set(SHARED_DEFAULTS) | set(SECTIONS))}"
        )
    out.update(cfg)
    for name in SECTIONS:
        threads = out[name]["threads"] if out[name]["threads"] is not None else out["threads"]
        if int(threads) < 1:
            raise ConfigError(f"tiny_llava.{name}.threads must be at least 1, not {threads}")
        out[name]["threads"] = int(threads)
    out["train_classes"] = _class_list(out["train_classes"], "train_classes")
    if len(out["train_classes"]) < 2:
        raise ConfigError("tiny_llava.train_classes: need at least 2 classes")
    s2 = out["stage2"]
    if s2["idk_train_classes"]:
        s2["idk_train_classes"] = _class_list(s2["idk_train_classes"], "stage2.idk_train_classes")
        overlap = set(s2["idk_train_classes"]) & set(out["train_classes"])
        if overlap:
            raise ConfigError(
                f"tiny_llava.stage2.idk_train_classes {sorted(overlap)} are also train_classes: "
                "an IDK class must be one the model was never taught"
            )
        if not 0.0 < float(s2["idk_fraction"]) < 1.0:
            raise ConfigError("tiny_llava.stage2.idk_fraction must be in (0, 1) when IDK is on")
    else:
        s2["idk_train_classes"] = None
    options = s2["n_options"] if isinstance(s2["n_options"], list) else [s2["n_options"]]
    for n in options:
        if not 2 <= int(n) <= len(out["train_classes"]):
            raise ConfigError(
                f"tiny_llava.stage2.n_options {n}: need 2..{len(out['train_classes'])} "
                "(options are distinct training classes)"
            )
    return out


def held_out_classes(cfg: dict) -> list[int]:
    """Classes no stage of the default build trains on (IDK classes are listed separately)."""
    return [c for c in range(len(CLASSES)) if c not in cfg["train_classes"]]


def _class_list(value, key: str) -> list[int]:
    try:
        classes = sorted({int(c) for c in value})
    except (TypeError, ValueError):
        raise ConfigError(f"tiny_llava.{key} must be a list of class indices, not {value!r}") from None
    bad = [c for c in classes if not 0 <= c < len(CLASSES)]
    if bad:
        raise ConfigError(f"tiny_llava.{key}: {bad} are not Fashion-MNIST classes (0..9)")
    return classes
