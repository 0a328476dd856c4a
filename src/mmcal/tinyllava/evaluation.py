"""Held-out evaluation of a tiny-LLaVA stage through the study's own scoring engine.

Items are built from the validation slice of the Fashion-MNIST *train* file (never trained on),
their images written as PNGs (the engine reads image files), and scored by ``mmcal.engine.scoring.Engine``
with the default prompt: the accuracies in the model cards are the readouts the study reports.
"""

from __future__ import annotations

import logging
import tempfile
import time
from pathlib import Path

import numpy as np

from mmcal.data.fashion_mnist import select_indices
from mmcal.engine.loading import LoadedModel
from mmcal.engine.prompts import PromptVariant
from mmcal.engine.scenarios import Scenario
from mmcal.engine.scoring import Engine
from mmcal.items import MCItem
from mmcal.tinyllava.instructions import mc_item

log = logging.getLogger(__name__)


def eval_items(
    images: np.ndarray,
    labels: np.ndarray,
    indices: np.ndarray,
    candidates: list[int],
    n_classes: int,
    seed: int,
    image_dir: str | Path,
    idk_text: str | None = None,
    tag: str = "val",
) -> list[MCItem]:
    """One item per image index (gold letters balanced, seeded distractors); writes the PNGs."""
    from PIL import Image

    rng = np.random.default_rng(seed)
    image_dir = Path(image_dir)
    image_dir.mkdir(parents=True, exist_ok=True)
    items = []
    for j, k in enumerate(rng.permutation(len(indices))):
        i = int(indices[k])
        # Gold letters cycle so each position is gold equally often (ignored for IDK-gold items).
        item = mc_item(int(labels[i]), candidates, n_classes, j % n_classes, rng, idk_text, item_id=f"{tag}-{i:05d}")
        name = f"{tag}-{i:05d}.png"
        Image.fromarray(images[i]).save(image_dir / name)
        item.image = name
        items.append(item)
    return items


def stratified_subset(labels: np.ndarray, indices: np.ndarray, classes: list[int], n: int, seed: int):
    """``n`` of ``indices``, stratified by class (the data set builder's rule), sorted."""
    sub = select_indices(labels[indices], classes, min(n, len(indices)), np.random.default_rng(seed))
    return np.asarray(indices)[sub]


def score_accuracy(model, processor, items: list[MCItem], image_root, readouts) -> dict:
    """Per readout: accuracy and mean confidence; with IDK items also how often IDK is chosen."""
    lm = LoadedModel(
        name="in-training",
        model=model.eval(),
        processor=processor,
        tokenizer=processor.tokenizer,
        multimodal=True,
        device="cpu",
        fingerprint="in-training",
    )
    t0 = time.time()
    rows = Engine(lm, PromptVariant(), readouts=readouts, image_root=image_root).score(items, Scenario())
    out = {"n_items": len(items), "eval_seconds": round(time.time() - t0, 1)}
    by_id = {it.item_id: it for it in items}
    for readout in readouts:
        mine = [r for r in rows if r["readout"] == readout]
        bad = [r["status"] for r in mine if r["status"] != "ok"]
        if bad:
            raise RuntimeError(f"{len(bad)} evaluation items unscorable, e.g. {bad[0]!r}")
        out[f"{readout}_accuracy"] = float(np.mean([r["correct"] for r in mine]))
        out[f"{readout}_mean_confidence"] = float(np.mean([r["confidence"] for r in mine]))
        idk = [r["pred"] == by_id[r["item_id"]].metadata.get("idk_index", -2) for r in mine]
        if any(it.metadata.get("idk_index") is not None for it in items):
            out[f"{readout}_idk_rate"] = float(np.mean(idk))
    log.info("evaluation: %s", out)
    return out


def evaluate_stage(
    model,
    processor,
    data,
    cfg: dict,
    readouts,
    idk_text: str | None = None,
    indices=None,
    candidates=None,
    tag: str = "val",
) -> dict:
    """Score ``cfg['n_eval']`` validation-slice items (or ``indices``) with 4 options (the last an
    IDK option when ``idk_text`` is given)."""
    classes = cfg["train_classes"]
    if indices is None:
        indices = stratified_subset(data.labels, data.validation, classes, int(cfg["n_eval"]), seed=1)
    n_classes = min(4, len(classes)) - (1 if idk_text else 0)  # IDK is one of the 4 options
    with tempfile.TemporaryDirectory(prefix="mmcal-eval-") as tmp:
        items = eval_items(
            data.images,
            data.labels,
            indices,
            candidates or classes,
            n_classes,
            seed=2,
            image_dir=tmp,
            idk_text=idk_text,
            tag=tag,
        )
        return score_accuracy(model, processor, items, tmp, readouts)
