"""Metrics: hand-computed cases, edge cases, and cross-checks against independent code."""

import math

import numpy as np
import pytest
import torch
from scipy.optimize import brentq
from sklearn.metrics import brier_score_loss, log_loss, roc_auc_score
from torchmetrics.functional.classification import binary_calibration_error

from mmcal.analysis import metrics as m

# ---------------------------------------------------------------------------------------------
# Hand-computed cases

# bins of 10: {0, .05, .09} {.3} {.7} {1, 1}; bins of 15: {0, .05} {.09} {.3} {.7} {1, 1}
HAND_CONF = np.array([0.0, 0.05, 0.09, 0.3, 0.7, 1.0, 1.0])
HAND_CORRECT = np.array([0, 1, 0, 0, 1, 1, 0], dtype=bool)


def test_ece_hand_case():
    # sum_b |sum_{i in b} (y_i - c_i)| / n
    assert m.ece(HAND_CONF, HAND_CORRECT, 10) == pytest.approx((0.86 + 0.3 + 0.3 + 1.0) / 7, abs=1e-12)
    assert m.ece(HAND_CONF, HAND_CORRECT, 15) == pytest.approx((0.95 + 0.09 + 0.3 + 0.3 + 1.0) / 7, abs=1e-12)


def test_mce_hand_case():
    # per-bin |acc - conf|: 0.86/3, 0.3, 0.3, 1/2
    assert m.mce(HAND_CONF, HAND_CORRECT) == pytest.approx(0.5, abs=1e-12)


def test_equal_width_bins_are_right_closed():
    conf = np.array([0.0, 0.1, 0.3, 0.30000000000000004, 0.7, 0.95, 1.0])
    assert m.equal_width_bin_index(conf, 10).tolist() == [0, 0, 2, 3, 6, 9, 9]


def test_brier_top_hand_case():
    expected = (0 + 0.95**2 + 0.09**2 + 0.3**2 + 0.3**2 + 0 + 1) / 7
    assert m.brier_top_label(HAND_CONF, HAND_CORRECT) == pytest.approx(expected, abs=1e-12)


def test_brier_and_nll_multiclass_hand_case():
    probs = np.array([[0.7, 0.2, 0.1], [0.2, 0.5, 0.3]])
    gold = np.array([0, 2])
    assert m.brier_multiclass(probs, gold) == pytest.approx((0.14 + 0.78) / 2, abs=1e-12)
    assert m.nll(probs, gold) == pytest.approx(-(math.log(0.7) + math.log(0.3)) / 2, abs=1e-12)


def test_proper_scores_renormalise_and_skip_unknown_gold():
    probs = np.array([[0.7, 0.2, 0.1], [0.2, 0.5, 0.3], [0.3, 0.3, 0.4]])
    full = m.compute_all(probs.max(1), [True, False, False], probs, [0, 2, 0])
    # halved mass (full-vocab readout) and an extra row with unknown gold change nothing
    half = probs * 0.5
    out = m.compute_all(half.max(1), [True, False, False], half, [0, 2, 0])
    assert out["brier"] == pytest.approx(full["brier"], abs=1e-12)
    assert out["nll"] == pytest.approx(full["nll"], abs=1e-12)
    two = m.compute_all(probs.max(1), [True, False, False], probs, [0, 2, -1])
    assert two["nll"] == pytest.approx(m.nll(probs[:2], [0, 2]), abs=1e-12)
    assert two["brier"] == pytest.approx(m.brier_multiclass(probs[:2], [0, 2]), abs=1e-12)


def test_nll_clips_zero_probability():
    probs = np.array([[1.0, 0.0]])
    assert m.nll(probs, [1]) == pytest.approx(-math.log(1e-12))


def test_aurc_hand_cases():
    # no ties: (1/n) sum_k errors_k / k = (0 + 1/2 + 1/3 + 2/4) / 4
    conf, correct = [0.9, 0.8, 0.7, 0.6], [1, 0, 1, 0]
    assert m.aurc(conf, correct) == pytest.approx((0 + 0.5 + 1 / 3 + 0.5) / 4, abs=1e-12)
    # ties are accepted together: top pair risk 1/2 (both rows), then all four 1/4
    assert m.aurc([0.9, 0.9, 0.5, 0.5], [1, 0, 1, 1]) == pytest.approx((2 * 0.5 + 2 * 0.25) / 4, abs=1e-12)


