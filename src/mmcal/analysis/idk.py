"""Self-assessment metrics on IDK data sets: does a model admit what it cannot know?

Input: records (see ``mmcal.records``) of one (model, dataset, scenario, prompt, readout) group,
whose ``meta`` JSON holds ``answerable`` (bool), ``idk_index`` (int or null) and ``kind``.
An item is *unknowable* when ``answerable`` is false; the model *abstains* when its prediction is
the IDK option. Metrics (rates are shares of items; NaN when the denominator is empty):

- ``admit_rate``: abstained among unknowable items (= abstention recall);
  ``admit_rate_<kind>`` for each unknowable kind (``unknown_class``, ``no_information``, ...).
- ``false_idk_rate``: abstained among answerable items.
- ``accuracy_answerable``: correct among answerable items; ``accuracy_all``: among all items.
- ``abstain_precision`` / ``abstain_recall`` / ``abstain_f1``: positive = abstained, truth =
  unknowable. F1 = 2TP / (2TP + FP + FN), so it is 0 (not NaN) when nothing was abstained on.
- ``unknowable_answered_conf_ge_50`` / ``_80``: share of unknowable items answered (not IDK) with
  confidence >= 0.5 / 0.8 -- "gives an answer rather than admit uncertainty".
- ``ece_answered``: ECE with 10 equal-width bins on the answered answerable items; bins
  (b/10, (b+1)/10], confidence 0 in the first, the convention of ``mmcal.analysis.metrics`` (computed
  here, not imported); ``accuracy_answered_answerable`` alongside.
- ``mean_p_idk_unknowable`` / ``mean_p_idk_answerable``: mean exp(option_scores[idk_index]), the
  probability the readout puts on the IDK option.

Rows whose ``status`` is not ``"ok"`` (or ``pred < 0``) were not scored: they are left out of
every rate and counted in ``n_unscored``.

Every rate is a function of per-item sums, so the cluster bootstrap resamples clusters by drawing
multinomial cluster counts and recomputes all metrics from count-weighted cluster sums in one
matrix product (B = 1000 on a few hundred clusters takes well under a second).
"""

from __future__ import annotations

import json
import math
import warnings

import numpy as np
import pandas as pd

from mmcal.errors import DataError

