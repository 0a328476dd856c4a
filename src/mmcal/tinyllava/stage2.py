"""LLaVA stage 2, visual instruction tuning: projector + language model on lettered questions.

Each example is a multiple-choice item rendered exactly as the scoring engine renders it (chat
template, image, question, lettered options, "Please provide the option letter directly.", then
the answer prefix "Answer: (") and the target is the gold letter, ")" and ``<|im_end|>``. The
scored quantity -- the next-token logits after "Answer: (" -- is what the loss trains.

Options: gold + distractors drawn (seeded) from the training classes, gold letters cycling so every
position is gold equally often. ``n_options`` may be a list to mix option counts.

IDK variant (``idk_train_classes`` + ``idk_fraction``): that fraction of the examples shows an image
of an IDK class with class options that are all wrong plus an "I don't know" option as gold (the
IDK option is the last of the ``n_options``, as in the study's IDK data sets);
the same fraction of the other examples also carries the IDK option, not gold, so its presence
gives nothing away. The vision tower stays frozen (LLaVA's recipe), so its features are cached.
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
from mmcal.tinyllava.evaluation import evaluate_stage, stratified_subset
from mmcal.tinyllava.fmnist_splits import draw_indices, index_summary, load_train_file
from mmcal.tinyllava.instructions import PromptTokenizer, mc_item
from mmcal.tinyllava.lora import add_lora, merge_lora
from mmcal.tinyllava.model import (
    decoder_entry,
    load_tiny_llava,
    logits_from_entry,
    logits_from_features,
    n_image_tokens,
    save_tiny_llava,
)
from mmcal.tinyllava.model_card import plot_training_curve, write_model_card
from mmcal.tinyllava.stage1 import check_parent_classes, freeze_all_but
from mmcal.tinyllava.training import (
    Checkpointing,
    adamw,
    autocast,
    bucketed_order,
    checkpoint_dir_for,
    collate,
    eager_attention,
    run_key,
    run_steps,
    seed_everything,
    target_loss,
    warmup_cosine,
    write_manifest,
)
from mmcal.tinyllava.vision import patch_features, pixel_values

log = logging.getLogger(__name__)

STAGE2_READOUTS = ("letter_restricted", "letter_full_vocab")


def plan_instructions(cfg: dict, data, rng: np.random.Generator):
    """(image index per example, item per example) for the stage's distinct examples (:func:`n_distinct`)."""
    s2 = cfg["stage2"]
    classes = cfg["train_classes"]
    n = n_distinct(s2)
    idk_classes = s2["idk_train_classes"]
    frac = float(s2["idk_fraction"]) if idk_classes else 0.0
    n_idk = int(round(frac * n))
    is_idk_image = np.zeros(n, dtype=bool)
    is_idk_image[rng.choice(n, size=n_idk, replace=False)] = True
    normal = np.flatnonzero(~is_idk_image)
    carries_idk = is_idk_image.copy()
    carries_idk[rng.choice(normal, size=int(round(frac * len(normal))), replace=False)] = True

    n_known = int(s2["n_train"] or len(normal))
    known_images = draw_indices(data.pool, n_known, rng)
    image_idx = np.empty(n, dtype=np.int64)
    image_idx[normal] = known_images[np.arange(len(normal)) % n_known]
    if n_idk:
        image_idx[is_idk_image] = draw_indices(data.pool_for(idk_classes), n_idk, rng)

    choices = s2["n_options"] if isinstance(s2["n_options"], list) else [s2["n_options"]]
    next_gold: dict[int, int] = {}  # per number of class options: gold letters cycle
    items = []
    for k in range(n):
        n_options = int(choices[rng.integers(len(choices))])
        # The IDK option is one of the n_options (last), as in the study's IDK data sets.
        n_cls = n_options - 1 if carries_idk[k] else n_options
        gold_pos = next_gold.get(n_cls, 0) % n_cls
        label = int(data.labels[image_idx[k]])
        if label in classes:
            next_gold[n_cls] = next_gold.get(n_cls, 0) + 1
        idk_text = s2["idk_text"] if carries_idk[k] else None
        items.append(mc_item(label, classes, n_cls, gold_pos, rng, idk_text, item_id=f"train-{k}"))
    return image_idx, items