def test_augrc_hand_case():
    # generalised risk at coverage 1/4..1: 0, 1/4, 1/4, 1/2; trapezoid from (0, 0)
    conf, correct = [0.9, 0.8, 0.7, 0.6], [1, 0, 1, 0]
    assert m.augrc(conf, correct) == pytest.approx(0.25 * (0 + 0.125 + 0.25 + 0.375), abs=1e-12)


def test_accuracy_at_coverage_hand_cases():
    conf = [0.9, 0.8, 0.7, 0.6, 0.5, 0.4, 0.3, 0.2, 0.1, 0.05]
    correct = [1, 1, 0, 1, 1, 0, 1, 0, 0, 0]
    assert m.accuracy_at_coverage(conf, correct, 0.5) == pytest.approx(4 / 5)
    assert m.accuracy_at_coverage(conf, correct, 0.8) == pytest.approx(5 / 8)
    assert m.accuracy_at_coverage(conf, correct, 0.9) == pytest.approx(5 / 9)
    # 90% of 4 rows: three rows plus 0.6 of the fourth (correct)
    assert m.accuracy_at_coverage([0.9, 0.8, 0.7, 0.6], [1, 1, 0, 1], 0.9) == pytest.approx(2.6 / 3.6)
    # half of 4 rows cuts a tie group of three (one correct): 1 + 1/3 correct out of 2
    assert m.accuracy_at_coverage([0.9, 0.5, 0.5, 0.5], [1, 1, 0, 0], 0.5) == pytest.approx(2 / 3)


def test_debiased_squared_ece_hand_case():
    # 30 rows, 15 equal-mass bins of 2: sum_b (2/30)[(cbar - ybar)^2 - ybar(1 - ybar)/(2 - 1)]
    rng = np.random.default_rng(3)
    conf = np.sort(rng.uniform(0.3, 1, 30))
    correct = rng.random(30) < conf
    expected = 0.0
    for b in range(15):
        c, y = conf[2 * b : 2 * b + 2], correct[2 * b : 2 * b + 2]
        expected += (2 / 30) * ((c.mean() - y.mean()) ** 2 - y.mean() * (1 - y.mean()))
    out = m.compute_all(conf, correct)
    assert out["ece_debiased_sq"] == pytest.approx(expected, abs=1e-12)
    assert out["ece_debiased"] == pytest.approx(math.sqrt(max(expected, 0)), abs=1e-12)


def test_adaptive_ece_against_loop():
    rng = np.random.default_rng(4)
    conf = rng.uniform(0.2, 1, 47)
    correct = rng.random(47) < conf
    order = np.argsort(conf, kind="stable")
    bins = np.floor(15 * (np.arange(47) + 0.5) / 47).astype(int)
    gaps = np.zeros(15)
    np.add.at(gaps, bins, correct[order] - conf[order])
    assert m.adaptive_ece(conf, correct) == pytest.approx(np.abs(gaps).sum() / 47, abs=1e-12)


# ---------------------------------------------------------------------------------------------
# Edge cases


def test_empty_input_gives_nan_and_zero_n():
    out = m.compute_all([], [])
    assert out["n"] == 0
    assert set(out) == set(m.METRIC_KEYS)
    assert all(math.isnan(v) for k, v in out.items() if k != "n")


def test_keys_are_exactly_the_contract():
    out = m.compute_all([0.5, 0.9], [True, False], np.array([[0.5, 0.5], [0.9, 0.1]]), [0, 1])
    assert list(out) == list(m.METRIC_KEYS)
    assert "brier_top" in out and "ece_debiased_sq" in out


def test_confidence_exactly_zero_and_one():
    conf = np.array([0.0, 0.0, 1.0, 1.0, 0.5])
    correct = np.array([0, 1, 1, 0, 1], dtype=bool)
    out = m.compute_all(conf, correct)
    # without option probabilities there is no NLL, entropy or conformal set
    assert all(np.isfinite(v) for k, v in out.items() if k not in ("nll", "mean_entropy", *m.CONFORMAL_KEYS))
    assert out["ece_10"] == pytest.approx((1 + 1 + 0.5) / 5)  # bins {0, 0}, {.5}, {1, 1}