THRESHOLDS = (0.5, 0.8)
N_BINS = 10
ALWAYS_REPORTED_KINDS = ("unknown_class", "no_information")
GROUP_COLS = ("model", "dataset", "scenario", "prompt", "readout")
REQUIRED_COLUMNS = (
    "item_id",
    "cluster_id",
    "pred",
    "correct",
    "confidence",
    "option_scores",
    "meta",
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
    return f"unknowable_answered_conf_ge_{int(round(100 * t))}"


# ------------------------------------------------------------------------------------------
# Per-item table
# ------------------------------------------------------------------------------------------


def _parse_meta(value, item_id) -> dict:
    if isinstance(value, dict):
        meta = value
    else:
        try:
            meta = json.loads(value)
        except (TypeError, json.JSONDecodeError):
            raise DataError(f"record of item {item_id!r}: meta is not a JSON object") from None
    if not isinstance(meta, dict) or "answerable" not in meta or "idk_index" not in meta:
        raise DataError(
            f"record of item {item_id!r}: meta lacks 'answerable' / 'idk_index' "
            "(is this an IDK data set?)"
        )
    return meta


def _idk_probability(option_scores, idk_index) -> float:
    """exp(option_scores[idk_index]); NaN without an IDK option or scores."""
    if idk_index is None or option_scores is None:
        return math.nan
    scores = list(option_scores)
    if not (0 <= int(idk_index) < len(scores)):
        return math.nan
    return math.exp(float(scores[int(idk_index)]))


def item_table(df: pd.DataFrame) -> tuple[pd.DataFrame, int]:
    """Scored rows as a tidy table (cluster, kind, unknowable, abstained, correct, confidence,
    p_idk) and the number of unscored rows left out."""
    missing = [c for c in REQUIRED_COLUMNS if c not in df.columns]
    if missing:
        raise DataError(f"records lack columns {missing} needed for IDK metrics")
    pred = pd.to_numeric(df["pred"], errors="coerce").fillna(-1).astype(int)
    scored = pred >= 0
    if "status" in df.columns:
        scored &= df["status"].astype(str).eq("ok")
    n_unscored = int((~scored).sum())
    rows = []
    for item_id, cluster, p, correct, conf, scores, meta_raw in zip(
        df["item_id"][scored],
        df["cluster_id"][scored],
        pred[scored],
        df["correct"][scored],
        df["confidence"][scored],
        df["option_scores"][scored],
        df["meta"][scored],
    ):
        meta = _parse_meta(meta_raw, item_id)
        idk = meta["idk_index"]
        unknowable = not bool(meta["answerable"])
        rows.append(
            {
                "item_id": str(item_id),
                "cluster_id": str(cluster),
                "kind": str(meta.get("kind", "unknowable" if unknowable else "answerable")),
                "unknowable": unknowable,
                "abstained": idk is not None and int(p) == int(idk),
                "correct": bool(correct),
                "confidence": float(conf) if conf is not None else math.nan,
                "p_idk": _idk_probability(scores, idk),
            }
        )
    columns = ["item_id", "cluster_id", "kind", "unknowable", "abstained", "correct", "confidence", "p_idk"]
    return pd.DataFrame(rows, columns=columns), n_unscored


# ------------------------------------------------------------------------------------------
# Sufficient statistics: every metric is a ratio of sums over items
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
        "n_aa_conf": answered_ans & conf_ok,
        "p_idk_unk_sum": np.where(unk & np.isfinite(p_idk), p_idk, 0.0),
        "p_idk_unk_n": unk & np.isfinite(p_idk),
        "p_idk_ans_sum": np.where(ans & np.isfinite(p_idk), p_idk, 0.0),
        "p_idk_ans_n": ans & np.isfinite(p_idk),
    }
    for t in thresholds:
        cols[f"unk_conf_ge_{t}"] = unk & ~abst & conf_ok & (np.nan_to_num(conf) >= t)
    bins = equal_width_bins(np.nan_to_num(conf), N_BINS)
    in_ece = answered_ans & conf_ok
    for b in range(N_BINS):
        sel = in_ece & (bins == b)
        cols[f"bin{b}_conf"] = np.where(sel, conf, 0.0)
        cols[f"bin{b}_correct"] = sel & correct
    unknowable_kinds = list(ALWAYS_REPORTED_KINDS) + sorted(
        set(kinds[unk]) - set(ALWAYS_REPORTED_KINDS)
    )
    for kind in unknowable_kinds:
        of_kind = unk & (kinds == kind)
        cols[f"n_kind_{kind}"] = of_kind
        cols[f"abst_kind_{kind}"] = of_kind & abst
    names = list(cols)
    matrix = np.column_stack([np.asarray(cols[k], dtype=np.float64) for k in names])
    return matrix.reshape(len(items), len(names)), names, unknowable_kinds


def equal_width_bins(confidence: np.ndarray, n_bins: int) -> np.ndarray:
    """Bin index for bins (b/M, (b+1)/M], b = 0..M-1; a confidence of 0 goes to bin 0."""
    edges = np.arange(n_bins + 1) / n_bins
    return np.clip(np.searchsorted(edges, confidence, side="left") - 1, 0, n_bins - 1)


def _ratio(num, den):
    num, den = np.asarray(num, float), np.asarray(den, float)
    with np.errstate(divide="ignore", invalid="ignore"):
        return np.where(den > 0, num / np.where(den > 0, den, 1.0), np.nan)


