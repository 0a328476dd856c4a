"""What the IDK builders share: the IDK option, its placement, the calib/test split, manifests.

Every IDK item carries an explicit IDK ("I don't know") option and, in ``metadata``:

- ``kind``: what sort of item it is (each builder names its kinds);
- ``answerable``: whether a correct non-IDK answer is knowable (False: the gold is the IDK option);
- ``idk_index``: the IDK option's index (``None`` only for released files that have none).

Items are split into ``calib`` / ``test`` at cluster level so prompts can be tuned on ``calib``.

Released files (``llava_json``, ``dated_news``) are read record by record: a malformed record (no
image named, a conversation without an answer turn, a date that does not parse) is rejected with
its reason in the build report instead of aborting the build, which fails only with ``strict`` or
when the rejected share exceeds ``max_rejected`` (:func:`screen_records`). A record whose image file
is absent stays an item marked ``metadata['unscorable']`` (the reference study skips such items;
scoring records them as "image missing"), listed in the report (:func:`missing_image_report`).
"""

from __future__ import annotations

import json
import re
from collections import Counter
from pathlib import Path
from typing import Iterable

import numpy as np

from mmcal import LETTERS
from mmcal.errors import ConfigError, DataError
from mmcal.items import MCItem

IDK_TEXT = "I don't know"
# Phrasings recognised as the IDK option in released files (compared after normalisation).
IDK_PHRASES = ("i don't know", "i do not know", "i dont know")
# Default share of a released file's records that may be rejected before its build fails.
MAX_REJECTED = 0.05


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
        "answerable_gold_position_counts": _letter_counts(it.gold for it in items if it.metadata.get("answerable")),
    }


def _letter_counts(indices) -> dict[str, int]:
    counts = Counter(LETTERS[i] if isinstance(i, int) else "none" for i in indices)
    return dict(sorted(counts.items()))


def norm_text(text: str) -> str:
    """Lower-case, straight apostrophes, single spaces, no trailing punctuation."""
    text = text.replace("\u2019", "'").replace("\u2018", "'").lower()
    return re.sub(r"\s+", " ", text).strip().rstrip(".!?").strip()


def is_idk_text(text: str, idk_text: str = IDK_TEXT) -> bool:
    return norm_text(text) in {norm_text(idk_text), *IDK_PHRASES}


def check_unique_ids(ids: list[str], what: str) -> None:
    dupes = sorted(k for k, v in Counter(ids).items() if v > 1)
    if dupes:
        raise DataError(f"{what}: duplicate ids {dupes[:10]}")


def read_json(path: Path):
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as exc:
        raise DataError(f"{path}: not valid JSON ({exc.msg}, line {exc.lineno})") from None


def record_where(prefix: str, index: int, record_id) -> str:
    """How errors name a record: ``<prefix> #<index>`` plus its id when it has one."""
    return f"{prefix} #{index}" + (f" (id {record_id!r})" if record_id not in (None, "") else "")


class RejectedRecord(DataError):
    """One malformed record: its index, id (None when it has none) and what is wrong with it."""

    def __init__(self, where: str, index: int, record_id, reason: str):
        super().__init__(f"{where}: {reason}")
        self.index, self.record_id, self.reason = index, record_id, reason

    @classmethod
    def from_error(cls, exc: DataError, where: str, index: int, record_id) -> RejectedRecord:
        """Wrap a parser's ``DataError("<where>: <reason>")``; the reason is kept without ``where``."""
        record_id = None if record_id in (None, "") else str(record_id)
        return cls(where, index, record_id, str(exc).removeprefix(f"{where}: "))


def screen_records(records: list, parse, what: str, strict: bool = False, max_rejected: float = MAX_REJECTED):
    """``(parsed, report)``: ``parse(record, index)`` of every record that parses; each record whose
    ``parse`` raises :class:`RejectedRecord` is left out and listed in ``report['rejected']``.

    Fails (a DataError listing the rejected records) with ``strict`` and any rejection, or when the
    rejected share of the records exceeds ``max_rejected``: a release with a few broken records stays
    usable, one that is mostly broken (wrong format, wrong image folder) does not pass silently.
    """
    if not (0.0 <= max_rejected <= 1.0):
        raise ConfigError(f"{what}: max_rejected must be in [0, 1], not {max_rejected}")
    parsed, rejected = [], []
    for index, record in enumerate(records):
        try:
            parsed.append(parse(record, index))
        except RejectedRecord as exc:
            rejected.append({"index": exc.index, "id": exc.record_id, "reason": exc.reason})
    share = len(rejected) / len(records) if records else 0.0
    report = {
        "n_records": len(records),
        "n_rejected": len(rejected),
        "rejected_share": share,
        "rejected": rejected,
    }
    if rejected and (strict or share > max_rejected):
        why = "strict: true" if strict else f"{share:.1%} of {len(records)} records, above max_rejected {max_rejected}"
        listed = "; ".join(f"{record_where('record', r['index'], r['id'])}: {r['reason']}" for r in rejected[:10])
        more = f"; ... and {len(rejected) - 10} more" if len(rejected) > 10 else ""
        raise DataError(f"{what}: {len(rejected)} malformed record(s) rejected ({why}): {listed}{more}")
    return parsed, report


def missing_image_report(parsed: list[dict], what) -> dict:
    """The records kept without their image file (``index``, ``id``, ``image_missing`` keys): listed
    and counted; a DataError when every record's image is missing (the image folder is wrong)."""
    missing = [{"index": p["index"], "id": p["id"], "path": p["image_missing"]} for p in parsed if p["image_missing"]]
    if parsed and len(missing) == len(parsed):
        raise DataError(
            f"{what}: none of the {len(parsed)} images exists (first: {missing[0]['path']}); check image_root"
        )
    return {"n_missing_images": len(missing), "missing_images": missing}


def require_unknowable(items: list[MCItem], name: str, builder: str, source=None) -> None:
    """An IDK set without unknowable items would give NaN for every IDK rate: refuse to build it,
    naming the data set and its ``source`` file."""
    what = f"IDK data set {name!r} (builder {builder}" + (f", file {source}" if source is not None else "") + ")"
    if not items:
        raise DataError(f"{what}: no items")
    if not any(it.metadata.get("answerable") is False for it in items):
        raise DataError(
            f"{what}: none of its {len(items)} items is unknowable "
            "(every gold is a real answer, not the IDK option), so every IDK rate would be NaN; "
            "check the release's answers and the entry's `gold`"
        )
