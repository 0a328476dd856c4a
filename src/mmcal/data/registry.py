"""Build a configured data set (dispatch on ``builder``) and write items + manifest."""

from __future__ import annotations

import json
import os
from collections import Counter
from pathlib import Path

from mmcal.errors import ConfigError
from mmcal.items import MCItem, write_items


def manifest(items: list[MCItem], content_hash: str, cfg: dict) -> dict:
    """Counts per split, per class/kind, gold position, and the items' content hash."""
    by_split = Counter(it.split for it in items)
    by_class = Counter((it.split, str(it.metadata.get("class", it.metadata.get("kind", "-")))) for it in items)
    by_kind = Counter((it.split, str(it.metadata.get("kind", "-"))) for it in items)
    by_gold = Counter((it.split, it.gold) for it in items)
    return {
        "n_items": len(items),
        "per_split": dict(sorted(by_split.items())),
        "per_split_class": {f"{s}/{c}": n for (s, c), n in sorted(by_class.items())},
        "per_split_kind": {f"{s}/{k}": n for (s, k), n in sorted(by_kind.items())},
        "per_split_gold_position": {f"{s}/{g}": n for (s, g), n in sorted(by_gold.items())},
        "n_clusters": len({it.cluster_id for it in items}),
        "sha256": content_hash,
        "config": cfg,
    }


def build_items(name: str, cfg: dict, out_dir: Path, classes: dict, fmnist_root: str, seed: int):
    """Items of the configured builder; some builders also return a report of excluded rows."""
    builder = cfg["builder"]
    n_options = int(cfg.get("n_options", 4))
    splits = cfg.get("splits") or {}
    if builder == "fashion_mnist":
        from mmcal.data.fashion_mnist import build_fashion_mnist_items

        return build_fashion_mnist_items(
            cfg.get("root", fmnist_root), out_dir / "images", "images", splits,
            n_options=n_options, classes=classes["known"], seed=seed, dataset=name,
        )
    if builder == "text_mcq":
        from mmcal.data.text_mcq import build_text_mcq_items

        return build_text_mcq_items(
            n_calib=int(splits.get("calib", 0)), n_test=int(splits.get("test", 0)),
            n_options=n_options, seed=seed, dataset=name,
        )
    if builder == "fmnist_idk":
        from mmcal.data.idk import build_fmnist_idk_items

        return build_fmnist_idk_items(
            cfg.get("root", fmnist_root), out_dir / "images", "images",
            held_out_classes=classes["idk_test"], known_classes=classes["known"],
            n_per_kind=cfg.get("n_per_kind") or {}, n_options=n_options,
            idk_text=cfg.get("idk_text", "I don't know"),
            idk_position=cfg.get("idk_position", "last"),
            calib_fraction=float(cfg.get("calib_fraction", 0.3)), seed=seed, dataset=name,
        )
    if builder == "llava_json":
        from mmcal.data.idk import read_llava_conversation_json

        image_root = cfg.get("image_root", str(Path(cfg["path"]).parent))
        return read_llava_conversation_json(
            cfg["path"], image_root, dataset=name, split=cfg.get("split", "test"),
            idk_text=cfg.get("idk_text", "I don't know"), image_rel=os.path.relpath(image_root, out_dir),
            calib_fraction=cfg.get("calib_fraction"), seed=seed,
        )
    if builder == "dated_news":
        from mmcal.data.idk import build_dated_news_idk, load_news_records

        path = Path(cfg["path"])
        image_root = cfg.get("image_root", str(path.parent))
        return build_dated_news_idk(
            load_news_records(str(path)), cfg["cutoff"], image_root=image_root,
            image_rel=os.path.relpath(image_root, out_dir), n_options=n_options, seed=seed, idk_text=cfg.get("idk_text", "I don't know"),
            gold=cfg.get("gold", "idk"), dataset=name,
        )
    if builder == "hub_mcq":
        from mmcal.data.hub_mcq import build_hub_mcq_items

        return build_hub_mcq_items(name, cfg, out_dir, seed=seed)
    if builder == "jsonl":
        from mmcal.items import read_items

        return read_items(cfg["path"])
    raise ConfigError(f"data set {name!r}: builder {builder!r} is not available in this workflow")


def build_dataset(name: str, cfg: dict, items_path: str, manifest_path: str, classes: dict,
                  fmnist_root: str, seed: int) -> dict:
    out_dir = Path(items_path).parent
    built = build_items(name, cfg, out_dir, classes, fmnist_root, seed)
    items, report = built if isinstance(built, tuple) else (built, None)
    content_hash = write_items(items, items_path)
    info = manifest(items, content_hash, cfg)
    if report is not None:
        info["build_report"] = report
    Path(manifest_path).write_text(json.dumps(info, indent=2, sort_keys=True))
    return info
