"""LLaVA stage 1, feature alignment: train the projector only, on image -> caption pairs.

Captions name the image's class. ``1 - question_fraction`` of them answer a brief-description
request ("A photo of a Trouser.", LLaVA's stage-1 form); ``question_fraction`` answer the study's
multiple-choice question with its options listed, as "Answer: Trouser" -- the continuation the
``option_loglik`` readout scores. Measured: with description requests alone the caption loss falls
but the frozen LM does not carry the image into the question context (option_loglik ~30 %).

The vision tower and SmolLM2 stay frozen (LLaVA's recipe). The tower is run once over the stage's
images and its patch features cached; each step projects cached features into the ``<image>``
slots and back-propagates the caption tokens' loss through the frozen LM into the projector.
"""

from __future__ import annotations

import logging
import time
from pathlib import Path

import numpy as np

from mmcal.data.fashion_mnist import CLASSES
from mmcal.engine.prompts import PromptVariant
from mmcal.errors import MmcalError
from mmcal.tinyllava.config import held_out_classes, resolve_config
from mmcal.tinyllava.evaluation import evaluate_stage
from mmcal.tinyllava.fmnist_splits import draw_indices, index_summary, load_train_file
from mmcal.tinyllava.instructions import PromptTokenizer, mc_item
from mmcal.tinyllava.model import assemble_tiny_llava, logits_from_features, n_image_tokens, save_tiny_llava
from mmcal.tinyllava.model_card import plot_training_curve, write_model_card
from mmcal.tinyllava.training import (
    Checkpointing,
    adamw,
    autocast,
    bucketed_order,
    checkpoint_dir_for,
    collate,
    eager_attention,
    read_manifest,
    run_key,
    run_steps,
    seed_everything,
    target_loss,
    warmup_cosine,
    write_manifest,
)
from mmcal.tinyllava.vision import patch_features, pixel_values

log = logging.getLogger(__name__)

STAGE1_READOUTS = ("option_loglik", "letter_restricted")


def check_parent_classes(parent_dir: str | Path, allowed: list[int], what: str) -> dict:
    """The previous stage must not have trained on a class this build holds out."""
    manifest = read_manifest(parent_dir)
    used = set(manifest["train_classes"])
    if not used <= set(allowed):
        raise MmcalError(
            f"{what} at {parent_dir} was trained on classes {sorted(used - set(allowed))}, "
            f"which this config holds out (train_classes {allowed})"
        )
    return manifest


def freeze_all_but(model, trainable) -> list:
    for p in model.parameters():
        p.requires_grad_(False)
    params = []
    for module in trainable:
        for p in module.parameters():
            p.requires_grad_(True)
            params.append(p)
    return params


def caption_examples(prompts: PromptTokenizer, rows, labels, cfg: dict, rng) -> list:
    """Captions for images ``rows`` (feature-cache rows) with class ``labels``; see module doc."""
    classes = cfg["train_classes"]
    n_cls = min(4, len(classes))
    asked = rng.random(len(rows)) < float(cfg["stage1"]["question_fraction"])
    prompt = PromptVariant()
    examples = []
    for k, (row, label) in enumerate(zip(rows, labels)):
        if asked[k]:
            item = mc_item(int(label), classes, n_cls, k % n_cls, rng)
            examples.append(prompts.answer_caption_example(int(row), item, prompt))
        else:
            examples.append(prompts.caption_example(int(row), int(label), rng))
    return examples


