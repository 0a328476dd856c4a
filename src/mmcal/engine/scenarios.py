"""Scenarios: controlled changes to how the same item is asked.

A scenario is configuration (``config.yaml: scenarios``) with keys
``image`` (show the image), ``description`` (``null`` | ``consistent`` | ``conflicting``: put a
text description of the image in the prompt), ``option_shift`` (rotate the options cyclically by k
positions, for letter-position bias).

Option order on items with different numbers of options (ScienceQA: 2-5). Shift k applied to an
n-option item is rotation ``k mod n``: an item has exactly n distinct orders, rotations 0..n-1, and
scenarios ``option_shift`` 0..K reach all of them for every item with n <= K + 1 (the default
study's 4-option items: shifts 0-3 are its 4 rotations). A shift beyond n repeats one of the item's
rotations, so the permutation average (:func:`rotation_rows`) takes each rotation once, and only
for items seen under all n of them.
"""

from __future__ import annotations

from dataclasses import dataclass, replace

from mmcal.errors import ConfigError
from mmcal.items import MCItem

DESCRIPTION_MODES = (None, "consistent", "conflicting")


@dataclass(frozen=True)
class Scenario:
    name: str = "image"
    image: bool = True
    description: str | None = None
    option_shift: int = 0


def scenario_from_config(name: str, cfg: dict | None) -> Scenario:
    cfg = dict(cfg or {})
    cfg.pop("label", None)
    cfg.pop("doc", None)
    unknown = set(cfg) - {"image", "description", "option_shift"}
    if unknown:
        raise ConfigError(f"scenario {name!r}: unknown keys {sorted(unknown)}")
    if cfg.get("description") not in DESCRIPTION_MODES:
        raise ConfigError(
            f"scenario {name!r}: description must be one of {DESCRIPTION_MODES}, not {cfg.get('description')!r}"
        )
    return Scenario(name=name, **cfg)


def rotation(k: int, n_options: int) -> int:
    """The rotation that shift ``k`` makes of an ``n_options``-option item: ``k mod n``."""
    if n_options < 1:
        raise ValueError(f"an item with {n_options} options has no rotations")
    return int(k) % int(n_options)


def rotation_rows(shifts, n_options: int) -> list[int] | None:
    """Which of an item's rows make its permutation average: the first row of each of its
    ``n_options`` rotations (``shifts[j]`` is row j's option shift), in rotation order; None when
    some rotation is missing (the item is not seen in all of its orders)."""
    first: dict[int, int] = {}
    for j, k in enumerate(shifts):
        first.setdefault(rotation(k, n_options), j)
    if len(first) < n_options:
        return None
    return [first[r] for r in range(n_options)]


def shift_options(item: MCItem, k: int) -> MCItem:
    """Rotate options by k positions (option i moves to (i + k) mod n); gold follows."""
    n = len(item.options)
    if n == 0 or k == 0:
        return item
    k = rotation(k, n)
    if k == 0:  # a shift that is a multiple of n: the item's own order, marked as rotation 0
        return replace(item, metadata={**item.metadata, "option_shift": 0})
    options = item.options[-k:] + item.options[:-k]
    meta = dict(item.metadata)
    meta["option_shift"] = k
    # Option-indexed metadata (e.g. the IDK option's index) moves with the options.
    if "idk_index" in meta and meta["idk_index"] is not None:
        meta["idk_index"] = (int(meta["idk_index"]) + k) % n
    return replace(item, options=options, gold=(item.gold + k) % n, metadata=meta)


def description_for(scenario: Scenario, item: MCItem, descriptions: dict | None) -> str | None:
    if scenario.description is None:
        return None
    if descriptions is None or item.item_id not in descriptions:
        raise ConfigError(
            f"scenario {scenario.name!r} needs a description of item {item.item_id!r}, "
            "but the descriptions file has none"
        )
    return descriptions[item.item_id][scenario.description]
