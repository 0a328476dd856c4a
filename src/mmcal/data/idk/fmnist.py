"""Offline IDK set from Fashion-MNIST (builder ``fmnist_idk``).

An offline analogue of the reference study's July24-NewsVQA. For the reference study "unknowable"
means *published after the training cutoff*; for our embedded model it means *never seen in
training*: classes held out of every training stage. Kinds:

- ``unknown_class``: an image of a held-out class; the options are known classes only (none is
  right) plus IDK, so the gold is IDK.
- ``control``: an image of a known class; options = the right class + known distractors + IDK.
- ``no_information``: an image that carries no information about any class; gold is IDK.
  Default style ``"noise"``: seeded i.i.d. uniform pixel noise, which carries *exactly* no
  information about the label. ``"scramble"`` (a seeded pixel permutation of a known-class
  image: same intensity histogram, no shape) is harder to spot as out-of-distribution but keeps
  a weak histogram cue; ``"blank"`` is an all-black image.

All images come from the Fashion-MNIST **t10k** file (training only ever reads the train file).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np

from mmcal.data.fashion_mnist import CLASSES, QUESTION, load_fashion_mnist, select_indices
from mmcal.data.idk.common import (
    IDK_TEXT,
    assign_calib_test,
    check_n_options,
    fixed_idk_position,
    place_options,
    plan_positions,
    require_unknowable,
)
from mmcal.data.registry import BuildContext, register
from mmcal.errors import ConfigError, DataError
from mmcal.items import MCItem

KINDS = ("unknown_class", "control", "no_information")
NO_INFO_STYLES = ("noise", "scramble", "blank")


def _check_fmnist_idk_config(held_out, known, n_per_kind, n_options, no_information_style):
    unknown_kinds = set(n_per_kind) - set(KINDS)
    if unknown_kinds:
        raise ConfigError(f"n_per_kind has unknown kinds {sorted(unknown_kinds)}; use {KINDS}")
    bad = [c for c in held_out + known if not (0 <= c < len(CLASSES))]
    if bad:
        raise ConfigError(f"class indices {bad} outside 0..{len(CLASSES) - 1}")
    overlap = sorted(set(held_out) & set(known))
    if overlap:
        raise ConfigError(f"classes {overlap} are both held out and known")
    if n_per_kind.get("unknown_class", 0) > 0 and not held_out:
        raise ConfigError("unknown_class items need at least one held-out class")
    check_n_options(n_options)
    # unknown_class / no_information show n_options-1 known classes; control needs n_options-2
    # distractors besides the gold, so n_options-1 known classes in both cases.
    if len(known) < n_options - 1:
        raise ConfigError(f"{n_options} options need {n_options - 1} known classes, only {len(known)} given")
    if no_information_style not in NO_INFO_STYLES:
        raise ConfigError(f"no_information_style must be one of {NO_INFO_STYLES}, not {no_information_style!r}")


def _pick_images(labels, classes, n, taken: set[int], rng, what: str) -> list[int]:
    """``n`` t10k indices with labels in ``classes`` and not in ``taken`` (class-stratified)."""
    free = np.array([i for i in range(len(labels)) if i not in taken], dtype=np.int64)
    sub = select_indices(labels[free], list(classes), n, rng)
    if len(sub) < n:
        raise DataError(f"only {len(sub)} t10k images available for {what}, {n} requested")
    idx = [int(free[i]) for i in sub]
    taken.update(idx)
    return idx


def _no_information_image(style: str, seed: int, k: int, source: np.ndarray | None) -> np.ndarray:
    """A 28x28 uint8 image without information about any class (seeded per item)."""
    if style == "noise":
        return np.random.default_rng([seed, 3, k]).integers(0, 256, (28, 28), dtype=np.uint8)
    if style == "blank":
        return np.zeros((28, 28), dtype=np.uint8)
    perm = np.random.default_rng([seed, 2, k]).permutation(source.size)
    return source.reshape(-1)[perm].reshape(source.shape)


def _save_png(array: np.ndarray, path: Path, overwrite: bool) -> None:
    from PIL import Image

    if overwrite or not path.exists():
        Image.fromarray(array).save(path)


@dataclass
class _FmnistIdkBuild:
    """What every Fashion-MNIST IDK item of one build shares."""

    images: np.ndarray
    labels: np.ndarray
    known: list[int]
    n_options: int
    idk_text: str
    idk_position: object
    rng: np.random.Generator
    image_dir: Path
    image_rel: str
    dataset: str
    seed: int

    def item(
        self,
        kind: str,
        key: str,
        image_name: str,
        label,
        option_classes,
        gold,
        idk_pos,
        cluster_id: str,
        source: str,
        extra: dict | None = None,
    ) -> MCItem:
        """One item; ``option_classes`` holds class indices with ``None`` in the IDK slot."""
        meta = {
            "kind": kind,
            "answerable": kind == "control",
            "idk_index": idk_pos,
            "idk_text": self.idk_text,
            "label": label,
            "class": None if label is None else CLASSES[label],
            "option_classes": option_classes,
            **(extra or {}),
        }
        return MCItem(
            item_id=f"{self.dataset}-{kind}-{key}",
            cluster_id=cluster_id,
            question=QUESTION,
            options=[self.idk_text if c is None else CLASSES[c] for c in option_classes],
            gold=gold,
            split="test",  # set later by assign_calib_test
            source=source,
            image=f"{self.image_rel}/{image_name}" if self.image_rel else image_name,
            metadata=meta,
        )

    def draw_fillers(self, n: int, exclude: int | None = None) -> list[int]:
        pool = [c for c in self.known if c != exclude]
        return [int(c) for c in self.rng.choice(pool, size=n, replace=False)]

    def image_items(self, kind: str, idx: list[int]) -> list[MCItem]:
        """unknown_class / control items, one per t10k image index."""
        answerable = kind == "control"
        n = self.n_options
        plan = plan_positions(len(idx), n, self.idk_position, answerable, self.rng)
        items = []
        for i, (answer_pos, idk_pos) in zip(idx, plan):
            label = int(self.labels[i])
            if answerable:
                fillers = self.draw_fillers(n - 2, exclude=label)
                option_classes = place_options(n, idk_pos, answer_pos, label, fillers, None)
            else:  # held-out label: every known class is wrong
                option_classes = place_options(n, idk_pos, None, None, self.draw_fillers(n - 1), None)
            name = f"t10k-{i:05d}.png"
            # Same name and bytes as the fmnist builder's file, so an existing one is kept.
            _save_png(self.images[i], self.image_dir / name, overwrite=False)
            items.append(
                self.item(
                    kind,
                    f"{i:05d}",
                    name,
                    label,
                    option_classes,
                    answer_pos,
                    idk_pos,
                    cluster_id=f"fmnist-t10k-{i:05d}",
                    source=f"fashion-mnist/t10k#{i}",
                )
            )
        return items

    def no_information_items(self, n: int, style: str, sources: list[int] | None) -> list[MCItem]:
        """Generated images without information; options like unknown_class (gold = IDK)."""
        plan = plan_positions(n, self.n_options, self.idk_position, False, self.rng)
        items = []
        for k, (_, idk_pos) in enumerate(plan):
            fillers = self.draw_fillers(self.n_options - 1)
            option_classes = place_options(self.n_options, idk_pos, None, None, fillers, None)
            src = None if sources is None else sources[k]
            source_image = None if src is None else self.images[src]
            array = _no_information_image(style, self.seed, k, source_image)
            # The seed is in the name: a rebuild with another seed must not reuse a stale file.
            name = f"noinfo-{style}-s{self.seed}-{k:04d}.png"
            _save_png(array, self.image_dir / name, overwrite=True)
            extra = {"no_information_style": style}
            if src is None:
                cluster = f"{self.dataset}-noinfo-{style}-s{self.seed}-{k:04d}"
                source = f"synthetic/{style}#seed{self.seed}-{k}"
            else:  # a scrambled image stays in its source image's cluster
                cluster, source = f"fmnist-t10k-{src:05d}", f"fashion-mnist/t10k#{src}:scrambled"
                extra["source_label"] = int(self.labels[src])
            items.append(
                self.item(
                    "no_information",
                    f"{k:04d}",
                    name,
                    None,
                    option_classes,
                    idk_pos,
                    idk_pos,
                    cluster_id=cluster,
                    source=source,
                    extra=extra,
                )
            )
        return items


def build_fmnist_idk_items(
    root: str | Path,
    image_dir: str | Path,
    image_rel: str,
    held_out_classes: list[int],
    known_classes: list[int] | None,
    n_per_kind: dict,
    n_options: int = 4,
    idk_text: str = IDK_TEXT,
    idk_position="last",
    seed: int = 0,
    dataset: str = "idk",
    calib_fraction: float = 0.3,
    no_information_style: str = "noise",
) -> list[MCItem]:
    """Build the offline IDK items (kinds in ``KINDS``) and write their PNG images to ``image_dir``.

    ``root``: the Fashion-MNIST folder (``fashion_mnist.DEFAULT_ROOT``). ``image_rel``: the
    images' folder relative to the data set's folder (as stored in ``MCItem.image``).
    ``known_classes``: ``None`` means every class not held out. ``n_per_kind``: kind -> count.
    ``idk_position``: ``"last"``, ``"random"`` (balanced over slots) or a fixed slot index.
    Gold letters of control items are balanced over the non-IDK slots. ``calib_fraction`` of the
    clusters of each kind go to ``calib``, the rest to ``test``.
    """
    held_out = [int(c) for c in held_out_classes]
    known = (
        [c for c in range(len(CLASSES)) if c not in held_out]
        if known_classes is None
        else [int(c) for c in known_classes]
    )
    n_per_kind = {k: int(v) for k, v in n_per_kind.items()}
    _check_fmnist_idk_config(held_out, known, n_per_kind, n_options, no_information_style)
    fixed_idk_position(idk_position, n_options)  # fail on a bad position before any work

    images, labels = load_fashion_mnist(root, "test")  # t10k only: never seen in training
    rng = np.random.default_rng(seed)
    image_dir = Path(image_dir)
    image_dir.mkdir(parents=True, exist_ok=True)
    build = _FmnistIdkBuild(
        images=images,
        labels=labels,
        known=known,
        n_options=n_options,
        idk_text=idk_text,
        idk_position=idk_position,
        rng=rng,
        image_dir=image_dir,
        image_rel=image_rel,
        dataset=dataset,
        seed=seed,
    )
    taken: set[int] = set()  # t10k indices already used: no image serves two items
    items: list[MCItem] = []
    if n_per_kind.get("unknown_class", 0) > 0:
        idx = _pick_images(labels, held_out, n_per_kind["unknown_class"], taken, rng, "unknown_class")
        items += build.image_items("unknown_class", idx)
    if n_per_kind.get("control", 0) > 0:
        idx = _pick_images(labels, known, n_per_kind["control"], taken, rng, "control")
        items += build.image_items("control", idx)
    n = n_per_kind.get("no_information", 0)
    if n > 0:
        sources = None
        if no_information_style == "scramble":
            sources = _pick_images(labels, known, n, taken, rng, "no_information sources")
        items += build.no_information_items(n, no_information_style, sources)
    assign_calib_test(items, calib_fraction, seed)
    for it in items:
        it.validate()
    return items


@register("fmnist_idk")
def build_fmnist_idk(name: str, cfg: dict, out_dir: Path, context: BuildContext) -> list[MCItem]:
    """Config adapter: held-out classes = ``classes.idk_test``, known = ``classes.known``."""
    items = build_fmnist_idk_items(
        cfg.get("root", context.fmnist_root),
        out_dir / "images",
        "images",
        held_out_classes=context.classes["idk_test"],
        known_classes=context.classes["known"],
        n_per_kind=cfg.get("n_per_kind") or {},
        n_options=int(cfg.get("n_options", 4)),
        idk_text=cfg.get("idk_text", IDK_TEXT),
        idk_position=cfg.get("idk_position", "last"),
        calib_fraction=float(cfg.get("calib_fraction", 0.3)),
        seed=context.seed,
        dataset=name,
    )
    require_unknowable(items, name, "fmnist_idk")
    return items
