"""Self-assessment metrics on IDK data sets: does a model admit what it cannot know?

Input: records (see ``mmcal.records``) of one (model, dataset, scenario, prompt, readout) group,
whose ``meta`` JSON holds ``answerable`` (bool), ``idk_index`` (int or null) and ``kind``.
An item is *unknowable* when ``answerable`` is false; the model *abstains* when its prediction is
the IDK option. Metrics (rates are shares of items; NaN when the denominator is empty):

- ``admit_rate``: abstained among unknowable items (= abstention recall);
  ``admit_rate_<kind>`` for each unknowable kind (``unknown_class``, ``no_information``, ...).
- ``false_idk_rate``: abstained among answerable items.
- ``answerable_accuracy``: correct among answerable items; ``accuracy_all``: among all items.
- ``abstain_precision`` / ``abstain_recall`` / ``abstain_f1``: positive = abstained, truth =
  unknowable. F1 = 2TP / (2TP + FP + FN), so it is 0 (not NaN) when nothing was abstained on.
- ``confident_answer_rate_50`` / ``_80``: share of unknowable items answered (not IDK) with
  confidence >= 0.5 / 0.8 -- "gives an answer rather than admit uncertainty".
- ``answered_ece_10``: ECE (``mmcal.analysis.metrics``, 10 equal-width bins (b/10, (b+1)/10],
  confidence 0 in the first) of the answered answerable items; ``answered_accuracy`` alongside.
- ``idk_prob_unknowable`` / ``idk_prob_answerable``: mean exp(option_scores[idk_index]), the
  probability the readout puts on the IDK option.

These are the names the tables and figures use. Rows whose ``status`` is not ``"ok"`` were not
scored (``mmcal.records.scorable``): they are left out of every rate and counted in ``n_unscored``.

Every rate is a function of per-item sums, so the cluster bootstrap resamples clusters by drawing
multinomial cluster counts and recomputes all rates from count-weighted cluster sums in one
matrix product; the ECE takes the same draws as per-item weights (B = 1000 on a few hundred
clusters takes well under a second).
"""

from __future__ import annotations

import math

import numpy as np
import pandas as pd

from mmcal.analysis import metrics as m
from mmcal.analysis.stats import percentile_interval
from mmcal.errors import DataError
from mmcal.records import GROUP_KEYS, option_probs, parse_meta, scorable, select

THRESHOLDS = (0.5, 0.8)
N_BINS = 10
ECE_KEY = f"answered_ece_{N_BINS}"
ALWAYS_REPORTED_KINDS = ("unknown_class", "no_information")
REQUIRED_COLUMNS = (
    "item_id",
    "cluster_id",
    "pred",
    "correct",
    "confidence",
    "option_scores",
    "meta",
    "status",
)
COUNT_KEYS = (
    "n_items",
    "n_unscored",
    "n_clusters",
    "n_unknowable",
    "n_answerable",
    "n_abstained",
    "n_answered_answerable",
)


def threshold_key(t: float) -> str:
    return f"confident_answer_rate_{int(round(100 * t))}"


# ------------------------------------------------------------------------------------------
# Per-item table
# ------------------------------------------------------------------------------------------


def _idk_meta(value, item_id) -> dict:
    """The item's meta (``mmcal.records.parse_meta``), which an IDK item must give
    ``answerable`` and ``idk_index``."""
    meta = parse_meta(value, item_id)
    if "answerable" not in meta or "idk_index" not in meta:
        raise DataError(f"record of item {item_id!r}: meta lacks 'answerable' / 'idk_index' (is this an IDK data set?)")
    return meta


def item_table(df: pd.DataFrame) -> tuple[pd.DataFrame, int]:
    """Scored rows (``mmcal.records.scorable``) as a tidy table (cluster, kind, unknowable,
    abstained, correct, confidence, p_idk) and the number of unscored rows left out."""
    missing = [c for c in REQUIRED_COLUMNS if c not in df.columns]
    if missing:
        raise DataError(f"records lack columns {missing} needed for IDK metrics")
    scored = scorable(df)
    n_unscored = len(df) - len(scored)
    probs = option_probs(scored)
    widths = [len(s) for s in scored["option_scores"]]
    rows = []
    for i, (item_id, cluster, p, correct, conf, meta_raw) in enumerate(
        zip(
            scored["item_id"],
            scored["cluster_id"],
            scored["pred"],
            scored["correct"],
            scored["confidence"],
            scored["meta"],
        )
    ):
        meta = _idk_meta(meta_raw, item_id)
        idk = meta["idk_index"]
        unknowable = not bool(meta["answerable"])
        # exp(option_scores[idk_index]): NaN without an IDK option among the item's scores
        has_idk = idk is not None and 0 <= int(idk) < widths[i]
        rows.append(
            {
                "item_id": str(item_id),
                "cluster_id": str(cluster),
                "kind": str(meta.get("kind", "unknowable" if unknowable else "answerable")),
                "unknowable": unknowable,
                "abstained": idk is not None and int(p) == int(idk),
                "correct": bool(correct),
                "confidence": float(conf) if conf is not None else math.nan,
                "p_idk": float(probs[i, int(idk)]) if has_idk else math.nan,
            }
        )
    columns = ["item_id", "cluster_id", "kind", "unknowable", "abstained", "correct", "confidence", "p_idk"]
    return pd.DataFrame(rows, columns=columns), n_unscored


