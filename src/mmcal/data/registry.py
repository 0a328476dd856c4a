"""Build a configured data set and write items + manifest.

Builders are registered by name (the config's ``datasets.<name>.builder``): a builder module
decorates one function with ``@register("<builder>")``. Every builder has one signature::

    builder(name, cfg, out_dir, context) -> list[MCItem] | tuple[list[MCItem], dict]

``name``: the data set's name (item ids start with it); ``cfg``: its ``datasets.<name>`` entry;
``out_dir``: the folder of its items file (images go below it); ``context``: what the study shares
with every builder (:class:`BuildContext`). A builder that excludes rows also returns a report,
stored in the manifest as ``build_report``.
"""

from __future__ import annotations

import importlib
import json
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from mmcal.data.release_layout import LAYOUT_KEYS, inspect_release
from mmcal.errors import ConfigError
from mmcal.items import MCItem, write_items


@dataclass(frozen=True)
class BuildContext:
    """Study-wide settings a builder may need besides its own config entry."""

    classes: dict  # the config's ``classes``: known / idk_train / idk_test Fashion-MNIST indices
    fmnist_root: str  # default Fashion-MNIST folder (a data set's ``root`` overrides it)
    seed: int


Built = list[MCItem] | tuple[list[MCItem], dict]
Builder = Callable[[str, dict, Path, BuildContext], Built]

# Modules whose import registers builders; adding a builder = a module here + ``@register``.
BUILDER_MODULES = (
    "mmcal.data.fashion_mnist",
    "mmcal.data.text_mcq",
    "mmcal.data.hub_mcq",
    "mmcal.data.idk.fmnist",
    "mmcal.data.idk.llava_json",
    "mmcal.data.idk.dated_news",
    "mmcal.data.jsonl",
)

_BUILDERS: dict[str, Builder] = {}


def register(builder_name: str) -> Callable[[Builder], Builder]:
    """Decorator: make ``fn`` the builder for ``builder: <builder_name>`` in the config."""

    def add(fn: Builder) -> Builder:
        if builder_name in _BUILDERS and _BUILDERS[builder_name] is not fn:
            raise ValueError(
                f"builder {builder_name!r} registered twice ({_BUILDERS[builder_name].__module__}, {fn.__module__})"
            )
        _BUILDERS[builder_name] = fn
        return fn

    return add


def builders() -> dict[str, Builder]:
    """Every registered builder by name (importing the builder modules registers them)."""
    for module in BUILDER_MODULES:
        importlib.import_module(module)
    return dict(sorted(_BUILDERS.items()))


def require(cfg: dict, key: str, name: str):
    """``cfg[key]``, or a ConfigError naming the data set, its builder and the missing key."""
    if cfg.get(key) in (None, ""):
        raise ConfigError(f"data set {name!r} (builder {cfg.get('builder')!r}) needs the key {key!r}")
    return cfg[key]


def release_folder(name: str, cfg: dict) -> str | None:
    """The folder of a data set's ``release`` (None without one): its local ``path`` (local mode), else
    ``data/downloads/<name>`` where the ``download_release`` rule puts the hub snapshot."""
    release = cfg.get("release")
    if not release:
        return None
    if bool(release.get("path")) == bool(release.get("repo")):
        raise ConfigError(f"data set {name!r}: release needs exactly one of 'repo' (hub) and 'path' (local folder)")
    return str(release["path"]) if release.get("path") else f"data/downloads/{name}"


def release_record(name: str) -> str:
    """The file in which the release rules record what a data set's release resolved to."""
    return f"data/downloads/{name}.resolved.json"


def release_inputs(name: str, cfg: dict) -> dict[str, str]:
    """The job inputs of a data set's build: its release folder and record, or, without ``release``, the
    released file of a ``llava_json`` / ``dated_news`` set (the user makes it), so a missing release
    shows when planning."""
    folder = release_folder(name, cfg)
    if folder is not None:
        return {"release": folder, "release_record": release_record(name)}
    path = str(cfg.get("path") or "")
    if cfg.get("builder") in ("llava_json", "dated_news") and path and not path.startswith("hf:"):
        return {"release": path}
    if cfg.get("builder") == "jsonl" and path:
        from mmcal.data.jsonl import jsonl_inputs

        return {"release": jsonl_inputs(cfg)}  # the file and its images: an edit of either rebuilds the set
    return {}


def with_release_paths(name: str, cfg: dict) -> dict:
    """``cfg`` with its ``path`` / ``image_root`` taken relative to the release folder (when it has one)."""
    folder = release_folder(name, cfg)
    if folder is None:
        return cfg
    return {**cfg, **{k: str(Path(folder) / cfg[k]) for k in ("path", "image_root") if cfg.get(k)}}


def build_items(name: str, cfg: dict, out_dir: Path, context: BuildContext) -> Built:
    """Items of the configured builder; some builders also return a report of excluded rows."""
    known = builders()
    builder = cfg.get("builder")
    if builder not in known:
        raise ConfigError(f"data set {name!r}: unknown builder {builder!r}; known builders: {', '.join(known)}")
    folder = release_folder(name, cfg)
    if folder is not None:  # the configured file names must be the release's own (else: what it holds)
        inspect_release(name, folder, release_layout(cfg))
    return known[builder](name, with_release_paths(name, cfg), out_dir, context)


def release_layout(cfg: dict) -> dict:
    """The keys of a data set entry that name things inside its release folder."""
    return {k: cfg.get(k) for k in LAYOUT_KEYS}


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


def build_dataset(name: str, cfg: dict, items_path: str, manifest_path: str, context: BuildContext) -> dict:
    """Build data set ``name``, write its items and manifest; return the manifest."""
    built = build_items(name, cfg, Path(items_path).parent, context)
    items, report = built if isinstance(built, tuple) else (built, None)
    content_hash = write_items(items, items_path)
    info = manifest(items, content_hash, cfg)
    if report is not None:
        info["build_report"] = report
    Path(manifest_path).write_text(json.dumps(info, indent=2, sort_keys=True))
    return info
