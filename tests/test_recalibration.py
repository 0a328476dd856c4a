"""Recalibration maths, persistence, cluster-level splits, the records-level API and the rule's study."""

from __future__ import annotations

import json
import warnings

import numpy as np
import pandas as pd
import pytest
from scipy.optimize import check_grad

from mmcal.analysis.stats import paired_metric_differences
from mmcal.calibration import (
    METHODS,
    HistogramBinning,
    IsotonicCalibration,
    PlattScaling,
    Recalibrator,
    TemperatureScaling,
    VectorScaling,
    apply_to_records,
    calib_test_split,
    fit_on_records,
    make_recalibrator,
    pad_ragged,
    pool_adjacent_violators,
    records_to_scores,
    repeated_splits,
    summarise_splits,
)
from mmcal.calibration.study import P_BOOTSTRAP, paired_pvalues, recalibration_study, short_params
from mmcal.errors import DataError
from mmcal.paper.tables import format_p_floor, format_params, recalibration_table
from mmcal.records import log_softmax, metric_arrays, readout_row, to_frame

# ------------------------------------------------------------------------------------------------
# Synthetic data and inline metrics
# ------------------------------------------------------------------------------------------------


def sample_labels(z: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """One draw from softmax(z) per row (inverse CDF)."""
    p = np.exp(log_softmax(z))
    return (rng.random(len(z))[:, None] > np.cumsum(p, axis=1)).sum(axis=1).clip(max=z.shape[1] - 1)


def tempered_data(n: int, t_true: float, k: int = 4, scale: float = 3.0, seed: int = 0):
    """True logits z, labels ~ softmax(z); observed logits z * T_true (so the right T is T_true)."""
    rng = np.random.default_rng(seed)
    z = rng.normal(0.0, scale, (n, k))
    return z * t_true, sample_labels(z, rng)


def nll(probs: np.ndarray, gold: np.ndarray) -> float:
    return float(-np.mean(np.log(probs[np.arange(len(gold)), gold])))


def ece(confidence: np.ndarray, correct: np.ndarray, n_bins: int = 10) -> float:
    bins = np.minimum((confidence * n_bins).astype(int), n_bins - 1)
    gap = 0.0
    for b in range(n_bins):
        m = bins == b
        if m.any():
            gap += m.mean() * abs(confidence[m].mean() - correct[m].mean())
    return float(gap)


def fake_metrics(confidence, correct, probs=None, gold=None) -> dict:
    return {
        "accuracy": float(np.mean(correct)),
        "ece_10": ece(confidence, correct),
        "nll": nll(probs, gold),
    }


def make_records(n_items: int = 600, t_true: float = 2.5, seed: int = 0, per_cluster: int = 3) -> pd.DataFrame:
    """Records for two readouts of one model; the model is over-confident by a factor t_true.

    Items alternate 4 and 3 options (ragged rows). Full-vocab letter log-probs come from a
    vocabulary of the letters plus one non-letter token.
    """
    rng = np.random.default_rng(seed)
    rows = []
    for i in range(n_items):
        k = 4 if i % 2 == 0 else 3
        z = rng.normal(0.0, 1.5, k)
        gold = int(sample_labels(z[None], rng)[0])
        full = np.append(z * t_true, rng.normal(-1.0, 1.0))  # letters + one "other" token
        full_lp = log_softmax(full)
        base = {
            "item_id": f"it{i}",
            "cluster_id": f"cl{i // per_cluster}",
            "split": "calib" if i < n_items // 2 else "test",
            "model": "m",
            "dataset": "d",
            "scenario": "s",
            "prompt": "p",
            "n_options": k,
            "status": "ok",
        }
        mass = float(np.exp(full_lp[:k]).sum())
        rows.append({**base, **readout_row("letter_restricted", z * t_true, gold, mass)})
        rows.append({**base, **readout_row("letter_full_vocab", z * t_true, gold, mass, full_lp[:k])})
    df = to_frame(rows)
    bad = df.index[::25]  # a few unscorable rows
    df.loc[bad, "status"] = "image_missing"
    df.loc[bad, "confidence"] = np.nan
    df.loc[bad, "pred"] = -1
    df.loc[bad, "option_scores"] = pd.Series([[] for _ in bad], index=bad, dtype=object)
    df.loc[bad, "option_logits"] = pd.Series([[] for _ in bad], index=bad, dtype=object)
    return df


# ------------------------------------------------------------------------------------------------
# Temperature scaling
# ------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("t_true", [0.5, 2.0])
def test_temperature_recovers_known_temperature_within_2_percent(t_true):
    z, y = tempered_data(100_000, t_true, seed=1)
    ts = TemperatureScaling().fit(z, y)
    assert abs(ts.temperature / t_true - 1) < 0.02
    assert ts.fit_stats["nll_after"] <= ts.fit_stats["nll_before"]


@pytest.mark.parametrize("t_true", [0.5, 2.0])
def test_grid_matches_continuous_optimum_to_grid_precision(t_true):
    z, y = tempered_data(5_000, t_true, seed=2)
    grid = TemperatureScaling(mode="grid").fit(z, y).temperature
    cont = TemperatureScaling().fit(z, y).temperature
    assert abs(grid - cont) <= 0.01 + 1e-9
    assert 0 < grid and grid == round(grid / 0.01) * 0.01  # a grid point


def test_grid_never_contains_or_returns_zero():
    grid = TemperatureScaling(mode="grid").grid()
    assert len(grid) == 999 and grid[0] == pytest.approx(0.01) and grid[-1] == pytest.approx(9.99)
    assert (grid > 0).all()
    # perfectly separable data: NLL keeps falling as T -> 0, the grid must stop at 0.01, not 0
    z = np.array([[2.0, 0.0], [0.0, 3.0], [1.0, -1.0]])
    y = np.array([0, 1, 0])
    with pytest.warns(UserWarning, match="edge"):
        ts = TemperatureScaling(mode="grid").fit(z, y)
    assert ts.temperature == pytest.approx(0.01)
    assert np.isfinite(ts.transform(z).probs).all()


def test_temperature_scaling_keeps_argmax_and_accuracy_exactly():
    z, y = tempered_data(3_000, 0.3, k=5, seed=3)
    z[:10, 1] = z[:10, 0]  # ties: first index wins, before and after
    out = TemperatureScaling().fit(z, y).transform(z)
    assert np.array_equal(out.pred, np.argmax(z, axis=1))
    assert np.mean(out.pred == y) == np.mean(np.argmax(z, axis=1) == y)
    assert np.allclose(out.probs.sum(axis=1), 1.0)
    assert np.array_equal(out.confidence, out.probs[np.arange(len(z)), out.pred])


def test_padding_gets_zero_probability_and_is_never_predicted():
    z = pad_ragged([[1.0, 2.0], [0.5, 0.1, -3.0, 2.0], [-5.0, -6.0, -7.0]])
    y = np.array([1, 3, 0])
    for method in METHODS:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # three rows: optima may sit at a bound
            out = make_recalibrator(method).fit(z, y).transform(z)
        assert (out.probs[~np.isfinite(z)] == 0).all(), method
        assert np.isfinite(z[np.arange(3), out.pred]).all(), method
        assert np.allclose(out.probs.sum(axis=1), 1.0), method


def test_fit_rejects_unknown_gold_and_nan_scores():
    z = np.zeros((2, 3))
    with pytest.raises(ValueError, match="gold"):
        TemperatureScaling().fit(z, np.array([0, -1]))
    with pytest.raises(ValueError, match="NaN"):
        TemperatureScaling().fit(np.array([[0.0, np.nan]]), np.array([0]))


# ------------------------------------------------------------------------------------------------
# Vector scaling
# ------------------------------------------------------------------------------------------------


def test_vector_scaling_on_tempered_data_finds_a_common_scale():
    z, y = tempered_data(30_000, 2.0, seed=4)
    vs = VectorScaling().fit(z, y)
    assert np.allclose(vs.scale, 0.5, atol=0.03)
    assert np.allclose(vs.bias, 0.0, atol=0.05)
    assert vs.fit_stats["nll_after"] < vs.fit_stats["nll_before"]
    # the argmax may change under vector scaling in general, so accuracy is not asserted here


def test_vector_scaling_ignores_per_row_logit_offsets():
    z, y = tempered_data(2_000, 1.5, seed=5)
    shifted = z + np.random.default_rng(0).normal(0, 10, (len(z), 1))
    a = VectorScaling().fit(z, y)
    b = VectorScaling().fit(shifted, y)
    assert np.allclose(a.transform(z).probs, b.transform(shifted).probs, atol=1e-6)


def test_vector_scaling_gradient_is_correct():
    z, y = tempered_data(200, 1.0, seed=6)
    z[:50, 3] = -np.inf  # ragged rows
    y = np.where(np.isfinite(z[np.arange(200), y]), y, 0)
    vs = VectorScaling(l2=0.1)
    x, valid = vs._features(z)
    onehot = np.zeros_like(valid)
    onehot[np.arange(len(y)), y] = True
    theta = np.random.default_rng(1).normal(1.0, 0.3, 8)
    err = check_grad(
        lambda t: vs._objective(t, x, valid, onehot)[0],
        lambda t: vs._objective(t, x, valid, onehot)[1],
        theta,
    )
    assert err < 1e-5


# ------------------------------------------------------------------------------------------------
# Top-label methods
# ------------------------------------------------------------------------------------------------


def test_pav_hand_case():
    fitted = pool_adjacent_violators(np.array([1.0, 3.0, 2.0, 4.0, 0.0]), np.array([1.0, 1.0, 1.0, 1.0, 3.0]))
    # 3,2 pool to 2.5; then 4,0 (w 1,3) pool to 1, which violates 2.5 -> pool (2.5*2+1*4)/6 = 1.5
    assert np.allclose(fitted, [1.0, 1.5, 1.5, 1.5, 1.5])


def test_isotonic_matches_sklearn():
    from sklearn.isotonic import IsotonicRegression

    rng = np.random.default_rng(7)
    conf = np.round(rng.uniform(0.25, 1.0, 2_000), 2)  # rounded: many ties
    correct = rng.random(2_000) < conf**2
    ours = IsotonicCalibration().fit_confidence(conf, correct)
    ref = IsotonicRegression(out_of_bounds="clip").fit(conf, correct.astype(float))
    probe = np.concatenate([conf, np.linspace(0.0, 1.0, 301)])
    assert np.allclose(ours.calibrate_confidence(probe), ref.predict(probe), atol=1e-12)


def test_histogram_binning_hand_case():
    conf = np.array([0.1, 0.2, 0.3, 0.4, 0.6, 0.7, 0.8, 0.9])
    correct = np.array([0, 0, 1, 0, 1, 1, 0, 1], dtype=bool)
    two = HistogramBinning(n_bins=2).fit_confidence(conf, correct)
    assert np.allclose(two.edges, [0.6])
    assert np.allclose(two.calibrate_confidence([0.0, 0.5, 0.6, 1.0]), [0.25, 0.25, 0.75, 0.75])
    four = HistogramBinning(n_bins=4).fit_confidence(conf, correct)
    assert np.allclose(four.edges, [0.3, 0.6, 0.8])
    assert np.allclose(four.values, [0.0, 0.5, 1.0, 0.5])


def test_histogram_binning_ties_never_make_empty_bins():
    conf = np.array([0.5] * 6 + [0.9, 0.95])
    correct = np.array([1, 0, 1, 0, 1, 0, 1, 1], dtype=bool)
    hb = HistogramBinning(n_bins=4).fit_confidence(conf, correct)
    assert min(hb.fit_stats["bin_counts"]) > 0
    assert hb.calibrate_confidence([0.5])[0] == pytest.approx(0.5)


def test_platt_recovers_logistic_ground_truth():
    rng = np.random.default_rng(8)
    log_odds = rng.normal(0.5, 1.5, 20_000)
    conf = 1 / (1 + np.exp(-log_odds))
    correct = rng.random(len(conf)) < 1 / (1 + np.exp(-(0.6 * log_odds + 0.3)))
    platt = PlattScaling().fit_confidence(conf, correct)
    assert platt.slope == pytest.approx(0.6, abs=0.05)
    assert platt.intercept == pytest.approx(0.3, abs=0.05)


def test_platt_stays_finite_when_everything_is_correct():
    conf = np.array([0.6, 0.7, 0.8, 0.9])
    platt = PlattScaling().fit_confidence(conf, np.ones(4, dtype=bool))
    assert np.isfinite([platt.slope, platt.intercept]).all()


@pytest.mark.parametrize("method", ["platt", "histogram", "isotonic"])
def test_top_label_keeps_pred_and_spreads_the_rest_proportionally(method):
    z, y = tempered_data(4_000, 2.0, seed=9)
    out = make_recalibrator(method).fit(z, y).transform(z)
    p = np.exp(log_softmax(z))
    rows = np.arange(len(z))
    assert np.array_equal(out.pred, np.argmax(z, axis=1))
    assert np.allclose(out.probs.sum(axis=1), 1.0)
    assert np.array_equal(out.probs[rows, out.pred], out.confidence)
    # other options keep their input ratios
    others = np.ones_like(p, dtype=bool)
    others[rows, out.pred] = False
    ratio = out.probs[others].reshape(len(z), -1) / p[others].reshape(len(z), -1)
    assert np.allclose(ratio, ratio[:, :1])


def test_top_label_with_certain_input_spreads_uniformly():
    z = np.array([[0.0, -800.0, -800.0], [0.0, -800.0, -np.inf]])  # input rest mass underflows to 0
    hb = HistogramBinning(n_bins=1).fit(z, np.array([1, 0]))  # accuracy 0.5 in the only bin
    out = hb.transform(z)
    assert np.allclose(out.probs, [[0.5, 0.25, 0.25], [0.5, 0.5, 0.0]])


# ------------------------------------------------------------------------------------------------
# Persistence
# ------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("method", METHODS)
@pytest.mark.parametrize("readout_mode", ["restricted", "full_vocab"])
def test_json_round_trip_reproduces_transform_exactly(method, readout_mode):
    z, y = tempered_data(1_500, 1.7, seed=10)
    if readout_mode == "full_vocab":
        z = log_softmax(np.concatenate([z, np.full((len(z), 1), 0.5)], axis=1))
    recal = make_recalibrator(method, readout_mode=readout_mode).fit(z, y)
    recal.fitted_on = {"readout": "letter_restricted"}
    again = Recalibrator.from_json(json.dumps(json.loads(recal.to_json())))
    assert type(again) is type(recal) and again.label == recal.label
    a, b = recal.transform(z), again.transform(z)
    assert np.array_equal(a.probs, b.probs)
    assert np.array_equal(a.pred, b.pred)
    assert np.array_equal(a.confidence, b.confidence)
    assert again.fitted_on == recal.fitted_on


def test_unfitted_round_trip_and_wrong_class():
    d = TemperatureScaling(mode="grid").to_dict()
    again = Recalibrator.from_dict(d)
    assert not again.is_fitted and again.mode == "grid"
    with pytest.raises(ValueError):
        VectorScaling.from_dict(d)
    with pytest.raises(RuntimeError):
        again.transform(np.zeros((1, 2)))


# ------------------------------------------------------------------------------------------------
# Full-vocabulary readout
# ------------------------------------------------------------------------------------------------


def test_full_vocab_identity_reproduces_recorded_confidence():
    df = make_records(n_items=60)
    ok = df[(df["status"] == "ok") & (df["readout"] == "letter_full_vocab")]
    z, gold = records_to_scores(ok, "full_vocab")
    assert z.shape[1] == 5  # 4 letters max + the other bucket
    ts = TemperatureScaling(readout_mode="full_vocab")
    ts._set_params({"temperature": 1.0})
    ts._fitted = True
    out = ts.transform(z)
    assert np.allclose(out.confidence, ok["confidence"].to_numpy(float), rtol=1e-12)
    assert np.array_equal(out.pred, ok["pred"].to_numpy())


def test_full_vocab_bucket_is_exact_for_one_other_token_and_approximate_otherwise():
    rng = np.random.default_rng(11)
    letters = rng.normal(0, 2, (50, 4))
    for n_other, exact in ((1, True), (5, False)):
        vocab = np.concatenate([letters, rng.normal(0, 1, (50, n_other))], axis=1)
        lp = log_softmax(vocab)
        bucket = np.concatenate([lp[:, :4], np.log(-np.expm1(np.log(np.exp(lp[:, :4]).sum(1))))[:, None]], 1)
        for t in (0.5, 2.0):
            true_other = np.exp(log_softmax(vocab / t))[:, 4:].sum(axis=1)
            approx_other = np.exp(log_softmax(bucket / t))[:, 4]
            if exact:
                assert np.allclose(approx_other, true_other)
            elif t < 1:
                assert (approx_other > true_other).all()  # bucket overstates the other mass
            else:
                assert (approx_other < true_other).all()


def test_full_vocab_temperature_recovers_model_temperature_with_one_other_token():
    rng = np.random.default_rng(12)
    true_vocab = rng.normal(0, 2.5, (60_000, 5))  # 4 letters + 1 other token
    y_all = sample_labels(true_vocab, rng)
    keep = y_all < 4  # gold is always a letter
    observed = log_softmax(true_vocab[keep] * 2.0)
    z = observed  # with a single other token the bucket log(1 - sum_k p_k) is that token's log-prob
    ts = TemperatureScaling(readout_mode="full_vocab").fit(z, y_all[keep])
    # conditioning on "gold is a letter" biases slightly; the scale is still recovered closely
    assert ts.temperature == pytest.approx(2.0, rel=0.05)
    assert (ts.transform(z).pred < 4).all()


# ------------------------------------------------------------------------------------------------
# Splits
# ------------------------------------------------------------------------------------------------


def test_split_is_cluster_disjoint_and_deterministic():
    df = make_records(n_items=300, per_cluster=4)
    s = calib_test_split(df, frac_calib=0.4, seed=3)
    assert not (s.calib_clusters & s.test_clusters)
    side = pd.Series(s.calib_mask).groupby(df["cluster_id"].to_numpy()).nunique()
    assert (side == 1).all()  # every cluster entirely on one side
    n_clusters = df["cluster_id"].nunique()
    assert len(s.calib_clusters) == round(0.4 * n_clusters)
    assert len(s.calib_clusters) + len(s.test_clusters) == n_clusters
    again = calib_test_split(df, frac_calib=0.4, seed=3)
    assert np.array_equal(s.calib_mask, again.calib_mask)
    shuffled = df.sample(frac=1.0, random_state=0)
    s_shuffled = calib_test_split(shuffled, frac_calib=0.4, seed=3)
    assert s_shuffled.calib_clusters == s.calib_clusters  # row order does not matter
    assert calib_test_split(df, frac_calib=0.4, seed=4).calib_clusters != s.calib_clusters


def test_split_accepts_plain_cluster_ids():
    ids = ["a", "a", "b", "c", "c", "d"]
    s = calib_test_split(ids, frac_calib=0.5, seed=0)
    assert len(s.calib_mask) == 6 and s.calib_mask[0] == s.calib_mask[1] and s.calib_mask[3] == s.calib_mask[4]
    with pytest.raises(DataError):
        calib_test_split(["a", "a"], 0.5, 0)
    with pytest.raises(ValueError):
        calib_test_split(ids, 1.0, 0)


def test_repeated_splits_fit_on_calib_and_report_each_seed():
    df = make_records(n_items=900, t_true=3.0, seed=1)
    per_seed = repeated_splits(df, "temperature", "letter_restricted", n_seeds=4, metrics_fn=fake_metrics)
    assert len(per_seed) == 8 and set(per_seed["stage"]) == {"uncalibrated", "temperature"}
    pool = ((df["status"] == "ok") & (df["readout"] == "letter_restricted")).sum()
    assert ((per_seed["n_calib"] + per_seed["n_test"]) == pool).all()
    before = per_seed[per_seed["stage"] == "uncalibrated"].set_index("seed")
    after = per_seed[per_seed["stage"] == "temperature"].set_index("seed")
    assert np.allclose(before["accuracy"], after["accuracy"])  # TS never changes accuracy
    assert (after["nll"] < before["nll"]).all() and (after["ece_10"] < before["ece_10"]).all()
    assert all(json.loads(p)["temperature"] > 1.5 for p in after["params"])
    summary = summarise_splits(per_seed)
    row = summary[(summary["stage"] == "temperature") & (summary["metric"] == "nll")].iloc[0]
    assert row["n_seeds"] == 4 and row["ci_low"] <= row["mean"] <= row["ci_high"]


def test_summarise_splits_t_interval():
    per_seed = pd.DataFrame({"seed": [0, 1, 2], "stage": "x", "ece": [1.0, 2.0, 3.0]})
    row = summarise_splits(per_seed).iloc[0]
    assert row["mean"] == 2.0 and row["sd"] == 1.0
    assert row["ci_high"] - 2.0 == pytest.approx(4.302652729911275 / np.sqrt(3))


# ------------------------------------------------------------------------------------------------
# Records-level API
# ------------------------------------------------------------------------------------------------


def test_fit_on_records_uses_only_ok_rows_of_the_readout_and_split():
    df = make_records(n_items=400)
    recal = fit_on_records(df, "temperature", "letter_restricted", split="calib")
    rows = df[(df["status"] == "ok") & (df["readout"] == "letter_restricted") & (df["split"] == "calib")]
    direct = TemperatureScaling().fit(*records_to_scores(rows, "restricted"))
    assert recal.temperature == direct.temperature
    assert recal.fitted_on["readout"] == "letter_restricted" and recal.fitted_on["model"] == "m"
    assert recal.fitted_on["n_rows"] == len(rows)
    assert fit_on_records(df, "temperature", "letter_full_vocab").readout_mode == "full_vocab"


def test_fit_on_records_refuses_mixed_models():
    df = make_records(n_items=60)
    df.loc[df.index[:10], "model"] = "other"
    with pytest.raises(DataError, match="model"):
        fit_on_records(df, "temperature", "letter_restricted")
    assert fit_on_records(df, "temperature", "letter_restricted", allow_mixed=True).is_fitted


@pytest.mark.parametrize("readout", ["letter_restricted", "letter_full_vocab"])
@pytest.mark.parametrize("method", ["temperature", "isotonic"])
def test_apply_to_records_updates_ok_rows_and_passes_the_rest_through(readout, method):
    df = make_records(n_items=300)
    recal = fit_on_records(df, method, readout)
    out = apply_to_records(df, recal)
    assert len(out) == len(df) and out.index.equals(df.index)
    touched = ((df["status"] == "ok") & (df["readout"] == readout)).to_numpy()
    assert (out.loc[touched, "recalibrator"] == recal.label).all()
    assert out.loc[~touched, "recalibrator"].isna().all()
    untouched_before = df[~touched]
    untouched_after = out.loc[~touched, df.columns]
    pd.testing.assert_frame_equal(untouched_after, untouched_before)
    new, old = out[touched], df[touched]
    assert (new["pred"].to_numpy() == old["pred"].to_numpy()).all()  # both methods keep the argmax
    assert (new["correct"].to_numpy() == old["correct"].to_numpy()).all()
    assert [len(s) for s in new["option_scores"]] == list(old["n_options"])
    conf_from_scores = [np.exp(s[p]) for s, p in zip(new["option_scores"], new["pred"])]
    assert np.allclose(new["confidence"], conf_from_scores)
    assert np.isfinite(new["entropy"]).all()
    assert not np.allclose(new["confidence"], old["confidence"])
    mass = np.array([np.exp(s).sum() for s in new["option_scores"]])
    if readout == "letter_full_vocab":
        # letters only: the other bucket keeps mass (except where a top-label map says c' = 1)
        assert (mass <= 1 + 1e-12).all() and np.mean(mass < 1 - 1e-6) > 0.5
    else:
        assert np.allclose(mass, 1.0)


def test_apply_to_records_needs_a_readout():
    df = make_records(n_items=20)
    z, y = records_to_scores(df[(df["status"] == "ok") & (df["readout"] == "letter_restricted")], "restricted")
    recal = TemperatureScaling().fit(z, y)
    with pytest.raises(ValueError, match="readout"):
        apply_to_records(df, recal)
    out = apply_to_records(df, recal, readout="letter_restricted")
    assert (out["recalibrator"] == "temperature").sum() == len(y)


def test_apply_to_records_keeps_none_values_of_untouched_rows():
    df = make_records(n_items=40)
    df["pred"] = df["pred"].astype(object)
    df["correct"] = df["correct"].astype(object)
    bad = (df["status"] != "ok").to_numpy()
    df.loc[bad, "pred"] = None
    df.loc[bad, "correct"] = None
    out = apply_to_records(df, fit_on_records(df, "platt", "letter_restricted"))
    assert out.loc[bad, "pred"].isna().all() and out.loc[bad, "correct"].isna().all()


def test_records_survive_a_parquet_round_trip(tmp_path):
    from mmcal.records import read_records, write_records

    write_records(make_records(n_items=80), tmp_path / "r.parquet")
    df = read_records(tmp_path / "r.parquet")  # list columns now come back as numpy arrays
    recal = fit_on_records(df, "vector", "letter_full_vocab")
    out = apply_to_records(df, Recalibrator.from_json(recal.to_json()))
    write_records(out, tmp_path / "r2.parquet")
    back = read_records(tmp_path / "r2.parquet")
    assert (
        len(back) == len(df)
        and (back["recalibrator"] == "vector").sum()
        == ((df["status"] == "ok") & (df["readout"] == "letter_full_vocab")).sum()
    )


# ------------------------------------------------------------------------------------------------
# The recalibrate rule's study and its table
# ------------------------------------------------------------------------------------------------


def known_temperature_records(t_best: float, n: int = 40) -> pd.DataFrame:
    """Two options, logits (s, 0) on every item, the first option right on 3 items in 4.

    NLL(T) is minimal where sigmoid(s / T) = 3/4, i.e. at T = s / log 3: s = t_best * log 3.
    """
    s = t_best * np.log(3.0)
    rows = []
    for split in ("calib", "test"):
        for i in range(n):
            base = {
                "item_id": f"{split}-{i:03d}",
                "cluster_id": f"{split}-{i:03d}",
                "split": split,
                "model": "m",
                "dataset": "d",
                "scenario": "image",
                "prompt": "default",
                "n_options": 2,
                "status": "ok",
            }
            rows.append({**base, **readout_row("letter_restricted", np.array([s, 0.0]), int(i % 4 == 3), 1.0)})
    return to_frame(rows)


def table_row(tex: str, recalibrator: str) -> list[str]:
    """The cells of ``recalibrator``'s table row, from its Recalibrator cell on."""
    body = tex.split(r"\midrule")[1].split(r"\bottomrule")[0]
    rows = [[cell.strip() for cell in ln.strip().removesuffix("\\\\").split("&")] for ln in body.splitlines()]
    [row] = [r for r in rows if recalibrator in r]
    return row[row.index(recalibrator) :]


def test_study_table_shows_the_fitted_temperature():
    records = known_temperature_records(1.074)
    table, params, _ = recalibration_study(
        records, ["letter_restricted"], ["temperature", "temperature_grid"], B=200, p_bootstrap=1000
    )
    fitted = {row["recalibrator"]: json.loads(row["params"]) for _, row in table.iterrows()}
    assert fitted["temperature"]["temperature"] == pytest.approx(1.074, abs=1e-6)
    assert fitted["temperature_grid"] == {"temperature": pytest.approx(1.07)}
    assert params["m/d/image/default/letter_restricted"]["temperature"]["params"] == fitted["temperature"]
    tex = recalibration_table(table)
    assert table_row(tex, "temperature")[1] == "T=1.07"
    assert table_row(tex, "temperature\\_grid")[1] == "T=1.07"
    assert table_row(tex, "none")[1] == "--"


def test_short_params_name_each_methods_headline_parameters():
    df = make_records(n_items=200)
    cells = {}
    for method in ("platt", "vector", "histogram", "isotonic"):
        recal = fit_on_records(df, method, "letter_restricted")
        short = short_params(recal.to_dict())
        cells[method] = format_params(json.dumps(short))
        if method == "platt":
            assert short == {"slope": recal.slope, "intercept": recal.intercept}
    assert cells["platt"].startswith("slope=") and ", intercept=" in cells["platt"]
    assert cells["vector"] == "scale: 4 values, bias: 4 values"
    assert cells["histogram"] == f"bins: {len(fit_on_records(df, 'histogram', 'letter_restricted').values)} values"
    assert cells["isotonic"].startswith("knots: ")


def test_ece_pvalue_uses_the_interval_draws_and_has_the_bootstrap_floor():
    df = make_records(n_items=300, t_true=3.0)
    test = df[(df["status"] == "ok") & (df["readout"] == "letter_restricted") & (df["split"] == "test")]
    after = apply_to_records(test, fit_on_records(df, "temperature", "letter_restricted"))
    before_arrays, after_arrays = metric_arrays(test), metric_arrays(after)
    clusters = test["cluster_id"].to_numpy()
    [(p, floor)] = paired_pvalues(before_arrays, {"t": after_arrays}, clusters, "ece_10", 1000, 7).values()
    reference = paired_metric_differences(before_arrays, after_arrays, clusters, ["ece_10"], B=1000, seed=7)
    assert p == reference["ece_10"]["p_value"]  # same draws, same test as the intervals
    assert floor == 2 / 1001 and floor <= p < 0.01


def test_strong_effect_is_significant_after_holm_and_the_table_prints_the_floor():
    df = make_records(n_items=600, t_true=6.0)  # over-confident by a factor 6
    methods = ["temperature", "temperature_grid", "vector", "platt"]
    b_p = 10_000
    table, _, _ = recalibration_study(df, ["letter_restricted", "letter_full_vocab"], methods, B=200, p_bootstrap=b_p)
    tested = table[table["recalibrator"] != "none"]
    m = len(tested)
    assert m == 8
    assert (tested["diff_ece_10"] < -0.1).all()
    assert (tested["p_ece_10_floor"] == 2 / (b_p + 1)).all()
    assert np.allclose(tested["p_holm_floor"], m * 2 / (b_p + 1), rtol=0, atol=1e-15)
    # no replicate crosses zero: every p at its floor, 8 * 2 / 10001 = 0.0016 (1,000 replicates: 0.016)
    assert (tested["p_holm"] == tested["p_holm_floor"]).all() and (tested["p_holm"] < 0.05).all()
    tex = recalibration_table(table, where={"readout": "letter_restricted"})
    for method in methods:
        assert table_row(tex, method.replace("_", "\\_"))[-2] == "$<$0.002"  # the floor, rounded up
    assert "no bootstrap replicate crossed zero" in tex
    # the default study's 36 tests keep the Holm floor an order of magnitude below 0.05
    assert 36 * 2 / (P_BOOTSTRAP + 1) < 0.005


def test_format_p_floor():
    assert format_p_floor(0.0036, 0.0036) == "$<$0.004"  # the floor, rounded up: still a true bound
    assert format_p_floor(0.004, 0.004) == "$<$0.004"
    assert format_p_floor(0.00072, 0.00072) == "$<$0.001"
    assert format_p_floor(0.0123, 0.0036) == "0.012"  # above the floor: the value itself
    assert format_p_floor(0.0123, None) == "0.012"
    assert format_p_floor(1.0, 1.0) == "1.000"  # a floor of 1 bounds nothing
    assert format_p_floor(None, 0.001) == "--"


def test_an_option_position_calib_never_had_makes_vector_scaling_not_applicable_and_only_it():
    """MMBench-like sets mix 2-4 options: when every calib item has 3 and a test item has 4, vector scaling (one
    scale and bias per position) has no parameters for the 4th; its row says so and the other methods run."""
    from mmcal.calibration.study import split_robustness

    df = make_records(n_items=200)
    calib_wide = (df["split"] == "calib") & (df["n_options"] == 4)
    df = df[~calib_wide].reset_index(drop=True)
    methods = ["temperature", "vector", "platt"]
    table, params, frames = recalibration_study(df, ["letter_restricted"], methods, B=50, p_bootstrap=200)
    rows = {r["recalibrator"]: r for _, r in table.iterrows()}
    assert set(rows) == {"none", "temperature", "vector", "platt"}
    reason = json.loads(rows["vector"]["params"])["not_applicable"]
    assert "fitted on 3 columns" in reason and "got 4" in reason
    assert np.isnan(rows["vector"]["ece_10"]) and np.isfinite(rows["temperature"]["ece_10"])
    assert "vector" not in params["m/d/s/p/letter_restricted"] and "vector" not in frames
    # the repeated splits leave the method out too, the others in
    splits = split_robustness(df, ["letter_restricted"], methods, n_seeds=2)
    assert set(splits["method"]) <= {"temperature", "vector", "platt"} and "temperature" in set(splits["method"])