# ------------------------------------------------------------------------------------------
# Sufficient statistics: every rate is a ratio of sums over items
# ------------------------------------------------------------------------------------------


def _stat_columns(items: pd.DataFrame, thresholds) -> tuple[np.ndarray, list[str], list[str]]:
    """(items x stats matrix, stat names, unknowable kinds reported)."""
    unk = items["unknowable"].to_numpy(bool)
    ans = ~unk
    abst = items["abstained"].to_numpy(bool)
    correct = items["correct"].to_numpy(bool)
    conf = items["confidence"].to_numpy(float)
    p_idk = items["p_idk"].to_numpy(float)
    kinds = items["kind"].to_numpy(str)
    conf_ok = np.isfinite(conf)
    answered_ans = ans & ~abst
    cols: dict[str, np.ndarray] = {
        "n": np.ones(len(items)),
        "n_unk": unk,
        "n_ans": ans,
        "tp": abst & unk,
        "fp": abst & ans,
        "correct_all": correct,
        "correct_ans": correct & ans,
        "n_aa": answered_ans,
        "correct_aa": answered_ans & correct,
        "p_idk_unk_sum": np.where(unk & np.isfinite(p_idk), p_idk, 0.0),
        "p_idk_unk_n": unk & np.isfinite(p_idk),
        "p_idk_ans_sum": np.where(ans & np.isfinite(p_idk), p_idk, 0.0),
        "p_idk_ans_n": ans & np.isfinite(p_idk),
    }
    for t in thresholds:
        cols[f"unk_conf_ge_{t}"] = unk & ~abst & conf_ok & (np.nan_to_num(conf) >= t)
    unknowable_kinds = list(ALWAYS_REPORTED_KINDS) + sorted(set(kinds[unk]) - set(ALWAYS_REPORTED_KINDS))
    for kind in unknowable_kinds:
        of_kind = unk & (kinds == kind)
        cols[f"n_kind_{kind}"] = of_kind
        cols[f"abst_kind_{kind}"] = of_kind & abst
    names = list(cols)
    matrix = np.column_stack([np.asarray(cols[k], dtype=np.float64) for k in names])
    return matrix.reshape(len(items), len(names)), names, unknowable_kinds


def _answered_ece(items: pd.DataFrame, weights: np.ndarray) -> np.ndarray:
    """ECE of the answered answerable items with a confidence, per row of ``weights`` ([B, n]
    item weights): ``mmcal.analysis.metrics``' equal-width ECE with N_BINS bins."""
    conf = items["confidence"].to_numpy(float)
    rows = ~items["unknowable"].to_numpy(bool) & ~items["abstained"].to_numpy(bool) & np.isfinite(conf)
    inputs = m.prepare(conf[rows], items["correct"].to_numpy(bool)[rows], n_bins_list=(N_BINS,))
    return m.metric_replicates(inputs, weights[:, rows], keys=[f"ece_{N_BINS}"])[f"ece_{N_BINS}"]


def _ratio(num, den):
    num, den = np.asarray(num, float), np.asarray(den, float)
    with np.errstate(divide="ignore", invalid="ignore"):
        return np.where(den > 0, num / np.where(den > 0, den, 1.0), np.nan)


def _metrics_from_sums(sums: np.ndarray, names: list[str], thresholds, kinds, ece: np.ndarray) -> dict:
    """Metrics from summed statistics; ``sums`` is (K,) or (B, K) for B bootstrap replicates,
    ``ece`` the matching answered ECE (``_answered_ece``)."""
    s = {name: sums[..., j] for j, name in enumerate(names)}
    tp, fp = s["tp"], s["fp"]
    fn = s["n_unk"] - tp
    out = {
        "admit_rate": _ratio(tp, s["n_unk"]),
        "false_idk_rate": _ratio(fp, s["n_ans"]),
        "answerable_accuracy": _ratio(s["correct_ans"], s["n_ans"]),
        "accuracy_all": _ratio(s["correct_all"], s["n"]),
        "abstain_precision": _ratio(tp, tp + fp),
        "abstain_recall": _ratio(tp, s["n_unk"]),
        "abstain_f1": _ratio(2 * tp, 2 * tp + fp + fn),
    }
    for t in thresholds:
        out[threshold_key(t)] = _ratio(s[f"unk_conf_ge_{t}"], s["n_unk"])
    out[ECE_KEY] = ece.reshape(np.shape(tp))
    out["answered_accuracy"] = _ratio(s["correct_aa"], s["n_aa"])
    out["idk_prob_unknowable"] = _ratio(s["p_idk_unk_sum"], s["p_idk_unk_n"])
    out["idk_prob_answerable"] = _ratio(s["p_idk_ans_sum"], s["p_idk_ans_n"])
    for kind in kinds:
        out[f"admit_rate_{kind}"] = _ratio(s[f"abst_kind_{kind}"], s[f"n_kind_{kind}"])
    return out


