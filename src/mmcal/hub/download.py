"""Which hub models and data sets a study reads, and fetching them once, before any job that needs them.

The ``download`` rule runs on a machine with the network (a ``localrules:`` rule: the login node of a
cluster) and writes :data:`RESOLVED`; every job that reads a hub source takes that file as input, so
compute nodes then run offline (``offline:`` in the config) from the HF cache.

A source is a model (``models.<name>.path`` not built by the DAG, a ``build:`` model's ``sources``, the
captioner describer's model) or a data set (``datasets.<name>.hub``) that a job of the study reads. Each
is resolved in one of two ways:

- hub: ``huggingface_hub.snapshot_download`` at the pinned ``revision`` (models) or
  ``datasets.load_dataset`` (data sets), recording the resolved commit and the files;
- local mode (the source is a local folder, or the config says ``offline: true``): nothing goes to the
  network; the record holds the folder's content hash (:mod:`mmcal.hashing`), which is what the replica
  study runs.

A data set's ``release`` (a hub repository of files, e.g. the IDK set's July24-NewsVQA) is fetched by its
own rule (:func:`download_release`) into ``data/downloads/<data set>/``, the folder its build job reads.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import re
import shutil
import time
from pathlib import Path

from mmcal import hashing, plan
from mmcal.atomic import write_text_atomically
from mmcal.data.registry import release_folder
from mmcal.data.release_layout import inspect_release
from mmcal.errors import ConfigError, DataError
from mmcal.hub import qwen_font

RESOLVED = "data/downloads/resolved.json"
log = logging.getLogger(__name__)
# owner/name: anything else (a relative or absolute path) is a local folder
_HUB_ID = re.compile(r"^[A-Za-z0-9][\w.-]*/[\w.-]+$")
# weight formats no loader of the study reads: a repo shipping TF/Flax/ONNX copies would triple the download
IGNORE_PATTERNS = ["*.h5", "*.msgpack", "*.onnx", "*.ot", "*.tflite", "onnx/*", "openvino/*", "coreml/*"]


def is_local(path: str) -> bool:
    """A path names a local folder unless it has the hub's ``owner/name`` shape and no such folder exists."""
    return Path(path).exists() or not _HUB_ID.match(path)


def _model_source(key: str, entry: dict) -> dict:
    if not entry.get("path"):
        raise ConfigError(f"{key}: needs a 'path' (hub id or local folder)")
    return {"key": key, "type": "model", "path": entry["path"], "revision": entry.get("revision")}


def sources(config: dict) -> list[dict]:
    """Every hub model and data set the study's jobs read, in a stable order, without duplicates."""
    out: dict[str, dict] = {}
    runs = plan.expand_runs(config)
    for name in dict.fromkeys(r["model"] for r in runs):
        mcfg = config["models"][name]
        if mcfg.get("build") in plan.HUB_BUILDS:
            for role, entry in (mcfg.get("sources") or {}).items():
                key = f"models.{name}.sources.{role}"
                out[key] = _model_source(key, entry)
        elif not mcfg.get("build"):
            out[f"models.{name}"] = _model_source(f"models.{name}", mcfg)
    paraphraser = (config.get("promptopt") or {}).get("paraphraser") or {}
    if (config.get("promptopt") or {}).get("enabled", True) and paraphraser.get("kind") == "hf":
        source = _model_source("promptopt.paraphraser", {"path": paraphraser.get("model"), **paraphraser})
        if not is_local(source["path"]):
            out["promptopt.paraphraser"] = source
    describer = config.get("describer") or {}
    if describer.get("kind") == "captioner" and any(
        plan.scenario_needs_descriptions(config, r["scenario"]) for r in runs
    ):
        out["describer"] = _model_source("describer", {"path": describer.get("model"), **describer})
    for name in dict.fromkeys(r["dataset"] for r in runs):
        hub = config["datasets"][name].get("hub")
        if hub:
            key = f"datasets.{name}"
            out[key] = {
                "key": key,
                "type": "dataset",
                "path": hub["path"],
                "name": hub.get("name"),
                "split": hub.get("split", "test"),
                "revision": hub.get("revision"),
            }
    return list(out.values())


def _local_record(source: dict, folder: Path) -> dict:
    return {
        **source,
        "mode": "local",
        "folder": str(folder),
        "commit": folder.name if re.fullmatch(r"[0-9a-f]{40}", folder.name) else None,
        "sha256": hashing.tree_sha256(folder),
        "files": [f.relative_to(folder).as_posix() for f in hashing.tree_files(folder)],
    }


# Waits (seconds) before each retry of a transient hub failure: a 5xx or 429 answer, a connection refused or cut
# half way (huggingface_hub itself resumes a cut file a few times, then gives up), a timeout. Anything else (a
# missing repository or revision, a gated repository, offline mode) fails at once.
RETRY_WAITS_S = (2.0, 8.0, 30.0)
_TRANSIENT_TYPES = {"TransportError", "TimeoutException", "ConnectionError", "TimeoutError"}


