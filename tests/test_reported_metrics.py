"""The uncertainty metrics other benchmarks report, each against an independent implementation:

- HELM's ``ece_10_bin`` and ``selective_acc@10`` against ``uncertainty-calibration`` (the package HELM
  calls: ``get_ece_em``, ``get_selective_stats``);
- conformal prediction sets as LLM-Uncertainty-Bench computes them (LAC, APS; alpha 0.1) against its
  own script's output on the same inputs (``tests/fixtures/conformal``, SOURCES.md there);
- the textbook split-conformal rule against MAPIE (LAC) and crepes (APS scores as non-conformity).
"""

from __future__ import annotations

import json
from pathlib import Path

import calibration as uncertainty_calibration
import numpy as np
import pytest
from crepes import ConformalClassifier
from mapie.classification import SplitConformalClassifier
from sklearn.base import BaseEstimator, ClassifierMixin

from conftest import own_global_state
from mmcal.analysis import metrics as m
from mmcal.analysis import stats

FIXTURE = Path(__file__).parent / "fixtures" / "conformal" / "llm_uncertainty_bench.json"


def _confidences(kind: str, seed: int, n: int):
    rng = np.random.default_rng(seed)
    if kind == "ties":  # few distinct values: equal-mass runs end inside tie groups
        conf = rng.choice([0.31, 0.5, 0.62, 0.75, 0.9, 1.0], n)
    elif kind == "near_one":
        conf = 1 - rng.exponential(1e-3, n).clip(0, 0.6)
    else:
        conf = rng.uniform(0.25, 1, n)
    return conf, (rng.random(n) < conf).astype(int)


@pytest.mark.parametrize("kind", ["random", "ties", "near_one"])
@pytest.mark.parametrize("n", [3, 9, 10, 11, 57, 400, 1001])
def test_helm_ece_equals_uncertainty_calibration(kind, n):
    conf, correct = _confidences(kind, n, n)
    ours = m.helm_ece(conf, correct)
    theirs = uncertainty_calibration.get_ece_em(conf, correct, num_bins=10)
    assert ours == pytest.approx(theirs, abs=1e-9)


@pytest.mark.parametrize("n", [1, 9, 10, 57, 400, 1001])
def test_helm_selective_accuracy_equals_uncertainty_calibration(n):
    conf, correct = _confidences("random", n + 100, n)  # distinct confidences: one order for both
    _, acc_top = uncertainty_calibration.get_selective_stats(conf, correct)
    assert m.helm_selective_accuracy(conf, correct) == pytest.approx(acc_top, abs=1e-9)


def test_helm_selective_accuracy_counts_floor_tenth_plus_one_and_shares_ties():
    conf = np.linspace(1, 0.05, 20)
    correct = np.array([1, 1, 0] + [1] * 17)
    assert m.helm_selective_accuracy(conf, correct) == pytest.approx(2 / 3)  # floor(2) + 1 = 3 rows
    # the third row ties with the fourth (one right, one wrong): half of it counts right
    conf[3] = conf[2]
    correct[3] = 1
    assert m.helm_selective_accuracy(conf, correct) == pytest.approx(2.5 / 3)


def test_conformal_sets_equal_llm_uncertainty_bench():
    data = json.loads(FIXTURE.read_text())
    for case in data["cases"]:
        width = max(len(p) for p in case["probs"])
        probs = np.array([p + [0.0] * (width - len(p)) for p in case["probs"]])  # padded like option_probs
        calib = np.array(case["calib"])
        assert (m.conformal_calib_mask(case["clusters"]) == calib).all()  # the split the script was given
        for score in ("lac", "aps"):
            ours = m.conformal_prediction(probs, case["gold"], calib, data["alpha"], score)
            theirs = case[score]
            assert ours["coverage"] == pytest.approx(theirs["coverage"], abs=1e-9), (case["name"], score)
            assert ours["set_size"] == pytest.approx(theirs["set_size"], abs=1e-9), (case["name"], score)
            sets = {str(i): np.flatnonzero(row).tolist() for i, row in zip(ours["test_rows"], ours["sets"])}
            assert sets == {k: sorted(v) for k, v in theirs["sets"].items()}
        # the summary's path (cluster ids -> halves -> bootstrap point value) gives the same numbers
        gold = np.array(case["gold"])
        out = m.compute_all(probs.max(1), probs.argmax(1) == gold, probs, gold, cluster_ids=case["clusters"])
        for score in ("lac", "aps"):
            assert out[f"conformal_{score}_coverage"] == pytest.approx(case[score]["coverage"], abs=1e-9)
            assert out[f"conformal_{score}_set_size"] == pytest.approx(case[score]["set_size"], abs=1e-9)


