"""Option-order scenarios on items with 2-5 options: shift k is rotation k mod n of the item's own
options, and the permutation average takes each of the item's n rotations exactly once."""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest

from mmcal.engine.scenarios import rotation, rotation_rows, shift_options
from mmcal.figures.option_order import permutation_average
from mmcal.items import MCItem


def _item(n: int, gold: int, **meta) -> MCItem:
    return MCItem(
        item_id=f"q{n}",
        cluster_id=f"q{n}",
        question="?",
        options=[f"o{i}" for i in range(n)],
        gold=gold,
        split="test",
        source="t",
        image=None,
        metadata=dict(meta),
    )


def test_four_options_rotate_as_before():
    """The default study's items (4 options): shifts 1-3 are the rotations they always were."""
    item = _item(4, 2, idk_index=3)
    expected = {
        1: (["o3", "o0", "o1", "o2"], 3, 0),
        2: (["o2", "o3", "o0", "o1"], 0, 1),
        3: (["o1", "o2", "o3", "o0"], 1, 2),
    }
    for k, (options, gold, idk) in expected.items():
        got = shift_options(item, k)
        assert (got.options, got.gold, got.metadata["idk_index"], got.metadata["option_shift"]) == (
            options,
            gold,
            idk,
            k,
        )
    assert shift_options(item, 0) is item


@pytest.mark.parametrize("n", [2, 3, 5])
def test_shifts_reach_exactly_the_items_own_rotations(n):
    item = _item(n, 1)
    orders = {}
    for k in range(0, 2 * n + 1):
        got = shift_options(item, k)
        r = k % n
        assert rotation(k, n) == r
        assert got.options == [f"o{(i - r) % n}" for i in range(n)]  # option i moved to (i + r) mod n
        assert got.options[got.gold] == "o1"  # the gold follows its option
        assert got.gold == (1 + r) % n
        if k:
            assert got.metadata["option_shift"] == r
        orders.setdefault(tuple(got.options), set()).add(r)
    # exactly the n rotations, each reached by one residue only
    rotations = {tuple(item.options[-r:] + item.options[:-r]) if r else tuple(item.options) for r in range(n)}
    assert set(orders) == rotations and all(len(v) == 1 for v in orders.values())


def test_rotation_rows_take_each_rotation_once():
    assert rotation_rows([0, 1, 2, 3], 2) == [0, 1]  # shifts 2 and 3 repeat rotations 0 and 1
    assert rotation_rows([1, 2, 3, 0], 3) == [2, 0, 1]  # shift 3 (row 2) is rotation 0; row 3 repeats it
    assert rotation_rows([0, 1, 2, 3], 5) is None  # rotation 4 never seen
    assert rotation_rows([0, 1, 2, 3, 4], 5) == [0, 1, 2, 3, 4]
    assert rotation_rows([0, 1, 2, 3], 4) == [0, 1, 2, 3]


def _rows(n: int, gold: int, shifts, shown_probs) -> pd.DataFrame:
    """One item's records under the given shifts, for a model whose distribution over the *shown*
    letters is ``shown_probs`` whatever the order (a pure letter bias)."""
    rows = []
    for k in shifts:
        r = k % n
        rows.append(
            {
                "model": "m",
                "dataset": "d",
                "prompt": "p",
                "readout": "r",
                "item_id": f"x{n}",
                "cluster_id": f"x{n}",
                "scenario": f"image-shift{k}" if k else "image",
                "option_scores": list(np.log(shown_probs)),
                "confidence": float(max(shown_probs)),
                "pred": int(np.argmax(shown_probs)),
                "correct": int(np.argmax(shown_probs)) == (gold + r) % n,
                "gold": (gold + r) % n,
                "status": "ok",
                "meta": json.dumps({"option_shift": r} if k else {}),
            }
        )
    return pd.DataFrame(rows)


@pytest.mark.parametrize(("n", "probs"), [(2, [0.8, 0.2]), (3, [0.7, 0.2, 0.1]), (5, [0.6, 0.1, 0.1, 0.1, 0.1])])
def test_permutation_average_counts_each_rotation_once(n, probs):
    """A letter bias averages out to uniform over the n rotations; scenarios image + shift1..4
    repeat rotations for n < 5, and a repeated rotation counted twice would not be uniform."""
    out = permutation_average(_rows(n, 0, range(5), probs))
    assert len(out) == 1 and out.attrs["left_out"] == 0
    assert out["n_rotations"].iloc[0] == n
    assert out["averaged_confidence"].iloc[0] == pytest.approx(1 / n)
    # mean accuracy over the n distinct rotations: the gold sits at letter A in exactly one
    assert out["mean_accuracy"].iloc[0] == pytest.approx(1 / n)


def test_permutation_average_leaves_out_items_missing_a_rotation():
    records = pd.concat([_rows(5, 2, range(4), [0.6, 0.1, 0.1, 0.1, 0.1]), _rows(3, 1, range(4), [0.5, 0.3, 0.2])])
    out = permutation_average(records)
    assert list(out["item_id"]) == ["x3"] and out.attrs["left_out"] == 1
