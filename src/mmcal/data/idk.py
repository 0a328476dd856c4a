"""IDK ("I don't know") data sets: items whose honest answer can be to admit not knowing.

Every item carries an explicit IDK option and, in ``metadata``:

- ``kind``: what sort of item it is (see below);
- ``answerable``: whether a correct non-IDK answer is knowable (False: the gold is the IDK option);
- ``idk_index``: the IDK option's index (``None`` only for released files that have none).

Three sources:

1. ``build_fmnist_idk_items``: an offline analogue of the reference study's July24-NewsVQA. For the
   reference study "unknowable" means *published after the training cutoff*; for our embedded model
   it means *never seen in training*: classes held out of every training stage. Kinds:

   - ``unknown_class``: an image of a held-out class; the options are known classes only (none is
     right) plus IDK, so the gold is IDK.
   - ``control``: an image of a known class; options = the right class + known distractors + IDK.
   - ``no_information``: an image that carries no information about any class; gold is IDK.
     Default style ``"noise"``: seeded i.i.d. uniform pixel noise, which carries *exactly* no
     information about the label. ``"scramble"`` (a seeded pixel permutation of a known-class
     image: same intensity histogram, no shape) is harder to spot as out-of-distribution but keeps
     a weak histogram cue; ``"blank"`` is an all-black image.

   All images come from the Fashion-MNIST **t10k** file (training only ever reads the train file).

2. ``build_dated_news_idk``: real dated records (image, headline, date) of which only those
   published strictly *after* a model's cutoff are kept (the others are counted in the report).

3. ``read_llava_conversation_json``: the released IDK format (LLaVA-style conversation JSON).

Items are split into ``calib`` / ``test`` at cluster level so prompts can be tuned on ``calib``.
"""

from __future__ import annotations

import csv
import json
import re
from collections import Counter
from dataclasses import dataclass, field
from datetime import date, datetime
from pathlib import Path
from typing import Iterable

import numpy as np

from mmcal import LETTERS
from mmcal.errors import ConfigError, DataError
from mmcal.items import MCItem
from mmcal.data.fashion_mnist import CLASSES, QUESTION, load_fashion_mnist, select_indices

IDK_TEXT = "I don't know"
# Phrasings recognised as the IDK option in released files (compared after normalisation).
IDK_PHRASES = ("i don't know", "i do not know", "i dont know")

KINDS = ("unknown_class", "control", "no_information")
UNKNOWABLE_KINDS = ("unknown_class", "no_information")
NO_INFO_STYLES = ("noise", "scramble", "blank")
NEWS_KIND = "after_cutoff"
NEWS_QUESTION = "Which headline matches this image?"
GOLD_MODES = ("idk", "answer")


# --------------------------------------------------------------------------------------------
# Shared helpers: option placement and calib/test split
# --------------------------------------------------------------------------------------------


def check_n_options(n_options: int, minimum: int = 2) -> None:
    if not (minimum <= n_options <= len(LETTERS)):
        raise ConfigError(f"n_options must be in {minimum}..{len(LETTERS)}, not {n_options}")


def fixed_idk_position(idk_position, n_options: int) -> int | None:
    """The IDK slot for ``"last"`` or an int (negative: from the end); None for ``"random"``."""
    if idk_position == "last":
        return n_options - 1
    if idk_position == "random":
        return None
    if isinstance(idk_position, (int, np.integer)) and not isinstance(idk_position, bool):
        pos = int(idk_position)
        if not (-n_options <= pos < n_options):
            raise ConfigError(f"idk_position {pos} outside the {n_options} options")
        return pos % n_options
    raise ConfigError(f"idk_position must be 'last', 'random' or an int, not {idk_position!r}")