def test_all_correct_and_all_wrong():
    conf = np.array([0.6, 0.7, 0.7, 0.95])
    right = m.compute_all(conf, np.ones(4, bool))
    assert math.isnan(right["auroc"])
    assert right["aurc"] == 0 and right["augrc"] == 0 and right["acc_at_cov_50"] == 1
    wrong = m.compute_all(conf, np.zeros(4, bool))
    assert math.isnan(wrong["auroc"])
    assert wrong["aurc"] == 1 and wrong["augrc"] == pytest.approx(0.5) and wrong["acc_at_cov_90"] == 0
    assert wrong["smece"] == pytest.approx(conf.mean(), abs=1e-9)  # residuals of one sign


def test_fewer_rows_than_bins():
    conf, correct = np.array([0.35, 0.92, 0.61]), np.array([1, 0, 1], bool)
    out = m.compute_all(conf, correct)
    # every row alone in its bin: ECE = mean |y - c|; debiased = plug-in (no n_b > 1 bins)
    assert out["ece_15"] == pytest.approx(np.abs(correct - conf).mean())
    assert out["ece_adaptive_15"] == pytest.approx(np.abs(correct - conf).mean())
    assert out["ece_debiased_sq"] == pytest.approx(((correct - conf) ** 2).mean())


def test_nan_confidence_is_rejected():
    with pytest.raises(ValueError, match="NaN"):
        m.compute_all([0.5, np.nan], [True, False])


def test_smece_exact_cases():
    assert m.smooth_ece(np.ones(5), np.ones(5)) == 0.0  # perfectly calibrated and certain
    assert m.smooth_ece(np.ones(5), np.zeros(5)) == pytest.approx(1.0, abs=1e-9)
    conf = np.array([0.6, 0.7, 0.9])
    assert m.smooth_ece(conf, np.zeros(3)) == pytest.approx(conf.mean(), abs=1e-9)


# ---------------------------------------------------------------------------------------------
# Weights and vectorisation


def test_integer_weights_equal_repeated_rows():
    rng = np.random.default_rng(5)
    n = 60
    probs = rng.dirichlet(np.ones(4), n)
    gold = rng.integers(0, 4, n)
    conf, correct = probs.max(1), probs.argmax(1) == gold
    weights = rng.integers(0, 3, (3, n)).astype(float)
    inputs = m.prepare(conf, correct, probs, gold)
    reps = m.metric_replicates(inputs, weights)
    # equal-mass bins can split copies of one row differently, so they are left out here; the conformal
    # halves follow cluster ids (tests/test_reported_metrics.py checks them under weights)
    skip = {"ece_adaptive_15", "ece_debiased", "ece_debiased_sq", *m.CONFORMAL_KEYS}
    for b in range(3):
        rows = np.repeat(np.arange(n), weights[b].astype(int))
        direct = m.compute_all(conf[rows], correct[rows], probs[rows], gold[rows])
        for key in m.METRIC_KEYS:
            if key not in skip:
                assert reps[key][b] == pytest.approx(direct[key], rel=1e-9, abs=1e-12), key


# ---------------------------------------------------------------------------------------------
# Cross-checks against independent implementations


def _off_edges(x, bins=(10, 15), gap=1e-6):
    """Mask of values at least ``gap`` from every inner bin edge and below 1 (0 is fine)."""
    keep = x < 1 - gap
    for b in bins:
        inner = np.abs(x * b - np.round(x * b)) > gap * b
        keep &= inner | (x == 0)
    return keep


def _inputs(kind, seed):
    rng = np.random.default_rng(seed)
    n = 400
    if kind == "random":
        conf = rng.uniform(0, 1, n)
        correct = rng.random(n) < conf
    elif kind == "ties":  # few distinct confidences, lots of ties
        conf = rng.choice([0.0, 0.25, 0.55, 0.83, 0.97], n)
        correct = rng.random(n) < 0.6
    elif kind == "all_correct":
        conf = rng.uniform(0.4, 1, n)
        correct = np.ones(n, bool)
    else:  # near-certain confidences
        conf = 1 - rng.exponential(1e-4, n).clip(0, 0.999)
        correct = rng.random(n) < 0.9
    return conf, correct


