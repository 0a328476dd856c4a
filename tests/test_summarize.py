"""summarize/compare on a small synthetic records table."""

import numpy as np
import pandas as pd
import pytest

from mmcal.analysis import metrics as m
from mmcal.analysis import stats
from mmcal.analysis.summary import COMPARE_COLUMNS, GROUP_KEYS, compare, summarize
from mmcal.errors import DataError
from mmcal.records import option_probs, read_records, readout_row, to_frame, unscorable_rows, write_records

B = 100  # summarize replicates: enough to exercise the code, fast
UNSCORABLE_ITEM = "q007"


def _records(n_items: int = 60, seed: int = 0) -> pd.DataFrame:
    """Two models (b sharper, so more accurate) x two readouts; items 50+ are in 'train'."""
    rng = np.random.default_rng(seed)
    rows = []
    for model, sharpness in (("tiny-a", 0.5), ("tiny-b", 3.0)):
        for i in range(n_items):
            gold = int(rng.integers(0, 4))
            logits = rng.normal(size=4)
            logits[gold] += sharpness
            base = {
                "item_id": f"q{i:03d}",
                "cluster_id": f"img{i // 2}",  # two questions per image
                "split": "test" if i < 50 else "train",
                "model": model,
                "dataset": "toy",
                "scenario": "image",
                "prompt": "p0",
                "prompt_hash": "h0",
                "model_fingerprint": model,
                "n_options": 4,
                "meta": "{}",
            }
            readouts = ("letter_restricted", "option_loglik")
            if model == "tiny-a" and base["item_id"] == UNSCORABLE_ITEM:
                rows += [{**base, **r} for r in unscorable_rows(readouts, gold, 4, "image_missing")]
                continue
            for readout in readouts:
                scale = 1.0 if readout == "letter_restricted" else 0.7
                rows.append({**base, **readout_row(readout, logits * scale, gold, 0.9), "status": "ok"})
    return to_frame(rows)


def _group_arrays(records, model, readout, split="test"):
    g = records[(records.model == model) & (records.readout == readout) & (records.status == "ok")]
    if split is not None:
        g = g[g.split == split]
    g = g.sort_values("item_id")
    probs = option_probs(g)
    return g, dict(
        confidence=g.confidence.to_numpy(),
        correct=g.correct.to_numpy(bool),
        probs=probs,
        gold=g.gold.to_numpy(),
    )


# ---------------------------------------------------------------------------------------------
# summarize


def test_summarize_counts_and_metrics():
    records = _records()
    table = summarize(records, B=B, seed=0)
    assert len(table) == 4
    # the split the rows were computed on comes right after the group keys
    assert list(table.columns[: len(GROUP_KEYS) + 3]) == [*GROUP_KEYS, "split", "n", "n_unscorable"]
    assert (table["split"] == "test").all()
    for key in m.METRIC_KEYS:
        if key != "n":
            assert {key, f"{key}_lo", f"{key}_hi"} <= set(table.columns)
    row = table[(table.model == "tiny-a") & (table.readout == "letter_restricted")].iloc[0]
    assert row.n == 49 and row.n_unscorable == 1
    other = table[(table.model == "tiny-b") & (table.readout == "option_loglik")].iloc[0]
    assert other.n == 50 and other.n_unscorable == 0
    group, arrays = _group_arrays(records, "tiny-a", "letter_restricted")
    direct = m.compute_all(**arrays, cluster_ids=group.cluster_id.to_numpy())  # clusters: the conformal halves
    for key in m.METRIC_KEYS:
        assert row[key] == pytest.approx(direct[key], abs=1e-12, nan_ok=True), key
    assert row.accuracy_lo <= row.accuracy <= row.accuracy_hi
    assert 0 < row.smece_p_calibrated <= 1


def test_summarize_split_filter():
    table = summarize(_records(), B=20, seed=0, split=None, smece_test=False)
    row = table[(table.model == "tiny-a") & (table.readout == "option_loglik")].iloc[0]
    assert row.n == 59 and row.n_unscorable == 1
    assert "smece_p_calibrated" not in table.columns
    assert (table["split"] == "all").all()  # computed on every split
    pd.testing.assert_frame_equal(summarize(_records(), B=20, seed=0, split="all", smece_test=False), table)
    train = summarize(_records(), B=20, seed=0, split="train", smece_test=False)  # items q050..q059
    assert (train["split"] == "train").all() and (train["n"] == 10).all()


def test_summarize_names_a_missing_split_column():
    with pytest.raises(DataError, match="no 'split' column"):
        summarize(_records().drop(columns=["split"]), B=20, seed=0, smece_test=False)