def train_stage2(cfg: dict, stage1_dir: str | Path, out_dir: str | Path) -> dict:
    """Instruction-tune the stage-1 model; save it (+ card, curve, manifest).

    ``cfg``: the whole tiny-LLaVA config (``tinyllava_config``); its ``stage2`` section:
    steps=300, batch_size=16, lr_lm=3e-4, lr_projector=1e-3, betas=[0.9, 0.95], warmup=10 (linear
    warm-up, then cosine decay), seed=0, n_train=None (one known-class image per example), n_options=4 (or a
    list to mix), train_embeddings=False, idk_train_classes=None, idk_fraction=0.0,
    idk_text="I don't know", bf16=False; threads=None (the config's ``threads``, 2) fixes the thread count.
    """
    t_start = time.time()
    cfg = resolve_config(cfg)
    s2 = cfg["stage2"]
    seed = int(s2["seed"])
    rng = seed_everything(seed, s2["threads"])
    parent = check_parent_classes(stage1_dir, cfg["train_classes"], "the stage-1 model")
    data = load_train_file(cfg)
    model, processor = load_tiny_llava(stage1_dir)
    model.eval()  # no dropout anywhere; gradients still flow

    image_idx, items = plan_instructions(cfg, data, rng)
    unique, rows = np.unique(image_idx, return_inverse=True)
    layer = int(model.config.vision_feature_layer)
    t0 = time.time()
    features = patch_features(model.model.vision_tower, pixel_values(data.images[unique]), layer)
    log.info("stage 2: cached %s vision features in %.1f s", tuple(features.shape), time.time() - t0)
    prompts = PromptTokenizer(processor, n_image_tokens(model))
    prompt = PromptVariant()
    examples = [prompts.instruction_example(int(r), it, prompt) for r, it in zip(rows, items)]
    steps, batch = int(s2["steps"]), int(s2["batch_size"])
    order = epoch_order([len(e.ids) for e in examples], steps * batch, batch, int(s2["bucket_window"]), rng)

    trained = trained_parts(model, s2)
    freeze_all_but(model, [module for _, module in trained])
    lr = {"lm": float(s2["lr_lm"]), "projector": float(s2["lr_projector"])}
    group_of = {name: "projector" if name == "multi_modal_projector" else "lm" for name, _ in trained}
    groups = {g: [p for name, m in trained if group_of[name] == g for p in m.parameters()] for g in ("lm", "projector")}
    adapted = [m for name, m in trained if name.startswith("language_model.layers")]
    if int(s2["lora_rank"]):
        import torch

        torch.manual_seed(seed)  # the adapters' initial weights
        layer_params = {id(p) for m in adapted for p in m.parameters()}
        groups["lm"] = [p for p in groups["lm"] if id(p) not in layer_params]
        for m in adapted:
            m.requires_grad_(False)  # the adapters alone train in these layers
        groups["lm"] += add_lora(adapted, int(s2["lora_rank"]), float(s2["lora_alpha"]))
    optimizer = adamw(
        [{"params": params, "lr": lr[g], "name": g} for g, params in groups.items() if params],
        weight_decay=0.0,
        betas=tuple(float(b) for b in s2["betas"]),
    )
    pad_id = processor.tokenizer.pad_token_id
    first_trained = frozen_bottom(model, s2)
    entries = cache_entries(model, examples, features, first_trained, pad_id) if first_trained else None

    def step(i: int) -> float:
        rows = order[i * batch : (i + 1) * batch]
        b = collate([examples[k] for k in rows], pad_id)
        factor = warmup_cosine(i, steps, int(s2["warmup"]))
        for group in optimizer.param_groups:
            group["lr"] = lr[group["name"]] * factor
        with autocast(bool(s2["bf16"])):
            if entries is None:
                logits = logits_from_features(model, b.input_ids, b.attention_mask, features[b.rows], b.positions)
            else:
                hidden = padded_entries(entries, rows, b.input_ids.shape[1])
                logits = logits_from_entry(model, hidden, b.attention_mask, b.positions, first_trained)
        loss = target_loss(logits, b.targets, per="example")
        loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        return loss.item()

    trained_tensors = [p for group in optimizer.param_groups for p in group["params"]]
    resume = Checkpointing(checkpoint_dir_for(out_dir), trained_tensors, optimizer, run_key(cfg, order), rng)
    with eager_attention(model):
        record = run_steps(step, steps, "stage 2", resume)
    if int(s2["lora_rank"]):
        merge_lora(adapted)
    for p in model.parameters():
        p.requires_grad_(True)
    evaluation = evaluate_stage(model, processor, data, cfg, STAGE2_READOUTS)
    if s2["idk_train_classes"]:
        evaluation = {**evaluation, **evaluate_idk(model, processor, data, cfg, image_idx)}

    out_dir = Path(out_dir)
    save_tiny_llava(model, processor, out_dir)
    plot_training_curve(record.losses, out_dir / "training_curve.png", "tiny-LLaVA stage 2 (projector + LM)")
    idk_gold = np.array([it.gold == it.metadata.get("idk_index") for it in items])
    write_manifest(
        out_dir,
        {
            "stage": "stage2",
            "seed": seed,
            "train_classes": cfg["train_classes"],
            "idk_train_classes": s2["idk_train_classes"] or [],
            "held_out_classes": [c for c in held_out_classes(cfg) if c not in (s2["idk_train_classes"] or [])],
            "parents": {"stage1": str(stage1_dir), "stage1_seed": parent["seed"]},
            "training_images": index_summary(image_idx, data.labels),
            "validation_images": index_summary(data.validation, data.labels),
            "n_idk_gold_examples": int(idk_gold.sum()),
            "n_examples_with_idk_option": int(sum(it.metadata.get("idk_index") is not None for it in items)),
            "gold_letter_counts": {
                str(g): int(n) for g, n in zip(*np.unique([it.gold for it in items], return_counts=True))
            },
            "steps": steps,
            "batch_size": batch,
            "distinct_examples": len(examples),
            "trained": [name for name, _ in trained],
            "lora_rank": int(s2["lora_rank"]),
            "config": cfg,
        },
    )
    summary = {
        **record.summary(),
        "seed": seed,
        "trained": ", ".join(name for name, _ in trained) + " (the rest frozen)",
        "instruction examples": f"{len(examples)} distinct, {steps * batch} seen"
        + (f" (layers below {first_trained} run once per example, cached)" if first_trained else ""),
        "classes": ", ".join(CLASSES[c] for c in cfg["train_classes"]),
        "IDK classes": ", ".join(CLASSES[c] for c in s2["idk_train_classes"] or []) or "none",
        "wall_seconds": round(time.time() - t_start, 1),
    }
    card_eval = {
        "items": f"{evaluation['n_items']} 4-way questions on validation-slice images",
        **{k: round(v, 4) if isinstance(v, float) else v for k, v in evaluation.items()},
    }
    title = "tiny-LLaVA stage 2 (visual instruction tuning" + (", IDK variant)" if s2["idk_train_classes"] else ")")
    write_model_card(out_dir, title, __doc__, summary, card_eval, cfg)
    log.info("stage 2 done in %.1f s: %s", time.time() - t_start, evaluation)
    return {**summary, **evaluation}


