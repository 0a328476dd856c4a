"""An item's continuations as one token tree, run in one pass behind its prefix's KV cache.

The continuations of one prefix share their first tokens (the letter branch "Answer: (" and every
option's "Answer: <text>" share "Answer", ":"); in a tree each shared token is input once. A node
attends to the whole prefix, to its ancestors and to itself (a block mask), at position
prefix length + depth: exactly what the token sees in a separate pass of prefix + its own
continuation, so the tree gives the same log-probabilities up to floating-point summation order.

Only the logits a readout reads are computed: a row's *last* logits (the letter branch, prompt-search
candidates) and the logits that predict its *scored* tokens (an option's text). Nodes whose logits
are read come first in the layout, so a batch asks the model for its first ``n_read`` positions
(``logits_to_keep``). A row's last token is not input at all when only its log-probability is read:
no logits follow it.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

PREFIX = -1  # "node" index of the prefix's last token: its logits come from the prefix pass


@dataclass
class Tree:
    """One item's continuation tree. Node ``i`` is token ``tokens[i]``; ``parents[i]`` is a node index or
    ``PREFIX``; nodes ``[0, n_read)`` are those whose logits are read."""

    tokens: list[int]
    parents: list[int]
    depths: list[int]
    n_read: int
    last: list[int | None]  # per row: node whose logits follow the row's last token (None: not read)
    scored: list[list[tuple[int, int]]]  # per row: (node whose logits predict it, token) per scored token

    def allowed(self) -> np.ndarray:
        """[T, T] bool: node q may attend to node k (k is q or one of its ancestors)."""
        n = len(self.tokens)
        out = np.zeros((n, n), dtype=bool)
        for q in range(n):
            k = q
            while k != PREFIX:
                out[q, k] = True
                k = self.parents[k]
        return out


def build_tree(rows) -> Tree:
    """The tree of one item's rows (``mmcal.engine.forward.Row``: ``ids``, ``span_from``, ``last``).

    A node is a token path from the prefix; path ``ids[:j]`` (j >= 1) is the node whose logits predict
    ``ids[j]``; the empty path is the prefix's last token."""
    read: dict[tuple, None] = {}  # paths whose logits are read, in first-use order

    def need(path: tuple) -> None:
        if path:
            read.setdefault(path, None)

    for r in rows:
        ids = tuple(r.ids)
        if r.last:
            need(ids)
        for j in range(max(r.span_from, 0), len(ids)):
            need(ids[:j])
    index = {p: i for i, p in enumerate(read)}
    paths = list(read)
    for p in list(read):  # ancestors that are only input (their logits are not read) go after the read nodes
        for k in range(1, len(p)):
            if p[:k] not in index:
                index[p[:k]] = len(paths)
                paths.append(p[:k])

    def node(path: tuple) -> int:
        return index[path] if path else PREFIX

    return Tree(
        tokens=[p[-1] for p in paths],
        parents=[node(p[:-1]) for p in paths],
        depths=[len(p) - 1 for p in paths],
        n_read=len(read),
        last=[node(tuple(r.ids)) if r.last else None for r in rows],
        scored=[[(node(tuple(r.ids[:j])), r.ids[j]) for j in range(max(r.span_from, 0), len(r.ids))] for r in rows],
    )