def test_summarize_is_deterministic_and_independent_of_row_order_and_other_groups():
    records = _records()
    first = summarize(records, B=B, seed=3)
    shuffled = records.sample(frac=1.0, random_state=1).reset_index(drop=True)
    pd.testing.assert_frame_equal(first, summarize(shuffled, B=B, seed=3))
    alone = summarize(records[records.model == "tiny-b"], B=B, seed=3).reset_index(drop=True)
    pd.testing.assert_frame_equal(alone, first[first.model == "tiny-b"].reset_index(drop=True))
    assert not first.equals(summarize(records, B=B, seed=4))


def test_summarize_after_parquet_round_trip(tmp_path):
    records = _records()
    write_records(records, tmp_path / "records.parquet")
    back = read_records(tmp_path / "records.parquet")
    pd.testing.assert_frame_equal(summarize(records, B=20, seed=0), summarize(back, B=20, seed=0))


def test_unknown_gold_is_left_out_of_proper_scores_only():
    records = _records()
    target = (records.model == "tiny-b") & (records.readout == "letter_restricted") & (records.item_id == "q010")
    records.loc[target, "gold"] = -1
    records.loc[target, "correct"] = False
    row = summarize(records, B=20, seed=0, smece_test=False)
    row = row[(row.model == "tiny-b") & (row.readout == "letter_restricted")].iloc[0]
    g, arrays = _group_arrays(records, "tiny-b", "letter_restricted")
    known = arrays["gold"] >= 0
    assert row.n == 50
    assert row.nll == pytest.approx(m.nll(arrays["probs"][known], arrays["gold"][known]), abs=1e-12)
    assert row.accuracy == pytest.approx(arrays["correct"].mean())


def test_option_count_may_vary_within_a_group():
    scores = pd.DataFrame({"option_scores": [[np.log(0.5), np.log(0.5)], [np.log(0.2), np.log(0.3), np.log(0.5)]]})
    probs = option_probs(scores)
    assert probs == pytest.approx(np.array([[0.5, 0.5, 0.0], [0.2, 0.3, 0.5]]))
    records = _records()
    first = records.index[(records.model == "tiny-a") & (records.status == "ok")][0]
    records.at[first, "option_scores"] = [0.0, -np.inf, -np.inf]  # a three-option item
    table = summarize(records, B=20, seed=0, smece_test=False)
    assert np.isfinite(table.nll).all()


# ---------------------------------------------------------------------------------------------
# compare

COMPARISONS = [
    {
        "name": "sharper_model",
        "a": {"model": "tiny-a"},
        "b": {"model": "tiny-b"},
        "readout": "letter_restricted",
        "margin": {"accuracy": 0.05},
    },
    {
        "name": "self",
        "a": {"model": "tiny-a"},
        "b": {"model": "tiny-a"},
        "where": {"readout": "letter_restricted"},
    },
]


def test_compare_table():
    records = _records()
    # B > 2 * 14 / 0.05: a bootstrap p-value is >= 2 / (B + 1) and Holm multiplies by up to 14
    table = compare(records, COMPARISONS, B=1000, seed=0, margin_default=0.02)
    assert list(table.columns) == COMPARE_COLUMNS
    assert len(table) == 2 * 7
    assert (table.n_paired == 49).all()  # the unscorable item of tiny-a is dropped on both sides
    assert np.allclose(table.p_holm, stats.holm(table.p_value.to_numpy()), equal_nan=True)
    assert (table.p_holm >= table.p_value).all()

    sharper = table[table.comparison == "sharper_model"].set_index("metric")
    assert sharper.loc["accuracy", "margin"] == 0.05 and sharper.loc["brier", "margin"] == 0.02
    assert sharper.loc["accuracy", "diff"] > 0 and sharper.loc["accuracy", "significant"]
    assert not sharper.loc["accuracy", "equivalent"]
    assert sharper.loc["accuracy", "a_label"] == "model=tiny-a"

    g_a, arrays_a = _group_arrays(records, "tiny-a", "letter_restricted")
    assert sharper.loc["ece_10", "value_a"] == pytest.approx(m.compute_all(**arrays_a)["ece_10"])

    same = table[table.comparison == "self"]
    assert (same["diff"] == 0).all() and same.equivalent.all() and not same.significant.any()


def test_compare_without_a_readout_filter_is_an_error():
    bad = [{"name": "ambiguous", "a": {"model": "tiny-a"}, "b": {"model": "tiny-b"}}]
    with pytest.raises(ValueError, match="several rows for item"):
        compare(_records(), bad, B=100)


def test_compare_list_filters_and_labels():
    comparisons = [
        {
            "name": "lists",
            "a": {"model": ["tiny-a"]},
            "b": {"model": "tiny-b"},
            "a_label": "A",
            "readout": ["letter_restricted"],
        }
    ]
    with pytest.warns(UserWarning, match="no Holm-adjusted p-value"):
        table = compare(_records(), comparisons, B=20, metrics=("accuracy",))
    assert table.a_label.tolist() == ["A"] and table.b_label.tolist() == ["model=tiny-b"]
    assert np.isnan(table.tost_p.iloc[0]) and not table.equivalent.iloc[0]