def train_stage1(cfg: dict, vision_dir: str | Path, lm_dir: str | Path, out_dir: str | Path) -> dict:
    """Assemble the tiny-LLaVA, align its projector, save it (+ card, curve, manifest).

    ``cfg``: the whole tiny-LLaVA config (``tinyllava_config``); its ``stage1`` section:
    steps=200, batch_size=16, question_fraction=0.75, lr=3e-3, warmup=10, seed=0, n_train=None
    (steps * batch_size images, each captioned once), feature_layer=-2, projector_act="gelu",
    bf16=False; threads=None (the config's ``threads``, 2) fixes the thread count.
    """
    t_start = time.time()
    cfg = resolve_config(cfg)
    s1 = cfg["stage1"]
    seed = int(s1["seed"])
    rng = seed_everything(seed, s1["threads"])
    check_parent_classes(vision_dir, cfg["train_classes"], "the vision tower")
    data = load_train_file(cfg)
    model, processor = assemble_tiny_llava(vision_dir, lm_dir, int(s1["feature_layer"]), s1["projector_act"], seed)
    model.eval()  # no dropout anywhere; gradients still flow

    steps, batch = int(s1["steps"]), int(s1["batch_size"])
    n_examples = steps * batch
    n_images = int(s1["n_train"] or n_examples)
    image_idx = draw_indices(data.pool, n_images, rng)
    t0 = time.time()
    features = patch_features(model.model.vision_tower, pixel_values(data.images[image_idx]), int(s1["feature_layer"]))
    log.info("stage 1: cached %s vision features in %.1f s", tuple(features.shape), time.time() - t0)
    prompts = PromptTokenizer(processor, n_image_tokens(model))
    rows = np.arange(n_examples) % n_images
    examples = caption_examples(prompts, rows, data.labels[image_idx[rows]], cfg, rng)
    order = bucketed_order([len(e.ids) for e in examples], batch, int(s1["bucket_window"]), rng)
    examples = [examples[k] for k in order]

    params = freeze_all_but(model, [model.model.multi_modal_projector])
    optimizer = adamw(params, lr=float(s1["lr"]), weight_decay=0.0)
    pad_id = processor.tokenizer.pad_token_id

    def step(i: int) -> float:
        b = collate(examples[i * batch : (i + 1) * batch], pad_id)
        for group in optimizer.param_groups:
            group["lr"] = float(s1["lr"]) * warmup_cosine(i, steps, int(s1["warmup"]))
        with autocast(bool(s1["bf16"])):
            logits = logits_from_features(model, b.input_ids, b.attention_mask, features[b.rows], b.positions)
        loss = target_loss(logits, b.targets, per="token")
        loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        return loss.item()

    resume = Checkpointing(checkpoint_dir_for(out_dir), params, optimizer, run_key(cfg, order), rng)
    with eager_attention(model):
        record = run_steps(step, steps, "stage 1 (projector)", resume)
    for p in model.parameters():
        p.requires_grad_(True)
    evaluation = evaluate_stage(model, processor, data, cfg, STAGE1_READOUTS)

    out_dir = Path(out_dir)
    save_tiny_llava(model, processor, out_dir)
    plot_training_curve(record.losses, out_dir / "training_curve.png", "tiny-LLaVA stage 1 (projector)")
    used = image_idx[rows]
    write_manifest(
        out_dir,
        {
            "stage": "stage1",
            "seed": seed,
            "train_classes": cfg["train_classes"],
            "held_out_classes": held_out_classes(cfg),
            "parents": {"vision": str(vision_dir), "lm": str(lm_dir)},
            "training_images": index_summary(used, data.labels),
            "validation_images": index_summary(data.validation, data.labels),
            "steps": steps,
            "batch_size": batch,
            "trained": ["multi_modal_projector"],
            "config": cfg,
        },
    )
    summary = {
        **record.summary(),
        "seed": seed,
        "trained": "projector only (vision tower and language model frozen)",
        "caption examples": n_examples,
        "images": n_images,
        "classes": ", ".join(CLASSES[c] for c in cfg["train_classes"]),
        "wall_seconds": round(time.time() - t_start, 1),
    }
    card_eval = {
        "items": f"{evaluation['n_items']} 4-way questions on validation-slice images",
        **{k: round(v, 4) if isinstance(v, float) else v for k, v in evaluation.items()},
    }
    write_model_card(out_dir, "tiny-LLaVA stage 1 (feature alignment)", __doc__, summary, card_eval, cfg)
    log.info("stage 1 done in %.1f s: %s", time.time() - t_start, evaluation)
    return {**summary, **evaluation}