@pytest.mark.parametrize("kind", ["random", "ties", "all_correct", "near_one"])
@pytest.mark.parametrize("n_bins", [10, 15])
def test_ece_and_mce_match_torchmetrics(kind, n_bins):
    # torchmetrics bins are left-closed [b/M, (b+1)/M) with 1.0 in an extra bin, ours are
    # right-closed (the reference study), so values on an edge or at 1 are kept out.
    conf, correct = _inputs(kind, 11)
    keep = _off_edges(conf)
    conf, correct = conf[keep], correct[keep]
    assert conf.size > 100
    target = torch.tensor(correct.astype(np.int64))
    theirs = binary_calibration_error(torch.tensor(conf), target, n_bins=n_bins, norm="l1")
    assert m.ece(conf, correct, n_bins) == pytest.approx(float(theirs), abs=1e-9)
    if n_bins == 10:
        theirs_max = binary_calibration_error(torch.tensor(conf), target, n_bins=10, norm="max")
        assert m.mce(conf, correct) == pytest.approx(float(theirs_max), abs=1e-9)


@pytest.mark.parametrize("kind", ["random", "ties", "near_one"])
def test_auroc_matches_sklearn(kind):
    conf, correct = _inputs(kind, 12)
    assert m.auroc(conf, correct) == pytest.approx(roc_auc_score(correct, conf), abs=1e-9)


@pytest.mark.parametrize("kind", ["random", "ties", "all_correct", "near_one"])
def test_brier_top_matches_sklearn(kind):
    conf, correct = _inputs(kind, 13)
    assert m.brier_top_label(conf, correct) == pytest.approx(
        brier_score_loss(correct.astype(int), conf, pos_label=1), abs=1e-9
    )


@pytest.mark.parametrize("seed", [0, 1])
def test_multiclass_brier_and_nll_match_sklearn(seed):
    rng = np.random.default_rng(seed)
    probs = rng.dirichlet(np.ones(5) * 0.5, 300).clip(1e-6)
    probs /= probs.sum(1, keepdims=True)
    gold = rng.integers(0, 5, 300)
    labels = list(range(5))
    assert m.brier_multiclass(probs, gold) == pytest.approx(brier_score_loss(gold, probs, labels=labels), abs=1e-9)
    assert m.nll(probs, gold) == pytest.approx(log_loss(gold, probs, labels=labels), abs=1e-9)


@pytest.mark.parametrize("kind", ["random", "ties", "near_one"])
def test_augrc_identity_with_auroc(kind):
    # Traub et al. (2024): AUGRC = (1 - AUROC) acc (1 - acc) + (1 - acc)^2 / 2
    conf, correct = _inputs(kind, 14)
    acc = correct.mean()
    expected = (1 - roc_auc_score(correct, conf)) * acc * (1 - acc) + 0.5 * (1 - acc) ** 2
    assert m.augrc(conf, correct) == pytest.approx(expected, abs=1e-9)


def _aurc_by_thresholds(conf, correct):
    """Independent AURC: loop over distinct thresholds, each row weighted by its group size."""
    total = 0.0
    for t in np.unique(conf):
        accepted = conf >= t
        total += np.sum(conf == t) * np.mean(~correct[accepted])
    return total / len(conf)


@pytest.mark.parametrize("kind", ["random", "ties", "all_correct"])
def test_aurc_against_threshold_loop(kind):
    conf, correct = _inputs(kind, 15)
    assert m.aurc(conf, correct) == pytest.approx(_aurc_by_thresholds(conf, correct), abs=1e-12)


def _smece_direct(conf, correct, grid=2001):
    """Smooth ECE straight from the definition: kernel at the data, fine integration grid."""
    t = np.linspace(0, 1, grid)

    def at(sigma):
        kernel = sum(
            np.exp(-0.5 * ((t[None] - conf[:, None] - 2 * k) / sigma) ** 2)
            + np.exp(-0.5 * ((t[None] + conf[:, None] - 2 * k) / sigma) ** 2)
            for k in range(-3, 4)
        ) / (sigma * math.sqrt(2 * math.pi))
        return np.trapezoid(np.abs(((correct - conf)[:, None] * kernel).mean(0)), t)

    return brentq(lambda s: at(s) - s, 1e-3, 1, xtol=1e-10)


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_smece_matches_direct_definition(seed):
    rng = np.random.default_rng(seed)
    conf = rng.beta(4, 1.5, 150)
    correct = (rng.random(150) < conf ** (1 + seed)).astype(float)
    assert m.smooth_ece(conf, correct) == pytest.approx(_smece_direct(conf, correct), rel=2e-3)
