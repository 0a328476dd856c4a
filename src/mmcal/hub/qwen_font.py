"""The font that Qwen-VL-Chat's remote tokenizer fetches when it is imported.

Later revisions of Qwen-VL-Chat's ``tokenization_qwen.py`` (those on the hub, QwenLM/Qwen-VL#319; not the GitHub
upload x1ngzai/Qwen-VL-Chat-Int4@1cd721a2, which looks the font up only when it draws) run this when the module is
imported: look ``SimSun.ttf`` up in the HF cache as a file of ``Qwen/Qwen-VL-Chat`` at revision ``main``; if it is
not cached, use ``./SimSun.ttf`` in the current directory, downloading it there first with ``requests`` from
Alibaba's server when absent. The font only draws boxes on pictures, which scoring never does, yet:

- offline (compute nodes) that download fails, and with it the tokenizer (``AutoTokenizer.from_pretrained``);
- online it writes ``SimSun.ttf`` into the job's working directory;
- the study's download rule fetches the model at its pinned commit, which records no ``refs/main``: the lookup
  misses even the font of the model's own snapshot.

So the download rule also fetches ``Qwen/Qwen-VL-Chat``'s ``SimSun.ttf`` at ``main`` into the HF cache, exactly
where that lookup looks (:func:`ensure_font`), and the adapter checks, before the tokenizer loads, that the lookup
will succeed (:func:`check_font`), failing with what to do instead of a connection error inside remote code.
"""

from __future__ import annotations

import ast
import hashlib
import os
from pathlib import Path

from mmcal.errors import DataError

FONT_REPO = "Qwen/Qwen-VL-Chat"  # the tokenizer looks the font up here, whatever repository it came from
FONT_FILE = "SimSun.ttf"
TOKENIZER_FILE = "tokenization_qwen.py"
_FETCHING_CALLS = {"try_to_load_from_cache", "get"}  # the cache lookup and requests.get


def fetches_font_on_import(tokenizer_file: str | Path) -> bool:
    """Whether ``tokenizer_file`` looks a file up in the HF cache or downloads one in code that runs when it is
    imported (module level, outside functions and classes). The file is read, never run."""
    tree = ast.parse(Path(tokenizer_file).read_text(encoding="utf-8"))
    for stmt in tree.body:
        if isinstance(stmt, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)):
            continue
        for node in ast.walk(stmt):
            if isinstance(node, ast.Call):
                func = node.func
                called = func.id if isinstance(func, ast.Name) else getattr(func, "attr", None)
                if called in _FETCHING_CALLS:
                    return True
    return False


def font_lookup() -> str | None:
    """What the tokenizer's import finds: the cached font (a path, or the hub's cached "no such file", which the
    tokenizer also accepts), else ``./SimSun.ttf`` if present, else None (it would download)."""
    from huggingface_hub import try_to_load_from_cache

    found = try_to_load_from_cache(FONT_REPO, FONT_FILE)
    if found is not None:
        return str(found)
    return FONT_FILE if os.path.exists(FONT_FILE) else None


def check_font(name: str, tokenizer_file: str | Path | None) -> dict | None:
    """Before Qwen-VL-Chat's tokenizer is imported: if it fetches the font on import and would have to download
    it, fetch it into the HF cache (:func:`ensure_font`; returns its record) or, offline, fail with what to do,
    instead of a connection error inside remote code or a file written into the working directory."""
    from huggingface_hub import constants

    if tokenizer_file is None or not fetches_font_on_import(tokenizer_file) or font_lookup() is not None:
        return None
    if constants.HF_HUB_OFFLINE:
        raise DataError(
            f"model {name!r}: its {TOKENIZER_FILE} ({tokenizer_file}) downloads {FONT_FILE} from Alibaba's server "
            f"when imported unless the HF cache holds it as {FONT_REPO}'s file at revision main (or ./{FONT_FILE} "
            "exists), and the hub is offline: run the download rule where the hub is reachable (it fetches that "
            f"file), or `hf download {FONT_REPO} {FONT_FILE}`"
        )
    return ensure_font(offline=False)


def ensure_font(offline: bool) -> dict:
    """For the download rule: ``Qwen/Qwen-VL-Chat``'s ``SimSun.ttf`` at ``main`` in the HF cache (downloaded unless
    ``offline``, where it must be there already); returns its record (path, commit, sha256)."""
    if offline:
        found = font_lookup()
        if found is None or not Path(found).is_file():
            raise DataError(
                f"{FONT_REPO}/{FONT_FILE} (the font Qwen-VL-Chat's tokenizer fetches when imported) is not in the HF "
                "cache; run the download rule where the hub is reachable (offline: false)"
            )
        path = Path(found)
    else:
        from huggingface_hub import hf_hub_download

        try:
            path = Path(hf_hub_download(FONT_REPO, FONT_FILE))
        except Exception as exc:  # huggingface_hub raises several types (offline, missing file, gated repo)
            raise DataError(f"cannot fetch {FONT_REPO}/{FONT_FILE} (Qwen-VL-Chat's tokenizer needs it): {exc}") from exc
    return {
        "repo": FONT_REPO,
        "file": FONT_FILE,
        "revision": "main",  # the revision the tokenizer looks it up at
        "commit": path.parent.name if path.parent.parent.name == "snapshots" else None,
        "path": str(path),
        "sha256": hashlib.sha256(path.read_bytes()).hexdigest(),
    }