def _metrics_from_sums(sums: np.ndarray, names: list[str], thresholds, kinds) -> dict:
    """Metrics from summed statistics; ``sums`` is (K,) or (B, K) for B bootstrap replicates."""
    s = {name: sums[..., j] for j, name in enumerate(names)}
    tp, fp = s["tp"], s["fp"]
    fn = s["n_unk"] - tp
    ece_gap = sum(np.abs(s[f"bin{b}_correct"] - s[f"bin{b}_conf"]) for b in range(N_BINS))
    out = {
        "admit_rate": _ratio(tp, s["n_unk"]),
        "false_idk_rate": _ratio(fp, s["n_ans"]),
        "accuracy_answerable": _ratio(s["correct_ans"], s["n_ans"]),
        "accuracy_all": _ratio(s["correct_all"], s["n"]),
        "abstain_precision": _ratio(tp, tp + fp),
        "abstain_recall": _ratio(tp, s["n_unk"]),
        "abstain_f1": _ratio(2 * tp, 2 * tp + fp + fn),
    }
    for t in thresholds:
        out[threshold_key(t)] = _ratio(s[f"unk_conf_ge_{t}"], s["n_unk"])
    out["ece_answered"] = _ratio(ece_gap, s["n_aa_conf"])
    out["accuracy_answered_answerable"] = _ratio(s["correct_aa"], s["n_aa"])
    out["mean_p_idk_unknowable"] = _ratio(s["p_idk_unk_sum"], s["p_idk_unk_n"])
    out["mean_p_idk_answerable"] = _ratio(s["p_idk_ans_sum"], s["p_idk_ans_n"])
    for kind in kinds:
        out[f"admit_rate_{kind}"] = _ratio(s[f"abst_kind_{kind}"], s[f"n_kind_{kind}"])
    return out


def _cluster_sums(items: pd.DataFrame, matrix: np.ndarray) -> np.ndarray:
    """(clusters x stats): per-cluster sums, the unit the bootstrap resamples."""
    codes, uniques = pd.factorize(items["cluster_id"], sort=True)
    out = np.zeros((len(uniques), matrix.shape[1]))
    np.add.at(out, codes, matrix)
    return out


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
    metrics = _metrics_from_sums(matrix.sum(axis=0), names, thresholds, kinds)
    return {**_counts(items, n_unscored), **{k: float(v) for k, v in metrics.items()}}


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
    point = _metrics_from_sums(matrix.sum(axis=0), names, thresholds, kinds)
    out = {**_counts(items, n_unscored), **{k: float(v) for k, v in point.items()}}
    clusters = _cluster_sums(items, matrix)
    n_clusters = len(clusters)
    if n_clusters == 0 or B <= 0:
        reps = {k: np.full(1, np.nan) for k in point}
    else:
        rng = np.random.default_rng(seed)
        weights = rng.multinomial(n_clusters, np.full(n_clusters, 1.0 / n_clusters), size=B)
        reps = _metrics_from_sums(weights @ clusters, names, thresholds, kinds)
    alpha = (1.0 - level) / 2.0
    for key, values in reps.items():
        lo, hi = _percentile_interval(values, alpha)
        out[f"{key}_lo"], out[f"{key}_hi"] = lo, hi
    out["bootstrap_B"] = int(B)
    out["ci_level"] = float(level)
    return out


def _percentile_interval(values: np.ndarray, alpha: float) -> tuple[float, float]:
    finite = values[np.isfinite(values)]
    if finite.size == 0:
        return math.nan, math.nan
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)
        lo, hi = np.percentile(finite, [100 * alpha, 100 * (1 - alpha)])
    return float(lo), float(hi)


def idk_table(
    records: pd.DataFrame,
    group_cols=GROUP_COLS,
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
        df = records[records["split"] == split]
    rows = []
    for keys, group in df.groupby(group_cols, sort=True, dropna=False):
        keys = keys if isinstance(keys, tuple) else (keys,)
        metrics = idk_metrics_with_ci(group, **kw) if ci else idk_point_metrics(group, **kw)
        rows.append({**dict(zip(group_cols, keys)), **metrics})
    if not rows:
        return pd.DataFrame(columns=group_cols + list(COUNT_KEYS))
    return pd.DataFrame(rows)
