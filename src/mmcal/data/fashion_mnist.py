"""Fashion-MNIST from Debian's ``dataset-fashion-mnist`` package (IDX files, gzip).

``load_fashion_mnist`` reads the raw arrays; ``build_fashion_mnist_items`` turns them into
"What is shown in the image?" multiple-choice items with seeded distractors and gold letters
balanced across positions.
"""

from __future__ import annotations

import gzip
import struct
from pathlib import Path

import numpy as np

from mmcal.data.registry import BuildContext, register
from mmcal.errors import DataError
from mmcal.items import MCItem

DEFAULT_ROOT = "/usr/share/datasets/fashion-mnist"
CLASSES = (
    "T-shirt/top",
    "Trouser",
    "Pullover",
    "Dress",
    "Coat",
    "Sandal",
    "Shirt",
    "Sneaker",
    "Bag",
    "Ankle boot",
)
QUESTION = "What is shown in the image?"
_PARTS = {"train": "train", "test": "t10k"}


def _missing_message(path: Path) -> str:
    return (
        f"Fashion-MNIST file {path} not found. Install the Debian package "
        "'dataset-fashion-mnist' (apt-get install dataset-fashion-mnist) or set the config key fmnist_root "
        "(or datasets.<name>.root) to a folder holding the IDX files "
        "({train,t10k}-{images-idx3,labels-idx1}-ubyte.gz)."
    )


def _read_idx(path: Path, magic: int) -> np.ndarray:
    if not path.exists():
        raise DataError(_missing_message(path))
    try:
        with gzip.open(path, "rb") as fh:
            raw = fh.read()
    except OSError as exc:
        raise DataError(f"{path}: not a readable gzip IDX file ({exc})") from None
    got = struct.unpack(">I", raw[:4])[0]
    if got != magic:
        raise DataError(f"{path}: IDX magic {got:#x}, expected {magic:#x}")
    ndim = magic & 0xFF
    dims = struct.unpack(">" + "I" * ndim, raw[4 : 4 + 4 * ndim])
    data = np.frombuffer(raw, dtype=np.uint8, offset=4 + 4 * ndim)
    if data.size != int(np.prod(dims)):
        raise DataError(f"{path}: truncated ({data.size} values, header says {dims})")
    return data.reshape(dims)


def load_fashion_mnist(root: str | Path = DEFAULT_ROOT, part: str = "train"):
    """Return (images uint8 [N,28,28], labels int64 [N]) of the 'train' or 'test' file."""
    if part not in _PARTS:
        raise ValueError(f"part must be 'train' or 'test', not {part!r}")
    root = Path(root)
    stem = _PARTS[part]
    images = _read_idx(root / f"{stem}-images-idx3-ubyte.gz", 0x00000803)
    labels = _read_idx(root / f"{stem}-labels-idx1-ubyte.gz", 0x00000801).astype(np.int64)
    if len(images) != len(labels):
        raise DataError(f"{root}: {len(images)} images but {len(labels)} labels in {stem}")
    return images, labels


def make_options(
    gold_class: int,
    candidates: list[int],
    n_options: int,
    gold_pos: int,
    rng: np.random.Generator,
) -> list[int]:
    """Class indices of the options: gold at ``gold_pos``, distractors drawn from ``candidates``."""
    pool = [c for c in candidates if c != gold_class]
    if len(pool) < n_options - 1:
        raise DataError(f"need {n_options - 1} distractor classes, only {len(pool)} available")
    distractors = list(rng.choice(pool, size=n_options - 1, replace=False))
    distractors.insert(gold_pos, gold_class)
    return [int(c) for c in distractors]


def select_indices(labels: np.ndarray, classes: list[int], n: int, rng: np.random.Generator):
    """``n`` indices of images whose label is in ``classes``, stratified by class (seeded)."""
    per_class = {c: rng.permutation(np.flatnonzero(labels == c)) for c in classes}
    out, k = [], 0
    while len(out) < n:
        c = classes[k % len(classes)]
        pos = k // len(classes)
        if pos < len(per_class[c]):
            out.append(int(per_class[c][pos]))
        elif all(k // len(classes) >= len(v) for v in per_class.values()):
            break
        k += 1
    return sorted(out)


def build_fashion_mnist_items(
    root: str | Path,
    image_dir: str | Path,
    image_rel: str,
    splits: dict[str, int],
    n_options: int = 4,
    classes: list[int] | None = None,
    seed: int = 0,
    dataset: str = "fmnist",
) -> list[MCItem]:
    """Build items for each split in ``splits`` (name -> count) and write their PNG images.

    ``train`` items come from the Fashion-MNIST train file; ``calib`` and ``test`` from disjoint
    parts of the t10k file. Options: gold plus distractors from ``classes``; gold positions cycle
    through the letters so every position holds the gold equally often.
    """
    from PIL import Image

    rng = np.random.default_rng(seed)
    classes = list(range(len(CLASSES))) if classes is None else [int(c) for c in classes]
    image_dir = Path(image_dir)
    image_dir.mkdir(parents=True, exist_ok=True)
    items: list[MCItem] = []
    test_imgs = test_lbls = None
    taken_t10k: set[int] = set()
    for split in ("train", "calib", "test"):
        n = int(splits.get(split, 0))
        if n <= 0:
            continue
        if split == "train":
            imgs, lbls = load_fashion_mnist(root, "train")
            idx = select_indices(lbls, classes, n, rng)
            part = "train"
        else:
            if test_imgs is None:
                test_imgs, test_lbls = load_fashion_mnist(root, "test")
            imgs, lbls = test_imgs, test_lbls
            free = np.array([i for i in range(len(lbls)) if i not in taken_t10k])
            sub = select_indices(lbls[free], classes, n, rng)
            idx = [int(free[i]) for i in sub]
            taken_t10k.update(idx)
            part = "t10k"
        order = rng.permutation(len(idx))  # shuffle so gold positions are not tied to class
        for j, oi in enumerate(order):
            i = idx[oi]
            label = int(lbls[i])
            gold_pos = j % n_options
            opts = make_options(label, classes, n_options, gold_pos, rng)
            name = f"{part}-{i:05d}.png"
            path = image_dir / name
            if not path.exists():
                Image.fromarray(imgs[i]).save(path)
            items.append(
                MCItem(
                    item_id=f"{dataset}-{split}-{i:05d}",
                    cluster_id=f"fmnist-{part}-{i:05d}",
                    question=QUESTION,
                    options=[CLASSES[c] for c in opts],
                    gold=gold_pos,
                    split=split,
                    source=f"fashion-mnist/{part}#{i}",
                    image=f"{image_rel}/{name}",
                    metadata={"label": label, "class": CLASSES[label], "option_classes": opts},
                )
            )
    return items


@register("fashion_mnist")
def build_fashion_mnist(name: str, cfg: dict, out_dir: Path, context: BuildContext) -> list[MCItem]:
    """Config adapter: ``root`` (default ``fmnist_root``), ``n_options``, ``splits``; options from the known classes."""
    return build_fashion_mnist_items(
        cfg.get("root", context.fmnist_root),
        out_dir / "images",
        "images",
        cfg.get("splits") or {},
        n_options=int(cfg.get("n_options", 4)),
        classes=context.classes["known"],
        seed=context.seed,
        dataset=name,
    )