def plan_positions(
    n_items: int, n_options: int, idk_position, answerable: bool, rng: np.random.Generator
) -> list[tuple[int, int]]:
    """(answer slot, IDK slot) for each item, balanced over positions and shuffled.

    With a fixed IDK slot the answer cycles through the other slots. With ``"random"`` the answer
    cycles through all slots and the IDK slot through the remaining ones, so both are balanced.
    For unanswerable items the answer slot *is* the IDK slot.
    """
    fixed = fixed_idk_position(idk_position, n_options)
    plan = []
    for j in range(n_items):
        if fixed is not None:
            idk = fixed
            others = [q for q in range(n_options) if q != idk]
            answer = others[j % len(others)] if answerable else idk
        elif answerable:
            answer = j % n_options
            idk = (answer + 1 + (j // n_options) % (n_options - 1)) % n_options
        else:
            idk = answer = j % n_options
        plan.append((answer, idk))
    # Shuffle so that positions are not tied to the (sorted, class-stratified) image order.
    return [plan[k] for k in rng.permutation(n_items)]


def place_options(n_options: int, idk_pos: int, answer_pos: int | None, answer, fillers, idk_value):
    """``n_options`` slots: IDK at ``idk_pos``, the answer at ``answer_pos``, fillers elsewhere.

    ``answer_pos`` None (or equal to ``idk_pos``) means there is no answer slot (unanswerable).
    """
    fixed = {idk_pos: idk_value}
    if answer_pos is not None and answer_pos != idk_pos:
        fixed[answer_pos] = answer
    rest = iter(fillers)
    return [fixed[q] if q in fixed else next(rest) for q in range(n_options)]


def assign_calib_test(items: list[MCItem], calib_fraction: float, seed: int) -> None:
    """Set each item's split to ``calib`` or ``test`` by cluster, stratified by kind.

    Every item of a cluster gets the same split (no image is on both sides). Within each kind a
    share ``calib_fraction`` of the clusters (rounded) goes to calib.
    """
    if not (0.0 <= calib_fraction <= 1.0):
        raise ConfigError(f"calib_fraction must be in [0, 1], not {calib_fraction}")
    rng = np.random.default_rng([seed, 7])  # own stream: the split does not move option draws
    kind_of_cluster: dict[str, str] = {}
    for it in items:
        kind_of_cluster.setdefault(it.cluster_id, str(it.metadata.get("kind", "")))
    split_of_cluster: dict[str, str] = {}
    for kind in sorted(set(kind_of_cluster.values())):
        clusters = sorted(c for c, k in kind_of_cluster.items() if k == kind)
        n_calib = int(round(calib_fraction * len(clusters)))
        order = rng.permutation(len(clusters))
        for rank, ci in enumerate(order):
            split_of_cluster[clusters[ci]] = "calib" if rank < n_calib else "test"
    for it in items:
        it.split = split_of_cluster[it.cluster_id]


def idk_manifest(items: Iterable[MCItem]) -> dict:
    """Counts by kind x split, plus where the IDK option and the gold sit (for the data report)."""
    items = list(items)
    by_kind_split: dict[str, dict[str, int]] = {}
    for it in items:
        kind = str(it.metadata.get("kind", "unspecified"))
        row = by_kind_split.setdefault(kind, {})
        row[it.split] = row.get(it.split, 0) + 1
    return {
        "n_items": len(items),
        "n_clusters": len({it.cluster_id for it in items}),
        "by_kind_split": {k: dict(sorted(v.items())) for k, v in sorted(by_kind_split.items())},
        "by_kind": dict(sorted(Counter(str(it.metadata.get("kind")) for it in items).items())),
        "by_split": dict(sorted(Counter(it.split for it in items).items())),
        "n_answerable": sum(bool(it.metadata.get("answerable")) for it in items),
        "idk_position_counts": _letter_counts(it.metadata.get("idk_index") for it in items),
        "answerable_gold_position_counts": _letter_counts(
            it.gold for it in items if it.metadata.get("answerable")
        ),
    }


def _letter_counts(indices) -> dict[str, int]:
    counts = Counter(LETTERS[i] if isinstance(i, int) else "none" for i in indices)
    return dict(sorted(counts.items()))


# --------------------------------------------------------------------------------------------
# 1. Offline IDK set from Fashion-MNIST
# --------------------------------------------------------------------------------------------


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
        raise ConfigError(
            f"{n_options} options need {n_options - 1} known classes, only {len(known)} given"
        )
    if no_information_style not in NO_INFO_STYLES:
        raise ConfigError(
            f"no_information_style must be one of {NO_INFO_STYLES}, not {no_information_style!r}"
        )


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
                option_classes = place_options(
                    n, idk_pos, None, None, self.draw_fillers(n - 1), None
                )
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
        idx = _pick_images(
            labels, held_out, n_per_kind["unknown_class"], taken, rng, "unknown_class"
        )
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


# --------------------------------------------------------------------------------------------
# 2a. IDK items from real dated news records
# --------------------------------------------------------------------------------------------
#
# Gold semantics. In the reference study the point of after-cutoff news is that the model cannot
# know the event: the question asks about facts that the image does not show, so the honest answer
# is "I don't know". ``gold="idk"`` (default) follows that: gold = the IDK option, the true headline
# is kept as ``metadata['answer_index']`` and the item is unanswerable. ``gold="answer"`` instead
# treats the item as answerable (gold = true headline): use it when the question *can* be answered
# from what the image shows (matching a photo to its headline), to measure false IDKs.
# Under ``gold="idk"`` the true headline is still an option on purpose: it is the tempting answer,
# and ``answer_index`` lets an analysis count how often a model picks it instead of admitting.

NEWS_FIELDS = ("id", "image", "headline", "date", "question", "distractors", "cluster")


@dataclass
class NewsRecord:
    """One validated news record; ``answer`` is its headline (or caption)."""

    record_id: str
    image: str
    answer: str
    published: date
    question: str | None
    distractors: list[str] | None
    cluster: str
    extra: dict = field(default_factory=dict)


def parse_date(value, what: str) -> date:
    """An ISO date or date-time (``2024-07-15``, ``2024-07-15T10:00:00Z``) as a date."""
    if isinstance(value, datetime):
        return value.date()
    if isinstance(value, date):
        return value
    if not isinstance(value, str) or not value.strip():
        raise DataError(f"{what}: date {value!r} is not an ISO date string")
    text = value.strip()
    try:
        return date.fromisoformat(text)
    except ValueError:
        pass
    try:
        return datetime.fromisoformat(text.replace("Z", "+00:00")).date()
    except ValueError:
        raise DataError(f"{what}: date {value!r} is not an ISO date (YYYY-MM-DD)") from None


def _field(rec: dict, name: str, field_map: dict) -> object:
    return rec.get(field_map.get(name, name))


def _text_field(rec, name, field_map, where, required=True) -> str | None:
    value = _field(rec, name, field_map)
    if value is None or (isinstance(value, str) and not value.strip()):
        if required:
            raise DataError(f"{where}: field {field_map.get(name, name)!r} is missing or empty")
        return None
    if not isinstance(value, (str, int, float)):
        raise DataError(f"{where}: field {field_map.get(name, name)!r} must be text, not {value!r}")
    return str(value).strip()


def _distractor_list(value, where: str) -> list[str] | None:
    """A record's own distractors: a list, a JSON list string, or a '|'-separated string (CSV)."""
    if value is None or value == "":
        return None
    if isinstance(value, str) and value.strip().startswith("["):
        try:
            value = json.loads(value)
        except json.JSONDecodeError as exc:
            raise DataError(
                f"{where}: field 'distractors' is not a JSON list ({exc.msg})"
            ) from None
    elif isinstance(value, str):
        value = value.split("|")
    if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
        raise DataError(f"{where}: field 'distractors' must be a list of strings")
    return [v.strip() for v in value if v.strip()]


def parse_news_record(
    rec: dict, index: int, image_root: Path | None, field_map: dict, check_images: bool
) -> NewsRecord:
    """Validate one news record; a problem raises DataError naming the record and the field."""
    rid = rec.get(field_map.get("id", "id")) if isinstance(rec, dict) else None
    where = f"news record #{index}" + (f" (id {rid!r})" if rid not in (None, "") else "")
    if not isinstance(rec, dict):
        raise DataError(f"{where}: expected a JSON object / dict, got {type(rec).__name__}")
    image = _text_field(rec, "image", field_map, where)
    answer = _text_field(rec, "headline", field_map, where, required=False)
    if answer is None:  # a caption may stand in for the headline
        answer = _text_field(rec, "caption", field_map, where, required=False)
    if answer is None:
        raise DataError(f"{where}: field 'headline' (or 'caption') is missing or empty")
    raw_date = _field(rec, "date", field_map)
    if raw_date is None or raw_date == "":
        raise DataError(f"{where}: field {field_map.get('date', 'date')!r} is missing or empty")
    published = parse_date(raw_date, where)
    if check_images:
        path = Path(image) if image_root is None else Path(image_root) / image
        if not path.is_file():
            raise DataError(f"{where}: image file {path} does not exist")
    question = _text_field(rec, "question", field_map, where, required=False)
    distractors = _distractor_list(_field(rec, "distractors", field_map), where)
    cluster = _text_field(rec, "cluster", field_map, where, required=False) or image
    used = {field_map.get(k, k) for k in NEWS_FIELDS + ("caption",)}
    extra = {
        k: v for k, v in rec.items() if k not in used and isinstance(v, (str, int, float, bool))
    }
    return NewsRecord(
        record_id=str(rid) if rid not in (None, "") else f"rec{index:05d}",
        image=image,
        answer=answer,
        published=published,
        question=question,
        distractors=distractors,
        cluster=str(cluster),
        extra=extra,
    )


def _norm_text(text: str) -> str:
    """Lower-case, straight apostrophes, single spaces, no trailing punctuation."""
    text = text.replace("\u2019", "'").replace("\u2018", "'").lower()
    return re.sub(r"\s+", " ", text).strip().rstrip(".!?").strip()


def is_idk_text(text: str, idk_text: str = IDK_TEXT) -> bool:
    return _norm_text(text) in {_norm_text(idk_text), *IDK_PHRASES}


def _news_distractors(
    rec: NewsRecord, pool: list[tuple[str, str | None, str | None]], n: int, idk_text, rng, where
) -> list[str]:
    """``n`` distractors: the record's own if it has them, else answers of other records that ask
    the same question (for the default question: other headlines and the extra pool)."""
    bad = {_norm_text(rec.answer)}
    if rec.distractors is not None:
        own = [d for d in dict.fromkeys(rec.distractors) if _norm_text(d) not in bad]
        own = [d for d in own if not is_idk_text(d, idk_text)]
        if len(own) < n:
            raise DataError(f"{where}: {len(own)} usable distractors, {n} needed")
        return [own[i] for i in sorted(rng.choice(len(own), size=n, replace=False))]
    seen, candidates = set(bad), []
    for text, cluster, question in pool:
        key = _norm_text(text)
        # Same-cluster headlines describe the same event/image: they could also be right.
        # Answers to another question are not plausible options for this one.
        if key in seen or cluster == rec.cluster or question != rec.question:
            continue
        if is_idk_text(text, idk_text):
            continue
        seen.add(key)
        candidates.append(text)
    if len(candidates) < n:
        raise DataError(
            f"{where}: only {len(candidates)} distinct distractors available from other records, "
            f"{n} needed (add records, a distractor_pool, or the record's own 'distractors')"
        )
    return [candidates[i] for i in rng.choice(len(candidates), size=n, replace=False)]


def build_dated_news_idk(
    records: Iterable[dict],
    cutoff,
    image_root: str | Path | None = None,
    image_rel: str = "",
    n_options: int = 4,
    seed: int = 0,
    idk_text: str = IDK_TEXT,
    idk_position="last",
    gold: str = "idk",
    distractor_pool: Iterable[str] | None = None,
    question: str = NEWS_QUESTION,
    dataset: str = "news_idk",
    calib_fraction: float = 0.3,
    field_map: dict | None = None,
    check_images: bool = True,
) -> tuple[list[MCItem], dict]:
    """MC items from dated news records published strictly after ``cutoff`` (a per-model date).

    Each record needs ``image`` (path relative to ``image_root``), ``headline`` (or ``caption``)
    and ``date`` (ISO); optional ``id``, ``question`` (replaces ``question``), ``distractors`` (own
    wrong options), ``cluster`` (items of one event; default: the image path). ``field_map`` maps
    these names to the record's own keys, e.g. ``{"headline": "title"}``.

    Options: true headline + ``n_options - 2`` distractors (the record's own ``distractors``, else
    other records' headlines and ``distractor_pool``; records with a custom question draw from
    records with the same question) + the IDK option. ``gold``: ``"idk"`` (reference-study
    semantics: the event is unknowable to the model) or ``"answer"`` (the true headline).

    Every record is validated (a malformed one raises DataError naming it); records dated on or
    before the cutoff are excluded and counted in the returned report.
    """
    if gold not in GOLD_MODES:
        raise ConfigError(f"gold must be one of {GOLD_MODES}, not {gold!r}")
    check_n_options(n_options, minimum=2)
    cutoff_date = parse_date(cutoff, "cutoff")
    field_map = dict(field_map or {})
    parsed = [
        parse_news_record(
            rec, i, None if image_root is None else Path(image_root), field_map, check_images
        )
        for i, rec in enumerate(records)
    ]
    _check_unique_ids([r.record_id for r in parsed], "news records")
    kept = [r for r in parsed if r.published > cutoff_date]
    excluded = [r for r in parsed if r.published <= cutoff_date]
    # Answers of all records (also those before the cutoff) are fair distractors.
    pool = [(r.answer, r.cluster, r.question) for r in parsed]
    pool += [(t, None, None) for t in (distractor_pool or [])]  # extra headlines
    rng = np.random.default_rng(seed)
    plan = plan_positions(len(kept), n_options, idk_position, True, rng)
    items = []
    for rec, (answer_pos, idk_pos) in zip(kept, plan):
        where = f"news record {rec.record_id!r}"
        fillers = _news_distractors(rec, pool, n_options - 2, idk_text, rng, where)
        options = place_options(n_options, idk_pos, answer_pos, rec.answer, fillers, idk_text)
        items.append(
            MCItem(
                item_id=f"{dataset}-{rec.record_id}",
                cluster_id=f"{dataset}:{rec.cluster}",
                question=rec.question or question,
                options=options,
                gold=idk_pos if gold == "idk" else answer_pos,
                split="test",
                source=f"news/{rec.record_id}",
                image=f"{image_rel}/{rec.image}" if image_rel else rec.image,
                metadata={
                    "kind": NEWS_KIND,
                    "answerable": gold == "answer",
                    "idk_index": idk_pos,
                    "idk_text": idk_text,
                    "answer_index": answer_pos,
                    "gold_mode": gold,
                    "date": rec.published.isoformat(),
                    "cutoff": cutoff_date.isoformat(),
                    "record_id": rec.record_id,
                    "headline": rec.answer,
                    "extra": rec.extra,
                },
            )
        )
    assign_calib_test(items, calib_fraction, seed)
    report = _news_report(parsed, kept, excluded, items, cutoff_date, gold)
    return items, report


def _check_unique_ids(ids: list[str], what: str) -> None:
    dupes = sorted(k for k, v in Counter(ids).items() if v > 1)
    if dupes:
        raise DataError(f"{what}: duplicate ids {dupes[:10]}")


def _news_report(parsed, kept, excluded, items, cutoff_date, gold) -> dict:
    dates = [r.published for r in kept]
    return {
        "cutoff": cutoff_date.isoformat(),
        "rule": "kept: published strictly after the cutoff (compared by calendar date)",
        "gold": gold,
        "n_records": len(parsed),
        "n_kept": len(kept),
        "n_excluded_not_after_cutoff": len(excluded),
        "excluded_ids": [r.record_id for r in excluded],
        "kept_date_range": [min(dates).isoformat(), max(dates).isoformat()] if dates else None,
        "by_split": dict(sorted(Counter(it.split for it in items).items())),
    }


def load_news_records(
    source: str | Path, image_dir: str | Path | None = None, hf_split: str = "test"
) -> list[dict]:
    """Read news records from a local ``.json`` (a list), ``.jsonl`` or ``.csv`` file.

    ``source = "hf:<name>"`` reads a Hugging Face dataset instead (needs the optional ``datasets``
    package, imported only here); its images are written as PNGs to ``image_dir``.
    """
    if isinstance(source, str) and source.startswith("hf:"):
        return load_hf_news_records(source[3:], hf_split, image_dir)
    path = Path(source)
    if not path.is_file():
        raise DataError(f"news records file {path} does not exist")
    suffix = path.suffix.lower()
    if suffix == ".jsonl":
        return _read_jsonl(path)
    if suffix == ".json":
        data = _read_json(path)
        if not isinstance(data, list):
            raise DataError(f"{path}: expected a JSON list of records, got {type(data).__name__}")
        return data
    if suffix == ".csv":
        with path.open(encoding="utf-8", newline="") as fh:
            return [dict(row) for row in csv.DictReader(fh)]
    raise DataError(f"{path}: unsupported news file type {suffix!r} (use .json, .jsonl or .csv)")


def _read_json(path: Path):
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as exc:
        raise DataError(f"{path}: not valid JSON ({exc.msg}, line {exc.lineno})") from None


def _read_jsonl(path: Path) -> list[dict]:
    out = []
    with path.open(encoding="utf-8") as fh:
        for lineno, line in enumerate(fh, 1):
            if not line.strip():
                continue
            try:
                out.append(json.loads(line))
            except json.JSONDecodeError as exc:
                raise DataError(f"{path}:{lineno}: not valid JSON ({exc.msg})") from None
    return out


def load_hf_news_records(
    name: str,
    split: str,
    image_dir: str | Path | None,
    image_field: str = "image",
    id_field: str = "id",
) -> list[dict]:
    """Records from a Hugging Face dataset; ``datasets`` is optional, so it is imported lazily."""
    try:
        import datasets  # noqa: PLC0415 - optional dependency
    except ImportError:
        raise DataError(
            f"reading news records from Hugging Face dataset {name!r} needs the optional "
            "'datasets' package, which is not installed (pip install datasets), or export the "
            "records to a local .jsonl/.csv file"
        ) from None
    if image_dir is None:
        raise DataError(f"Hugging Face dataset {name!r}: image_dir is needed to store its images")
    rows = datasets.load_dataset(name, split=split)
    return hf_rows_to_records(rows, image_dir, image_field, id_field)


def hf_rows_to_records(
    rows: Iterable[dict], image_dir: str | Path, image_field: str = "image", id_field: str = "id"
) -> list[dict]:
    """Write decoded images (PIL) of dataset rows to ``image_dir``; paths become relative names."""
    image_dir = Path(image_dir)
    image_dir.mkdir(parents=True, exist_ok=True)
    out = []
    for i, row in enumerate(rows):
        rec = dict(row)
        img = rec.get(image_field)
        if img is not None and hasattr(img, "save"):  # a decoded PIL image
            rid = str(rec.get(id_field, "row"))
            # The row number keeps names unique when sanitised ids collide ("a/b" vs "a_b").
            name = f"{i:05d}-" + re.sub(r"[^A-Za-z0-9._-]", "_", rid) + ".png"
            img.save(image_dir / name)
            rec[image_field] = name
        out.append(rec)
    return out


# --------------------------------------------------------------------------------------------
# 2b. Released IDK format: LLaVA-style conversation JSON
# --------------------------------------------------------------------------------------------

# One option at the start of a line: "A. x", "A) x", "A: x" or "(A) x".
_OPTION_LINE = re.compile(r"^\s*(?:\(([A-J])\)|([A-J])[.):])\s*(.*?)\s*$")
# The answer turn: "A", "(A)", "A.", "A) text", "A. text".
_ANSWER = re.compile(r"^\s*\(?\s*([A-J])\s*(?:\)|\.|:|$|\s)")


def parse_mc_prompt(text: str, where: str) -> tuple[str, list[str], str]:
    """Split a human turn into (question, options, trailing instruction); '<image>' is dropped."""
    text = text.replace("<image>", "").strip()
    lines = text.splitlines()
    question_lines, options, trailer_lines = [], [], []
    for line in lines:
        m = _OPTION_LINE.match(line)
        letter = (m.group(1) or m.group(2)) if m else None
        expected = LETTERS[len(options)] if len(options) < len(LETTERS) else None
        if letter is not None and letter == expected and not trailer_lines:
            options.append(m.group(3))
        elif options:
            if line.strip():
                trailer_lines.append(line.strip())
        elif line.strip():
            question_lines.append(line.strip())
    if not options:  # all on one line: "Question? A. x B. y C. z"
        question, options, trailer = _parse_inline_options(" ".join(question_lines))
        question_lines, trailer_lines = [question], [trailer] if trailer else []
    if len(options) < 2:
        raise DataError(
            f"{where}: found {len(options)} lettered options ('A. x', 'A) x' or '(A) x'), "
            "need at least 2"
        )
    if any(not o for o in options):
        raise DataError(f"{where}: option {LETTERS[options.index('')]} has no text")
    question = " ".join(question_lines).strip()
    if not question:
        raise DataError(f"{where}: no question text before the options")
    return question, options, " ".join(trailer_lines)


def _parse_inline_options(text: str) -> tuple[str, list[str], str]:
    """Options written inline; letters must follow each other from A."""
    marks = []
    pos = 0
    for letter in LETTERS:
        m = re.compile(rf"(?:^|\s)(?:\({letter}\)|{letter}[.)])\s+").search(text, pos)
        if not m:
            break
        marks.append(m)
        pos = m.end()
    if len(marks) < 2:
        return text, [], ""
    options = [text[a.end() : b.start()].strip() for a, b in zip(marks, marks[1:])]
    options.append(text[marks[-1].end() :].strip())
    return text[: marks[0].start()].strip(), options, ""


def parse_answer(value: str, options: list[str], where: str) -> int:
    """Gold index from the answer turn: an option's full text, or its letter."""
    if not isinstance(value, str) or not value.strip():
        raise DataError(f"{where}: empty answer turn")
    norm = _norm_text(value)
    for i, opt in enumerate(options):  # text first: "I don't know" must not read as letter I
        if _norm_text(opt) == norm:
            return i
    m = _ANSWER.match(value)
    if m is None:
        raise DataError(f"{where}: answer {value!r} is neither an option letter nor an option text")
    index = LETTERS.index(m.group(1))
    if index >= len(options):
        raise DataError(
            f"{where}: answer letter {m.group(1)} but only {len(options)} options "
            f"(A-{LETTERS[len(options) - 1]})"
        )
    return index


def _turn_index(conv: list, roles: tuple[str, ...], start: int = 0) -> int | None:
    for i in range(start, len(conv)):
        if isinstance(conv[i], dict) and conv[i].get("from") in roles:
            return i
    return None


def _conversation_turns(rec: dict, where: str) -> tuple[str, str]:
    """(question text, answer text): the first human turn and the first answer turn after it."""
    conv = rec.get("conversations")
    if not isinstance(conv, list) or not conv:
        raise DataError(f"{where}: 'conversations' must be a non-empty list of turns")
    human = _turn_index(conv, ("human", "user"))
    if human is None:
        raise DataError(f"{where}: no turn with from='human'")
    answer = _turn_index(conv, ("gpt", "assistant"), start=human + 1)
    if answer is None:
        raise DataError(f"{where}: no answer turn (from='gpt') after the question")
    value = conv[human].get("value")
    if not isinstance(value, str):
        raise DataError(f"{where}: the human turn has no text 'value'")
    return value, conv[answer].get("value")


def parse_llava_record(
    rec,
    index: int,
    path: Path,
    image_root: Path | None,
    idk_text: str,
    gold_mode: str,
    check_images: bool,
) -> dict:
    """Fields of one conversation record; a problem raises DataError naming the record id."""
    rid = rec.get("id") if isinstance(rec, dict) else None
    where = f"{path}: record #{index}" + (f" (id {rid!r})" if rid not in (None, "") else "")
    if not isinstance(rec, dict):
        raise DataError(f"{where}: expected an object, got {type(rec).__name__}")
    if rid in (None, ""):
        raise DataError(f"{where}: missing 'id'")
    image = rec.get("image")
    if not isinstance(image, str) or not image.strip():
        raise DataError(f"{where}: missing 'image'")
    if check_images:
        img_path = Path(image) if image_root is None else Path(image_root) / image
        if not img_path.is_file():
            raise DataError(f"{where}: image file {img_path} does not exist")
    human, answer = _conversation_turns(rec, where)
    question, options, instruction = parse_mc_prompt(human, where)
    file_gold = parse_answer(answer, options, where)
    idk = [i for i, o in enumerate(options) if is_idk_text(o, idk_text)]
    if len(idk) > 1:
        raise DataError(f"{where}: several IDK options {[LETTERS[i] for i in idk]}")
    idk_index = idk[0] if idk else None
    if gold_mode == "idk" and idk_index is None:
        raise DataError(f"{where}: gold='idk' but no option reads like {idk_text!r}")
    gold = idk_index if gold_mode == "idk" else file_gold
    return {
        "id": str(rid),
        "image": image,
        "question": question,
        "options": options,
        "gold": gold,
        "file_gold": file_gold,
        "idk_index": idk_index,
        "instruction": instruction,
    }


def read_llava_conversation_json(
    path: str | Path,
    image_root: str | Path | None,
    dataset: str,
    split: str = "test",
    idk_text: str = IDK_TEXT,
    image_rel: str = "",
    gold: str = "file",
    calib_fraction: float | None = None,
    seed: int = 0,
    check_images: bool = True,
) -> list[MCItem]:
    """Items from a LLaVA-style conversation JSON file (the released IDK format).

    Each record: ``{"id", "image", "conversations": [{"from": "human", "value": "<image>\\n
    Question\\nA. ...\\nB. ..."}, {"from": "gpt", "value": "A"}]}``. Options may be written
    ``A. x``, ``A) x``, ``A: x`` or ``(A) x`` (one per line, or inline). The IDK option is found by
    text (``idk_text`` or "I don't know"/"I do not know", any case) and stored as
    ``metadata['idk_index']``. ``gold="file"`` keeps the file's answer; ``gold="idk"`` makes the IDK
    option the gold (the reference study's reading of after-cutoff questions) and keeps the file's
    answer as ``metadata['file_answer_index']``. With ``calib_fraction`` the items are split into
    calib/test by image; otherwise all get ``split``.
    """
    if gold not in ("file", "idk"):
        raise ConfigError(f"gold must be 'file' or 'idk', not {gold!r}")
    path = Path(path)
    if not path.is_file():
        raise DataError(f"IDK conversation file {path} does not exist")
    data = _read_json(path)
    if not isinstance(data, list):
        raise DataError(f"{path}: expected a JSON list of records, got {type(data).__name__}")
    root = None if image_root is None else Path(image_root)
    parsed = [
        parse_llava_record(rec, i, path, root, idk_text, gold, check_images)
        for i, rec in enumerate(data)
    ]
    _check_unique_ids([p["id"] for p in parsed], str(path))
    items = [_llava_item(p, dataset, split, image_rel, idk_text, path) for p in parsed]
    if calib_fraction is not None:
        assign_calib_test(items, calib_fraction, seed)
    for it in items:
        it.validate(f"{path}: ")
    return items


def _llava_item(p: dict, dataset, split, image_rel, idk_text, path: Path) -> MCItem:
    unknowable = p["idk_index"] is not None and p["gold"] == p["idk_index"]
    return MCItem(
        item_id=f"{dataset}-{p['id']}",
        cluster_id=f"{dataset}:{p['image']}",  # items sharing an image share a cluster
        question=p["question"],
        options=p["options"],
        gold=p["gold"],
        split=split,
        source=f"{path.name}#{p['id']}",
        image=f"{image_rel}/{p['image']}" if image_rel else p["image"],
        metadata={
            "kind": "unknowable" if unknowable else "answerable",
            "answerable": not unknowable,
            "idk_index": p["idk_index"],
            "idk_text": idk_text,
            "file_answer_index": p["file_gold"],
            "instruction": p["instruction"],
            "record_id": p["id"],
        },
    )