def _causes(exc: BaseException):
    seen = set()
    while exc is not None and id(exc) not in seen:
        seen.add(id(exc))
        yield exc
        exc = exc.__cause__ or (None if exc.__suppress_context__ else exc.__context__)


def is_transient(exc: BaseException) -> bool:
    """A failure that may go away when asked again (the exception or anything that caused it)."""
    for e in _causes(exc):
        status = getattr(getattr(e, "response", None), "status_code", None)
        if isinstance(status, int) and (status >= 500 or status == 429):
            return True
        if any(t.__name__ in _TRANSIENT_TYPES for t in type(e).__mro__):
            return True
    return False


def _hub_endpoint() -> str:
    from huggingface_hub import constants

    return constants.ENDPOINT


def _with_retries(source: dict, fetch, what: str):
    """``fetch()`` with the waits of :data:`RETRY_WAITS_S` between tries while it fails transiently; then an
    error naming the source (its config key, repository and revision) and the endpoint."""
    attempts = len(RETRY_WAITS_S) + 1
    for attempt in range(1, attempts + 1):
        try:
            return fetch()
        except Exception as exc:  # huggingface_hub / datasets raise many types; is_transient sorts them
            if not is_transient(exc):
                raise
            name = f"{source['key']}: {source['path']}@{source.get('revision') or 'main'}"
            if attempt == attempts:
                raise DataError(
                    f"{name}: {what} from {_hub_endpoint()} failed {attempts} times (transient errors, retried "
                    f"after {', '.join(f'{w:g}' for w in RETRY_WAITS_S)} s); last: {type(exc).__name__}: {exc}"
                ) from exc
            wait = RETRY_WAITS_S[attempt - 1]
            log.warning("%s: %s failed (%s: %s); retry %d in %g s", name, what, type(exc).__name__, exc, attempt, wait)
            time.sleep(wait)


def _snapshot(source: dict, local_only: bool) -> Path:
    from huggingface_hub import snapshot_download

    repo_type = "dataset" if source["type"] == "dataset" else "model"

    def fetch() -> Path:
        return Path(
            snapshot_download(
                source["path"],
                repo_type=repo_type,
                revision=source["revision"],
                local_files_only=local_only,
                ignore_patterns=IGNORE_PATTERNS,
            )
        )

    try:
        return fetch() if local_only else _with_retries(source, fetch, "download")
    except DataError:
        raise
    except Exception as exc:  # huggingface_hub raises several types (offline, missing revision, gated repo)
        where = (
            "in the HF cache (offline: run the download rule where the hub is reachable)"
            if local_only
            else f"on the hub ({_hub_endpoint()})"
        )
        raise DataError(
            f"{source['key']}: {source['path']}@{source['revision'] or 'main'} not found {where}: {exc}"
        ) from exc


def _dataset_record(source: dict, offline: bool) -> dict:
    """Prepare the data set in the ``datasets`` cache exactly as its builder will load it (same path,
    name, split, revision), so the build job then finds it offline."""
    import datasets

    def fetch():
        return datasets.load_dataset(source["path"], source["name"], split=source["split"], revision=source["revision"])

    try:
        ds = fetch() if offline else _with_retries(source, fetch, "loading the data set")
    except DataError:
        raise
    except Exception as exc:  # the datasets library raises many types for a missing repo/config/split/cache
        raise DataError(
            f"{source['key']}: cannot load {source['path']} ({source['name']}, {source['split']}): {exc}"
        ) from exc
    cache_files = [Path(f["filename"]) for f in ds.cache_files]
    record = {**source, "mode": "local" if offline else "hub", "rows": len(ds), "files": [f.name for f in cache_files]}
    if offline:
        h = hashlib.sha256()
        for f in cache_files:
            h.update(f"{f.name}\0{hashing.file_sha256(f)}\n".encode())
        record.update(commit=None, sha256=h.hexdigest())
    else:
        from huggingface_hub import HfApi

        record["commit"] = HfApi().dataset_info(source["path"], revision=source["revision"]).sha
    return record


def resolve(source: dict, offline: bool) -> dict:
    """Fetch one source (or find it locally) and describe what was found."""
    if is_local(source["path"]):
        folder = Path(source["path"])
        if not folder.is_dir():
            raise DataError(f"{source['key']}: local folder {folder} does not exist")
        return _with_qwen_font(_local_record(source, folder), offline)
    if source["type"] == "dataset":
        return _dataset_record(source, offline)
    folder = _snapshot(source, local_only=offline)
    if offline:
        return _with_qwen_font(_local_record(source, folder), offline)
    record = {
        **source,
        "mode": "hub",
        "folder": str(folder),
        "commit": folder.name,  # snapshot folders are named by the commit they hold
        "files": [f.relative_to(folder).as_posix() for f in hashing.tree_files(folder)],
    }
    return _with_qwen_font(record, offline)