class _FixedProbabilities(ClassifierMixin, BaseEstimator):
    """A prefit classifier whose predict_proba returns given rows (X holds row numbers)."""

    def __init__(self, probs=None):
        self.probs = probs

    def fit(self, X, y):
        self.classes_ = np.arange(self.probs.shape[1])
        return self

    def predict_proba(self, X):
        return self.probs[np.asarray(X)[:, 0].astype(int)]

    def predict(self, X):
        return self.predict_proba(X).argmax(axis=1)


def _mcq(seed: int, n: int, k: int):
    """Option probabilities on a 2^-20 grid summing to exactly 1, so renormalising changes no bit and
    every running sum is exact (the last option's is 1.0 for every row: ties the tools must treat alike)."""
    rng = np.random.default_rng(seed)
    p = np.exp(rng.normal(size=(n, k)) * 1.5)
    q = np.floor(p / p.sum(axis=1, keepdims=True) * 2**20)
    q[:, -1] = 2**20 - q[:, :-1].sum(axis=1)
    p = q / 2**20
    gold = np.array([rng.choice(k, p=row) for row in p])
    return p, gold


@pytest.mark.parametrize("seed,n,k", [(0, 301, 4), (1, 523, 5), (2, 150, 2)])
def test_split_rule_lac_equals_mapie(seed, n, k):
    p, gold = _mcq(seed, n, k)
    calib = m.conformal_calib_mask(np.arange(n))
    # (n_calib + 1)(1 - alpha) must not be a whole number, where the rank rules of the tools meet
    assert ((calib.sum() + 1) * 0.9) % 1 > 1e-6
    ours = m.conformal_prediction(p, gold, calib, 0.1, "lac", rule="split")
    X = np.arange(n)[:, None]
    with own_global_state():  # mapie draws from numpy's global generator
        mapie = SplitConformalClassifier(
            estimator=_FixedProbabilities(p).fit(X, gold), confidence_level=0.9, conformity_score="lac", prefit=True
        )
        mapie.conformalize(X[calib], gold[calib])
        _, sets = mapie.predict_set(X[~calib])
    sets = sets[:, :, 0]
    assert (sets == ours["sets"]).all()
    assert ours["coverage"] == pytest.approx(sets[np.arange(len(sets)), gold[~calib]].mean(), abs=1e-9)
    assert ours["set_size"] == pytest.approx(sets.sum(axis=1).mean(), abs=1e-9)


@pytest.mark.parametrize("seed,n,k", [(0, 301, 4), (1, 523, 5), (3, 95, 3)])
def test_split_rule_aps_equals_crepes(seed, n, k):
    p, gold = _mcq(seed, n, k)
    calib = m.conformal_calib_mask(np.arange(n))
    assert ((calib.sum() + 1) * 0.9) % 1 > 1e-6
    # APS non-conformity of every option, written out here: the running sum down to it in descending order
    order = np.argsort(p, axis=1, kind="stable")[:, ::-1]  # descending, ties: the later option first
    aps = np.empty_like(p)
    np.put_along_axis(aps, order, np.cumsum(np.take_along_axis(p, order, axis=1), axis=1), axis=1)
    crepes = ConformalClassifier().fit(aps[calib][np.arange(calib.sum()), gold[calib]])
    sets = crepes.predict_set(aps[~calib], confidence=0.9, smoothing=False).astype(bool)
    ours = m.conformal_prediction(p, gold, calib, 0.1, "aps", rule="split")
    assert (sets == ours["sets"]).all()
    assert ours["coverage"] == pytest.approx(sets[np.arange(len(sets)), gold[~calib]].mean(), abs=1e-9)
    assert ours["set_size"] == pytest.approx(sets.sum(axis=1).mean(), abs=1e-9)


