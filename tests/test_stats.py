"""Cluster bootstrap, intervals, paired tests, TOST, Holm, and the synthetic-truth check."""

import numpy as np
import pytest

from mmcal.analysis import metrics as m
from mmcal.analysis import stats


def _calibrated(seed, n=500, overconfident=False):
    rng = np.random.default_rng(seed)
    p = rng.uniform(0.25, 1.0, n)
    correct = rng.random(n) < p
    return (p**0.3 if overconfident else p), correct


# ---------------------------------------------------------------------------------------------
# Draws


def test_indices_resample_whole_clusters():
    clusters = np.repeat(np.arange(20), 3)  # 20 clusters of 3 rows
    for idx in stats.cluster_bootstrap_indices(clusters, B=30, seed=1):
        assert idx.size == 60
        counts = np.bincount(idx, minlength=60).reshape(20, 3)
        assert (counts == counts[:, :1]).all()  # a cluster's rows always travel together


def test_weights_and_indices_are_the_same_draws():
    clusters = np.array(["img7", "img2", "img7", "img9", "img2", "img4"])
    weights = np.concatenate(list(stats.cluster_bootstrap_weights(clusters, B=250, seed=3)))
    indices = stats.cluster_bootstrap_indices(clusters, B=250, seed=3)
    assert weights.shape == (250, 6)
    for w, idx in zip(weights, indices):
        assert np.array_equal(w, np.bincount(idx, minlength=6))


def test_duplicated_clusters_give_the_interval_of_one_row_per_cluster():
    rng = np.random.default_rng(0)
    conf = rng.uniform(0.3, 1, 80)
    correct = rng.random(80) < conf
    single = stats.metric_cis(conf, correct, cluster_ids=np.arange(80), B=300, seed=5, keys=["accuracy"])
    # each item three times, copies share a cluster: the cluster bootstrap sees the same data
    triple = stats.metric_cis(
        np.repeat(conf, 3),
        np.repeat(correct, 3),
        cluster_ids=np.repeat(np.arange(80), 3),
        B=300,
        seed=5,
        keys=["accuracy"],
    )
    assert triple["accuracy_lo"] == pytest.approx(single["accuracy_lo"], abs=1e-12)
    assert triple["accuracy_hi"] == pytest.approx(single["accuracy_hi"], abs=1e-12)
    # treating the copies as independent rows would make the interval ~sqrt(3) too narrow
    naive = stats.metric_cis(np.repeat(conf, 3), np.repeat(correct, 3), B=300, seed=5, keys=["accuracy"])
    width = lambda r: r["accuracy_hi"] - r["accuracy_lo"]  # noqa: E731
    assert width(naive) < 0.75 * width(single)


def test_same_seed_same_numbers_and_seed_matters():
    conf, correct = _calibrated(0, n=200)
    clusters = np.arange(200) // 2
    a = stats.metric_cis(conf, correct, cluster_ids=clusters, B=100, seed=7)
    b = stats.metric_cis(conf, correct, cluster_ids=clusters, B=100, seed=7)
    c = stats.metric_cis(conf, correct, cluster_ids=clusters, B=100, seed=8)
    np.testing.assert_equal(a, b)  # bit-identical, NaN == NaN
    assert a["ece_15_lo"] != c["ece_15_lo"]


def test_derive_seed_is_stable():
    assert stats.derive_seed(0, "m", "d") == stats.derive_seed(0, "m", "d")
    assert stats.derive_seed(0, "m", "d") != stats.derive_seed(1, "m", "d")
    assert stats.derive_seed(0, "m", "d") == 3098502578655757678  # fixed across processes


# ---------------------------------------------------------------------------------------------
# Intervals


def test_generic_bootstrap_ci_matches_vectorised_metric_cis():
    conf, correct = _calibrated(1, n=150)
    clusters = np.arange(150) // 3
    fn = lambda d: m.compute_all(d["confidence"], d["correct"])["ece_10"]  # noqa: E731
    point, lo, hi = stats.bootstrap_ci(fn, {"confidence": conf, "correct": correct}, clusters, B=120, seed=4)
    fast = stats.metric_cis(conf, correct, cluster_ids=clusters, B=120, seed=4, keys=["ece_10"])
    assert (point, lo, hi) == pytest.approx((fast["ece_10"], fast["ece_10_lo"], fast["ece_10_hi"]), abs=1e-12)


def test_metric_cis_has_every_key_and_brackets_the_point():
    conf, correct = _calibrated(2, n=300)
    out = stats.metric_cis(conf, correct, B=100, seed=0)
    for key in m.METRIC_KEYS:
        if key in ("n", "nll", "mean_entropy", *m.CONFORMAL_KEYS):  # these need option probabilities
            continue
        assert out[f"{key}_lo"] <= out[f"{key}_hi"], key
    assert out["accuracy_lo"] <= out["accuracy"] <= out["accuracy_hi"]
    assert out["n"] == 300


def test_metric_cis_empty():
    out = stats.metric_cis([], [], B=10)
    assert out["n"] == 0 and np.isnan(out["accuracy_lo"])


# ---------------------------------------------------------------------------------------------
# Paired comparisons, TOST, Holm