def _with_qwen_font(record: dict, offline: bool) -> dict:
    """A model whose (Qwen-VL-Chat) tokenizer fetches SimSun.ttf when imported: the font too, where that tokenizer
    looks it up (:mod:`mmcal.hub.qwen_font`), so that jobs load it offline."""
    tokenizer = Path(record["folder"]) / qwen_font.TOKENIZER_FILE
    if record["type"] == "model" and tokenizer.is_file() and qwen_font.fetches_font_on_import(tokenizer):
        record["font"] = qwen_font.ensure_font(offline)
    return record


def _check_pin(rec: dict) -> None:
    rev = rec.get("revision")
    if rec.get("commit") and rev and re.fullmatch(r"[0-9a-f]{40}", rev) and rec["commit"] != rev:
        raise DataError(f"{rec['key']}: pinned revision {rev} resolved to commit {rec['commit']}")


def download_all(study_sources: list[dict], offline: bool, out_path: str | Path) -> dict:
    """Resolve every source (:func:`sources`) and write ``out_path`` (JSON: key → record)."""
    resolved = {s["key"]: resolve(s, offline) for s in study_sources}
    for rec in resolved.values():
        _check_pin(rec)
    write_text_atomically(out_path, json.dumps(resolved, indent=2, sort_keys=True) + "\n", "download record")
    return resolved


def releases(config: dict) -> dict[str, dict]:
    """The ``release`` entry of every data set a run reads, by data-set name."""
    out = {}
    for name in dict.fromkeys(r["dataset"] for r in plan.expand_runs(config)):
        cfg = config["datasets"][name]
        if release_folder(name, cfg) is not None:  # also checks the entry's shape
            out[name] = cfg["release"]
    return out


def _link_tree(snapshot: Path, out_dir: Path) -> None:
    """The snapshot's files under ``out_dir``: hard links to the cache's blobs (no second copy of a large
    release) where the file system allows, else copies."""
    for f in hashing.tree_files(snapshot):
        target = out_dir / f.relative_to(snapshot)
        target.parent.mkdir(parents=True, exist_ok=True)
        blob = f.resolve()  # cache snapshots hold symlinks to blobs
        try:
            os.link(blob, target)
        except OSError:
            shutil.copy2(blob, target)


def download_release(
    name: str,
    release: dict,
    offline: bool,
    out_dir: str | Path | None,
    record_path: str | Path,
    layout: dict | None = None,
) -> dict:
    """Fetch data set ``name``'s release and write its record (JSON) to ``record_path``.

    Hub (``release: {repo, revision, repo_type}``): the snapshot at ``revision`` goes to the HF cache
    (from the cache only when ``offline``) and its files to ``out_dir``; the record holds the resolved
    commit and the files' content hash. Local (``release: {path}``, ``out_dir`` unused): nothing is
    fetched, copied or linked; the record holds the folder's content hash. ``layout`` (the data set's
    ``path`` / ``image_root``) is then checked against what the release holds, which the record lists."""
    key = f"datasets.{name}.release"
    if release.get("path"):
        folder = Path(release["path"])
        if not folder.is_dir():
            raise DataError(f"{key}: local folder {folder} does not exist")
        record = _local_record({"key": key, "type": "dataset", "path": str(folder), "revision": None}, folder)
    else:
        repo_type = release.get("repo_type", "dataset")
        if repo_type not in ("dataset", "model"):
            raise ConfigError(f"{key}: repo_type must be 'dataset' or 'model', not {repo_type!r}")
        source = {"key": key, "type": repo_type, "path": release["repo"], "revision": release.get("revision")}
        if out_dir is None:
            raise ValueError(f"{key}: a hub release needs the folder to put it in")
        snapshot = _snapshot(source, local_only=offline)
        out_dir = Path(out_dir)
        _link_tree(snapshot, out_dir)
        record = {
            **source,
            "mode": "local" if offline else "hub",
            "folder": str(out_dir),
            "commit": snapshot.name,  # snapshot folders are named by the commit they hold
            "sha256": hashing.tree_sha256(out_dir),
            "files": [f.relative_to(out_dir).as_posix() for f in hashing.tree_files(out_dir)],
        }
        _check_pin(record)
    record["contents"] = inspect_release(name, record["folder"], layout or {})
    write_text_atomically(record_path, json.dumps(record, indent=2, sort_keys=True) + "\n", "release record")
    return record


def read_resolved(path: str | Path) -> dict:
    try:
        return json.loads(Path(path).read_text())
    except (OSError, ValueError) as exc:
        raise DataError(f"{path}: cannot read the download rule's record: {exc}") from exc
