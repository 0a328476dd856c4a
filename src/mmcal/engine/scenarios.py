"""Scenarios: controlled changes to how the same item is asked.

A scenario is configuration (``config.yaml: scenarios``) with keys
``image`` (show the image), ``description`` (``null`` | ``consistent`` | ``conflicting``: put a
text description of the image in the prompt), ``option_shift`` (rotate the options cyclically by k
positions, for letter-position bias).
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


def shift_options(item: MCItem, k: int) -> MCItem:
    """Rotate options by k positions (option i moves to (i + k) mod n); gold follows."""
    n = len(item.options)
    if n == 0 or k % n == 0:
        return item
    k %= n
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
