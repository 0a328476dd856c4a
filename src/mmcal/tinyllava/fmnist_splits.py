"""Which images of the Fashion-MNIST *train* file each tiny-LLaVA stage may use.

The known-class images of the train file are split once, the same way for every stage:
the last ``n_validation`` of them (in file order) are the validation slice that model cards report
on; all others form the training pool. Held-out classes never enter either. The t10k file is
never read here: it is the study's calib/test data.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass

import numpy as np

from mmcal.data.fashion_mnist import CLASSES, load_fashion_mnist
from mmcal.errors import ConfigError

TRAIN_PART = "train"  # the only Fashion-MNIST file training reads


@dataclass
class TrainFile:
    images: np.ndarray  # uint8 [N, 28, 28]
    labels: np.ndarray  # int64 [N]
    pool: np.ndarray  # indices of known-class images available for training (sorted)
    validation: np.ndarray  # indices of the known-class validation slice (sorted)

    def pool_for(self, classes: list[int]) -> np.ndarray:
        """Training-pool indices of other classes (e.g. IDK-training classes), sorted."""
        return np.setdiff1d(np.flatnonzero(np.isin(self.labels, classes)), self.validation)


def load_train_file(cfg: dict) -> TrainFile:
    """Load the train file and split its ``cfg['train_classes']`` images into pool/validation."""
    images, labels = load_fashion_mnist(cfg["fmnist_root"], TRAIN_PART)
    known = np.flatnonzero(np.isin(labels, cfg["train_classes"]))
    n_val = int(cfg["n_validation"])
    if not 0 < n_val < len(known):
        raise ConfigError(f"tiny_llava.n_validation {n_val}: need 1..{len(known) - 1}")
    validation = known[-n_val:]
    return TrainFile(images, labels, known[:-n_val], validation)


def draw_indices(pool: np.ndarray, n: int, rng: np.random.Generator) -> np.ndarray:
    """``n`` pool indices in a seeded random order, without repeats while the pool lasts."""
    if len(pool) == 0:
        raise ConfigError("no training images: the class list selects nothing")
    reps = -(-n // len(pool))
    order = np.concatenate([rng.permutation(pool) for _ in range(reps)])
    return order[:n]


def index_summary(indices: np.ndarray, labels: np.ndarray) -> dict:
    """What a manifest records about a set of image indices: counts per class, range, hash."""
    indices = np.asarray(indices, dtype=np.int64)
    uniq = np.unique(indices)
    per_class = {CLASSES[c]: int(n) for c, n in enumerate(np.bincount(labels[indices], minlength=10)) if n}
    return {
        "file": f"fashion-mnist/{TRAIN_PART}",
        "n_examples": int(len(indices)),
        "n_unique_images": int(len(uniq)),
        "n_examples_per_class": per_class,
        "class_ids": sorted({int(c) for c in labels[uniq]}),
        "index_min": int(uniq.min()) if len(uniq) else None,
        "index_max": int(uniq.max()) if len(uniq) else None,
        "unique_indices_sha256": hashlib.sha256(uniq.astype("<i8").tobytes()).hexdigest(),
    }