def test_llm_bench_rule_is_one_rank_above_the_textbook_and_never_empty():
    p, gold = _mcq(4, 200, 4)
    calib = m.conformal_calib_mask(np.arange(200))
    for score in ("lac", "aps"):
        bench = m.conformal_prediction(p, gold, calib, 0.1, score)
        split = m.conformal_prediction(p, gold, calib, 0.1, score, rule="split")
        s = np.sort(m.conformal_score(p, gold, calib, score).calib_sorted)
        rank = int(np.ceil((len(s) + 1) * 0.9))
        # numpy's "higher" quantile at ceil((n + 1)(1 - alpha)) / n is the next order statistic
        assert split["qhat"] == pytest.approx(s[rank - 1], rel=1e-12)
        assert bench["qhat"] == pytest.approx(s[rank], rel=1e-12)
        assert bench["sets"].any(axis=1).all() and bench["set_size"] >= split["set_size"]


def test_weighted_replicates_equal_repeated_rows():
    """A bootstrap replicate = the rows repeated by their weights; the conformal halves stay those of the
    original clusters (a cluster drawn twice stays on its side)."""
    rng = np.random.default_rng(6)
    n = 80
    probs = rng.dirichlet(np.ones(4) * 0.7, n)
    gold = rng.integers(0, 4, n)
    clusters = np.arange(n) // 2
    calib = m.conformal_calib_mask(clusters)
    conf, correct = probs.max(1), probs.argmax(1) == gold
    inputs = m.prepare(conf, correct, probs, gold, cluster_ids=clusters)
    weights = rng.integers(0, 3, (4, n)).astype(float)
    keys = ["helm_ece_10", "helm_acc_at_cov_10", *m.CONFORMAL_KEYS]
    reps = m.metric_replicates(inputs, weights, keys)
    for b in range(len(weights)):
        rows = np.repeat(np.arange(n), weights[b].astype(int))
        direct = m.compute_all(conf[rows], correct[rows])
        for key in ("helm_ece_10", "helm_acc_at_cov_10"):
            assert reps[key][b] == pytest.approx(direct[key], abs=1e-12), (key, b)
        for score in m.CONFORMAL_SCORES:
            sets = m.conformal_prediction(probs[rows], gold[rows], calib[rows], score=score)
            assert reps[f"conformal_{score}_coverage"][b] == pytest.approx(sets["coverage"], abs=1e-12)
            assert reps[f"conformal_{score}_set_size"][b] == pytest.approx(sets["set_size"], abs=1e-12)


def test_metric_cis_bracket_the_reported_metrics():
    probs, gold = _mcq(7, 300, 4)
    conf, correct = probs.max(1), probs.argmax(1) == gold
    out = stats.metric_cis(conf, correct, probs, gold, cluster_ids=np.arange(300) // 3, B=200, seed=0)
    for key in ("helm_ece_10", "helm_acc_at_cov_10", *m.CONFORMAL_KEYS):
        assert out[f"{key}_lo"] <= out[key] <= out[f"{key}_hi"], key


def test_conformal_metrics_need_option_probabilities():
    out = m.compute_all([0.6, 0.9, 0.4], [1, 1, 0])
    assert all(np.isnan(out[k]) for k in m.CONFORMAL_KEYS)
    assert np.isfinite(out["helm_ece_10"]) and np.isfinite(out["helm_acc_at_cov_10"])