def _cluster_sums(items: pd.DataFrame, matrix: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(clusters x stats) per-cluster sums, the unit the bootstrap resamples, and each item's
    cluster (row of the sums)."""
    codes, uniques = pd.factorize(items["cluster_id"], sort=True)
    out = np.zeros((len(uniques), matrix.shape[1]))
    np.add.at(out, codes, matrix)
    return out, codes


def _counts(items: pd.DataFrame, n_unscored: int) -> dict:
    unk = items["unknowable"].to_numpy(bool)
    abst = items["abstained"].to_numpy(bool)
    return {
        "n_items": int(len(items)),
        "n_unscored": n_unscored,
        "n_clusters": int(items["cluster_id"].nunique()),
        "n_unknowable": int(unk.sum()),
        "n_answerable": int((~unk).sum()),
        "n_abstained": int(abst.sum()),
        "n_answered_answerable": int((~unk & ~abst).sum()),
    }


# ------------------------------------------------------------------------------------------
# Public API
# ------------------------------------------------------------------------------------------


def idk_point_metrics(df: pd.DataFrame, thresholds=THRESHOLDS) -> dict:
    """Point estimates of the IDK metrics (see module docstring) for one records group."""
    items, n_unscored = item_table(df)
    matrix, names, kinds = _stat_columns(items, thresholds)
    return {**_counts(items, n_unscored), **_point_metrics(items, matrix, names, thresholds, kinds)}


def _point_metrics(items, matrix, names, thresholds, kinds) -> dict:
    ece = _answered_ece(items, np.ones((1, len(items))))
    metrics = _metrics_from_sums(matrix.sum(axis=0), names, thresholds, kinds, ece)
    return {k: float(v) for k, v in metrics.items()}


def idk_metrics_with_ci(
    df: pd.DataFrame, B: int = 1000, seed: int = 0, level: float = 0.95, thresholds=THRESHOLDS
) -> dict:
    """Point metrics plus ``<metric>_lo`` / ``<metric>_hi``: percentile CIs of a cluster bootstrap.

    Each replicate draws as many clusters as there are, with replacement (``cluster_id``); a
    metric's CI ignores replicates where it is undefined (e.g. no unknowable cluster drawn), and is
    NaN when it is undefined in all of them.
    """
    if not (0 < level < 1):
        raise ValueError(f"level must be in (0, 1), not {level}")
    items, n_unscored = item_table(df)
    matrix, names, kinds = _stat_columns(items, thresholds)
    point = _point_metrics(items, matrix, names, thresholds, kinds)
    out = {**_counts(items, n_unscored), **point}
    clusters, item_cluster = _cluster_sums(items, matrix)
    n_clusters = len(clusters)
    if n_clusters == 0 or B <= 0:
        reps = {k: np.full(1, np.nan) for k in point}
    else:
        rng = np.random.default_rng(seed)
        weights = rng.multinomial(n_clusters, np.full(n_clusters, 1.0 / n_clusters), size=B)
        ece = _answered_ece(items, weights[:, item_cluster].astype(np.float64))
        reps = _metrics_from_sums(weights @ clusters, names, thresholds, kinds, ece)
    for key, values in reps.items():
        out[f"{key}_lo"], out[f"{key}_hi"] = percentile_interval(values, level)
    out["bootstrap_B"] = int(B)
    out["ci_level"] = float(level)
    return out


def idk_table(
    records: pd.DataFrame,
    group_cols=GROUP_KEYS,
    split: str | None = "test",
    ci: bool = True,
    **kw,
) -> pd.DataFrame:
    """One row of IDK metrics per group of ``records``.

    ``split``: only rows of that split are used (prompts are tuned on ``calib``; report ``test``);
    ``None`` uses all rows. ``ci``: with bootstrap CIs (``kw`` go to ``idk_metrics_with_ci``:
    ``B``, ``seed``, ``level``, ``thresholds``), else point metrics only (``kw``: ``thresholds``).
    """
    group_cols = list(group_cols)
    missing = [c for c in group_cols if c not in records.columns]
    if missing:
        raise DataError(f"records lack the grouping columns {missing}")
    df = records
    if split is not None:
        if "split" not in records.columns:
            raise DataError(f"records have no 'split' column to select split {split!r}")
        df = select(records, split=split)
    rows = []
    for keys, group in df.groupby(group_cols, sort=True, dropna=False):
        keys = keys if isinstance(keys, tuple) else (keys,)
        metrics = idk_metrics_with_ci(group, **kw) if ci else idk_point_metrics(group, **kw)
        rows.append({**dict(zip(group_cols, keys)), **metrics})
    if not rows:
        return pd.DataFrame(columns=group_cols + list(COUNT_KEYS))
    return pd.DataFrame(rows)
