"""Cleaning and checking candidate answer-prompt suffixes, and deriving per-sample seeds.

A candidate becomes the answer prefix ``candidate + " ("`` whose next token is the option letter,
so it must be one short line of plain words: no quotes, brackets, question marks or trailing
punctuation that would change what the model expects next.
"""

from __future__ import annotations

import hashlib
import json
import re

MAX_WORDS = 12
MAX_CHARS = 90
# Bump when the cleaning rules change: it enters every paraphraser's fingerprint, so cached
# candidates produced under older rules are not reused.
CLEANING_VERSION = 1

_QUOTES = "\"'`“”‘’«»"
_LABEL = re.compile(r"^(paraphrase[sd]?|paraphrased|rewritten|rewrite|output|sentence start)\s*:\s*", re.I)
# Letters (any script), digits, spaces, apostrophes, commas, hyphens: a plain sentence start.
_ALLOWED = re.compile(r"^[^\W_](?:[\w' ,\-’]*[^\W_])?$")


def normalise(text: str) -> str:
    """Comparison form: case, spacing and trailing punctuation do not make a new candidate."""
    return " ".join(text.lower().split()).rstrip(" .,;:!…")


def clean_candidate(raw: str | None) -> str | None:
    """First non-empty line, without labels, wrapping quotes and trailing punctuation."""
    if not raw:
        return None
    lines = [ln.strip() for ln in raw.splitlines() if ln.strip()]
    if not lines:
        return None
    text = _LABEL.sub("", lines[0])
    for _ in range(3):  # quotes and punctuation can nest: '"The answer is."'
        text = text.strip().strip(_QUOTES).strip().rstrip(".,;:!…").strip()
    text = " ".join(text.split())
    return text or None


def is_acceptable(text: str | None, taken: set[str]) -> bool:
    """Short, plain, and new: not the parent nor any candidate already taken (normalised)."""
    if not text or len(text) > MAX_CHARS or len(text.split()) > MAX_WORDS:
        return False
    if not _ALLOWED.match(text):
        return False
    return normalise(text) not in taken


def derive_seed(*parts) -> int:
    """A 31-bit seed from any JSON-able parts; stable across processes (unlike hash())."""
    blob = json.dumps(parts, separators=(",", ":"), ensure_ascii=False).encode()
    return int.from_bytes(hashlib.sha256(blob).digest()[:4], "big") & 0x7FFFFFFF


def fingerprint(settings: dict) -> str:
    blob = json.dumps(settings, sort_keys=True, ensure_ascii=False).encode()
    return hashlib.sha256(blob).hexdigest()[:16]