def test_identical_inputs_are_equivalent_and_not_different():
    conf, correct = _calibrated(3, n=200)
    data = {"confidence": conf, "correct": correct}
    for metric in ("accuracy", "ece_debiased", "smece"):
        r = stats.paired_difference(metric, data, data, np.arange(200), B=200, seed=1, margin=0.01)
        assert r["diff"] == 0 and r["lo"] == 0 and r["hi"] == 0
        assert r["p_value"] == 1.0
        assert r["equivalent"] and r["tost_p"] == pytest.approx(1 / 201)


def test_shifted_inputs_are_different_and_not_equivalent():
    conf, correct = _calibrated(4, n=300)
    better = correct.copy()
    better[np.flatnonzero(~correct)[:40]] = True  # B gets 40 more items right
    a = {"confidence": conf, "correct": correct}
    b = {"confidence": conf, "correct": better}
    r = stats.paired_difference("accuracy", a, b, np.arange(300), B=300, seed=2, margin=0.02)
    assert r["diff"] == pytest.approx(40 / 300)
    assert r["lo"] > 0 and r["p_value"] < 0.01
    assert not r["equivalent"] and r["tost_p"] > 0.5


def test_callable_and_named_metric_paths_agree():
    conf, correct = _calibrated(5, n=120)
    a = {"confidence": conf, "correct": correct}
    b = {"confidence": np.clip(conf * 1.1, 0, 1), "correct": correct}
    clusters = np.arange(120) // 4
    named = stats.paired_difference("brier_top", a, b, clusters, B=150, seed=9, margin=0.01)
    fn = lambda d: float(np.mean((d["confidence"] - d["correct"]) ** 2))  # noqa: E731
    called = stats.paired_difference(fn, a, b, clusters, B=150, seed=9, margin=0.01)
    for key in ("diff", "lo", "hi", "p_value", "tost_p"):
        assert called[key] == pytest.approx(named[key], abs=1e-12)


def test_tost_without_margin_is_not_equivalent():
    conf, correct = _calibrated(6, n=50)
    data = {"confidence": conf, "correct": correct}
    r = stats.paired_difference("accuracy", data, data, np.arange(50), B=50, seed=0, margin=None)
    assert np.isnan(r["tost_p"]) and not r["equivalent"]


def test_holm_hand_case():
    # sorted 0.005, 0.01, 0.03, 0.04 -> 4x, 3x, 2x, 1x = 0.02, 0.03, 0.06, 0.04 -> monotone 0.06
    adjusted = stats.holm([0.01, 0.04, 0.03, 0.005])
    assert adjusted == pytest.approx([0.03, 0.06, 0.06, 0.02])
    assert stats.holm([0.5, 0.6]) == pytest.approx([1.0, 1.0])  # capped at 1
    with_nan = stats.holm([0.01, np.nan, 0.02])
    assert np.isnan(with_nan[1]) and with_nan[[0, 2]] == pytest.approx([0.02, 0.02])


# ---------------------------------------------------------------------------------------------
# Synthetic truth (acceptance criterion)


def test_synthetic_truth_calibrated_vs_overconfident():
    """Labels ~ Bernoulli(confidence): the debiased ECE interval covers 0 and the smooth-ECE
    calibration test does not reject in >= 90 of 100 repeats; with confidence**0.3 both detect
    the miscalibration in >= 90 of 100. The plug-in ECE and smECE intervals never cover 0 (they
    are biased upwards), which is why the debiased estimator and the test exist."""
    counts = {}
    for overconfident in (False, True):
        covers_debiased = not_rejected = covers_plugin = 0
        for rep in range(100):
            conf, correct = _calibrated(1000 + rep, overconfident=overconfident)
            cis = stats.metric_cis(
                conf, correct, B=200, seed=rep, keys=["ece_debiased", "ece_debiased_sq", "ece_15", "smece"]
            )
            covers_debiased += cis["ece_debiased_sq_lo"] <= 0 <= cis["ece_debiased_sq_hi"]
            covers_plugin += cis["ece_15_lo"] <= 0 or cis["smece_lo"] <= 0
            not_rejected += stats.smece_calibration_test(conf, correct, B=200, seed=rep)["p_value"] >= 0.05
        counts[overconfident] = (covers_debiased, not_rejected, covers_plugin)
    calibrated, overconf = counts[False], counts[True]
    assert calibrated[0] >= 90 and calibrated[1] >= 90, calibrated
    assert 100 - overconf[0] >= 90 and 100 - overconf[1] >= 90, overconf
    assert calibrated[2] == 0  # plug-in intervals: never cover 0 even when calibrated


def test_percentile_interval_by_hand_leaves_out_undefined_replicates():
    # 0..100: the 2.5 % and 97.5 % quantiles (linear interpolation) are 2.5 and 97.5
    assert stats.percentile_interval(np.arange(101.0)) == pytest.approx((2.5, 97.5), abs=1e-12)
    assert stats.percentile_interval(np.arange(101.0), level=0.5) == (25.0, 75.0)
    # NaN / inf replicates (a metric undefined in that replicate) do not count
    with_undefined = np.r_[np.arange(101.0), np.nan, np.inf, -np.inf]
    assert stats.percentile_interval(with_undefined) == stats.percentile_interval(np.arange(101.0))
    lo, hi = stats.percentile_interval([np.nan, np.nan])
    assert np.isnan(lo) and np.isnan(hi)