def n_distinct(s2: dict) -> int:
    """How many distinct instruction examples a stage draws: ``n_examples``, else one per example seen."""
    seen = int(s2["steps"]) * int(s2["batch_size"])
    return seen if s2["n_examples"] is None else min(int(s2["n_examples"]), seen)


def epoch_order(lengths, n_seen: int, batch: int, window: int, rng: np.random.Generator) -> np.ndarray:
    """Which distinct example fills each of the ``n_seen`` training slots: epochs over the examples, the
    first in drawn order, each later one reshuffled, each bucketed by length (``bucketed_order``)."""
    n = len(lengths)
    lengths = np.asarray(lengths)
    epochs = []
    for e in range(-(-n_seen // n)):
        perm = np.arange(n) if e == 0 else rng.permutation(n)
        epochs.append(perm[bucketed_order(lengths[perm], batch, window, rng)])
    return np.concatenate(epochs)[:n_seen]


def frozen_bottom(model, s2: dict) -> int:
    """The first trained decoder layer when everything below it is frozen (projector, embeddings, lower
    layers), so its input can be cached per example; 0 when a gradient must reach the bottom."""
    if s2["train_projector"] or s2["train_embeddings"]:
        return 0
    return len(model.model.language_model.layers) - n_trained_layers(model, s2)


def cache_entries(model, examples, features, first_layer: int, pad_id: int, chunk: int = 32) -> list:
    """Each example's hidden states entering ``first_layer`` (unpadded [T, D]): the frozen layers run once
    per distinct example instead of once per step that sees it. Examples go through in length order, so
    chunks carry little padding; the result does not depend on the steps' order."""
    t0 = time.time()
    by_length = sorted(range(len(examples)), key=lambda k: (len(examples[k].ids), k))
    entries: list = [None] * len(examples)
    for start in range(0, len(by_length), chunk):
        rows = by_length[start : start + chunk]
        b = collate([examples[k] for k in rows], pad_id)
        hidden = decoder_entry(model, b.input_ids, b.attention_mask, features[b.rows], first_layer)
        for j, k in enumerate(rows):
            entries[k] = hidden[j, : len(examples[k].ids)].clone()
    log.info(
        "stage 2: cached the input of layer %d for %d examples in %.1f s", first_layer, len(examples), time.time() - t0
    )
    return entries


def padded_entries(entries: list, rows, width: int):
    """The cached states of ``rows``, right-padded with zeros to ``width`` (padding is masked out)."""
    import torch

    hidden = torch.zeros((len(rows), width, entries[rows[0]].shape[-1]), dtype=entries[rows[0]].dtype)
    for j, k in enumerate(rows):
        hidden[j, : len(entries[k])] = entries[k]
    return hidden


def n_trained_layers(model, s2: dict) -> int:
    """How many top decoder layers stage 2 trains (``train_layers``; None: all of them)."""
    n_layers = len(model.model.language_model.layers)
    k = n_layers if s2["train_layers"] is None else int(s2["train_layers"])
    if not 1 <= k <= n_layers:
        raise MmcalError(f"tiny_llava.stage2.train_layers {k}: the language model has {n_layers} layers")
    return k


def trained_parts(model, s2: dict) -> list[tuple[str, object]]:
    """(name, module) of what stage 2 trains: the projector (``train_projector``), the top
    ``train_layers`` decoder layers (all when None) and the final norm, the tied embeddings if
    ``train_embeddings``."""
    lm = model.model.language_model
    n_layers, k = len(lm.layers), n_trained_layers(model, s2)
    parts = [("multi_modal_projector", model.model.multi_modal_projector)] if s2["train_projector"] else []
    layers = "language_model.layers" + ("" if k == n_layers else f"[{n_layers - k}:{n_layers}]")
    parts += [(layers, lm.layers[n_layers - k :]), ("language_model.norm", lm.norm)]
    if s2["train_embeddings"]:
        parts.append(("language_model.embed_tokens", lm.embed_tokens))
    return parts


def evaluate_idk(model, processor, data, cfg: dict, used_images) -> dict:
    """IDK variant: known-class items with the IDK option, and IDK-class images training never used."""
    s2 = cfg["stage2"]
    n = int(cfg["n_eval"])
    known = evaluate_stage(
        model, processor, data, cfg, ("letter_restricted",), idk_text=s2["idk_text"], tag="val-idk-option"
    )
    unused = np.setdiff1d(data.pool_for(s2["idk_train_classes"]), used_images)
    idk_idx = stratified_subset(data.labels, unused, s2["idk_train_classes"], n, seed=3)
    unknown = evaluate_stage(
        model,
        processor,
        data,
        cfg,
        ("letter_restricted",),
        idk_text=s2["idk_text"],
        indices=idk_idx,
        tag="val-idk-class",
    )
    return {
        "known_with_idk_option_accuracy": known["letter_restricted_accuracy"],
        "known_with_idk_option_idk_rate": known["letter_restricted_idk_rate"],
        "idk_class_items": unknown["n_items"],
        "idk_class_idk_rate": unknown["letter_restricted_idk_rate"],
    }
