"""Disk cache of generated candidates, so a rerun of a search needs no model and no API call.

One JSON-lines file per paraphraser configuration (``{kind}-{fingerprint}.jsonl``); each line is
one generated candidate keyed by (parent text, round, index, search seed). Lines are appended as
soon as a candidate is made, so an interrupted search keeps what it paid for.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path

from mmcal.promptopt.base import Generated

log = logging.getLogger(__name__)


def _key(parent: str, round_index: int, index: int, seed: int) -> tuple:
    return (parent, int(round_index), int(index), int(seed))


class CandidateCache:
    def __init__(self, directory: str | Path):
        self.directory = Path(directory)
        self._tables: dict[tuple[str, str], dict[tuple, Generated]] = {}
        self.hits = 0
        self.misses = 0

    def path_for(self, kind: str, fingerprint: str) -> Path:
        return self.directory / f"{kind}-{fingerprint}.jsonl"

    def _table(self, kind: str, fingerprint: str) -> dict[tuple, Generated]:
        if (kind, fingerprint) not in self._tables:
            self._tables[(kind, fingerprint)] = self._read(self.path_for(kind, fingerprint))
        return self._tables[(kind, fingerprint)]

    @staticmethod
    def _read(path: Path) -> dict[tuple, Generated]:
        table: dict[tuple, Generated] = {}
        if not path.exists():
            return table
        with path.open(encoding="utf-8") as fh:
            for lineno, line in enumerate(fh, 1):
                if not line.strip():
                    continue
                try:
                    d = json.loads(line)
                    key = _key(d["parent"], d["round"], d["index"], d["seed"])
                    entry = Generated(text=d["text"], source=d["source"])
                except (json.JSONDecodeError, KeyError, TypeError, ValueError):
                    # A line cut short by an interrupted run: that candidate is simply made again.
                    log.warning("%s:%d: unreadable cache line skipped", path, lineno)
                    continue
                table.setdefault(key, entry)  # first write wins, as in the run that made it
        return table

    def get(
        self, kind: str, fingerprint: str, parent: str, round_index: int, index: int, seed: int
    ) -> Generated | None:
        entry = self._table(kind, fingerprint).get(_key(parent, round_index, index, seed))
        if entry is None:
            self.misses += 1
        else:
            self.hits += 1
        return entry

    def put(
        self,
        kind: str,
        fingerprint: str,
        parent: str,
        round_index: int,
        index: int,
        seed: int,
        entry: Generated,
    ) -> None:
        table = self._table(kind, fingerprint)
        key = _key(parent, round_index, index, seed)
        if key in table:
            return
        table[key] = entry
        record = {
            "kind": kind,
            "fingerprint": fingerprint,
            "parent": parent,
            "round": key[1],
            "index": key[2],
            "seed": key[3],
            "text": entry.text,
            "source": entry.source,
        }
        path = self.path_for(kind, fingerprint)
        path.parent.mkdir(parents=True, exist_ok=True)
        # One write per line in append mode: concurrent searches do not interleave within a line.
        with path.open("a", encoding="utf-8") as fh:
            fh.write(json.dumps(record, ensure_ascii=False, sort_keys=True) + "\n")
