"""Records -> metric tables: per-group metrics with intervals, and paired comparisons.

``summarize`` gives one row per (model, dataset, scenario, prompt, readout) with every metric of
``mmcal.analysis.metrics.compute_all`` and its cluster-bootstrap interval. ``compare`` matches two groups
item by item and tests the differences, with Holm's correction over the whole table.

Rows with ``status != "ok"`` are counted (``n_unscorable``) and left out of every metric; a
comparison uses the items scorable on both sides. Option probabilities are exp(option_scores);
a group whose rows have different numbers of options is padded with probability 0.

A readout without a confidence (``mmcal.records.NO_CONFIDENCE_READOUTS``: ``generated``, a harness log
with only the generated answer) gets accuracy and its interval only; every other metric is NaN and the
column ``unavailable`` says which and why (it is empty for the other groups).

``letter_greedy`` rows without a letter (:func:`mmcal.records.no_letter`) follow ``no_letter``
(config ``metrics.no_letter``): ``keep`` (default: counted as wrong, with the confidence
:mod:`mmcal.records` defines) or ``drop`` (left out, as the reference study's released code did; in a
comparison the item then leaves both sides, since items are paired). :func:`no_letter_summary` gives
every letter_greedy group under both policies, so one run yields both numbers.
"""

from __future__ import annotations

import warnings

import numpy as np
import pandas as pd

from mmcal.analysis import metrics as m
from mmcal.analysis import stats
from mmcal.records import (
    ALL_SPLITS,
    GREEDY_READOUT,
    GROUP_KEYS,
    NO_CONFIDENCE_READOUTS,
    NO_LETTER_POLICIES,
    apply_no_letter,
    in_split,
    metric_arrays,
    no_letter,
    scorable,
    select,
)

DEFAULT_COMPARE_METRICS = ("accuracy", "ece_10", "ece_debiased", "smece", "brier", "nll", "auroc")
COMPARE_COLUMNS = [
    "comparison",
    "metric",
    "a_label",
    "b_label",
    "n_paired",
    "value_a",
    "value_b",
    "diff",
    "diff_lo",
    "diff_hi",
    "p_value",
    "p_holm",
    "tost_p",
    "margin",
    "equivalent",
    "significant",
]
_NOT_FILTERS = {"name", "a", "b", "where", "margin", "a_label", "b_label", "holm_family"}
MAIN_FAMILY = "main"


# ---------------------------------------------------------------------------------------------
# Records -> arrays


def group_arrays(frame: pd.DataFrame) -> tuple[dict, np.ndarray]:
    """Metric inputs (confidence, correct, probs, gold) and cluster ids of scorable rows."""
    data = metric_arrays(frame)
    if len(frame) and frame["readout"].isin(NO_CONFIDENCE_READOUTS).all():
        return data, frame["cluster_id"].to_numpy()  # accuracy only (summarize); no confidence to check
    if np.isnan(data["confidence"]).any():
        ids = frame.index if "item_id" not in frame.columns else frame["item_id"]
        bad = list(ids[np.isnan(data["confidence"])])[:5]
        raise ValueError(f"rows with status 'ok' but NaN confidence (items {bad}): records are malformed")
    return data, frame["cluster_id"].to_numpy()


# ---------------------------------------------------------------------------------------------
# summarize


def summarize(
    records: pd.DataFrame,
    B: int = 1000,
    seed: int = 0,
    level: float = 0.95,
    split: str | None = "test",
    smece_test: bool = True,
    no_letter: str = "keep",
) -> pd.DataFrame:
    """One row per (model, dataset, scenario, prompt, readout) of the records in ``split``.

    Columns: the group keys, ``split`` (the split the row was computed on: ``split``, or
    ``"all"`` when ``split`` is None or "all" and every row counts), ``n`` (rows with status
    ok, less no-letter rows under ``no_letter="drop"``), ``n_unscorable`` (other rows), every metric of
    ``compute_all`` with
    ``<metric>_lo``/``<metric>_hi`` (cluster-bootstrap percentile interval at ``level``; see
    ``mmcal.analysis.stats``), and, with ``smece_test``, ``smece_p_calibrated``
    (consistency-resampling p-value of perfect calibration). Each group's bootstrap seed is
    derived from ``seed`` and the group key with SHA-256, so a group's numbers do not depend on
    which other groups are in the table.
    """
    frame = in_split(records, split)
    rows = []
    for key, group in frame.groupby(list(GROUP_KEYS), sort=True, dropna=False):
        scored = scorable(group)
        ok = apply_no_letter(scored, no_letter)
        data, clusters = group_arrays(ok)
        group_seed = stats.derive_seed(seed, *key)
        row = dict(zip(GROUP_KEYS, key))
        row["split"] = ALL_SPLITS if split is None else split
        row["n_unscorable"] = int(len(group) - len(scored))
        readout = row["readout"]
        if readout in NO_CONFIDENCE_READOUTS:
            no_confidence = np.zeros(len(ok))  # not used by accuracy, which is all there is
            cis = stats.metric_cis(
                no_confidence,
                data["correct"],
                cluster_ids=clusters,
                B=B,
                seed=group_seed,
                level=level,
                keys=["accuracy"],
            )
            row.update(cis)
            row["unavailable"] = UNAVAILABLE.format(readout=readout)
        else:
            row.update(stats.metric_cis(**data, cluster_ids=clusters, B=B, seed=group_seed, level=level))
            row["unavailable"] = ""
        if smece_test and readout not in NO_CONFIDENCE_READOUTS:
            test = stats.smece_calibration_test(data["confidence"], data["correct"], B, group_seed)
            row["smece_p_calibrated"] = test["p_value"]
        rows.append(row)
    columns = [*GROUP_KEYS, "split", "n", "n_unscorable", *_metric_columns()]
    if smece_test:
        columns.append("smece_p_calibrated")
    return pd.DataFrame(rows, columns=[*columns, "unavailable"])


UNAVAILABLE = (
    "every metric but accuracy: readout {readout!r} has no confidence (the harness logged only the generated answer)"
)


def no_letter_summary(
    records: pd.DataFrame, B: int = 1000, seed: int = 0, level: float = 0.95, split: str | None = "test"
) -> pd.DataFrame:
    """Every letter_greedy group under both no-letter policies: the group keys, ``split``,
    ``no_letter_policy`` (keep | drop), ``n`` (rows the metrics use), ``n_no_letter`` (rows without a
    letter, in both policies' rows) and the metrics with intervals, as in :func:`summarize` (same
    bootstrap seed per group, so the ``keep`` row equals the summary's row under ``keep``)."""
    frame = in_split(records, split)
    frame = frame[frame["readout"] == GREEDY_READOUT] if len(frame) else frame
    rows = []
    for key, group in frame.groupby(list(GROUP_KEYS), sort=True, dropna=False):
        scored = scorable(group)
        for policy in NO_LETTER_POLICIES:
            data, clusters = group_arrays(apply_no_letter(scored, policy))
            row = dict(zip(GROUP_KEYS, key))
            row.update(split=ALL_SPLITS if split is None else split, no_letter_policy=policy)
            row["n_no_letter"] = int(no_letter(scored).sum())
            row.update(
                stats.metric_cis(**data, cluster_ids=clusters, B=B, seed=stats.derive_seed(seed, *key), level=level)
            )
            rows.append(row)
    columns = [*GROUP_KEYS, "split", "no_letter_policy", "n", "n_no_letter", *_metric_columns()]
    return pd.DataFrame(rows, columns=columns)


def _metric_columns() -> list[str]:
    return [c for k in m.METRIC_KEYS if k != "n" for c in (k, f"{k}_lo", f"{k}_hi")]


# ---------------------------------------------------------------------------------------------
# compare


def compare(
    records: pd.DataFrame,
    comparisons: list[dict],
    B: int = 1000,
    seed: int = 0,
    level: float = 0.95,
    margin_default: float | dict | None = None,
    metrics=DEFAULT_COMPARE_METRICS,
    split: str | None = "test",
    no_letter: str = "keep",
) -> pd.DataFrame:
    """Paired comparisons of groups, one row per (comparison, metric); columns COMPARE_COLUMNS.

    Each comparison dict has ``name``, ``a`` and ``b`` (column filters of each side, e.g.
    ``{"model": "tiny-llava-stage1", "scenario": "image"}``), optional ``a_label``/``b_label``,
    optional ``margin`` (a number, or ``{metric: number}``), and filters shared by both sides
    (``readout``, ``dataset``, ...) either under ``where`` or as further top-level keys. A filter
    value that is a list means "one of".
    Each side must select at most one scorable row per item; items are matched by ``item_id``
    (inner join, ``n_paired``). ``diff`` = B - A with the tests of ``stats.paired_difference``;
    ``p_holm`` is Holm's adjustment over every row of the comparison's ``holm_family`` (optional key;
    default: one family, ``main``; a methods check such as ours-vs-reference protocol is a family of its
    own, so adding it leaves the study's p-values as they were); ``significant`` =
    p_holm < alpha and ``equivalent`` = TOST p < alpha, alpha = 1 - level. Without a margin
    ``tost_p``/``margin`` are NaN and ``equivalent`` is False.

    Resolution: a bootstrap p-value is at least 2 / (B + 1), so with m rows in a family the smallest
    possible ``p_holm`` is 2 m / (B + 1); a warning says when that is not below alpha (choose
    B > 2 m / alpha, e.g. B = 3000 for 70 rows at alpha = 0.05).
    """
    frame = apply_no_letter(scorable(in_split(records, split)), no_letter)
    rows, families = [], []
    for comparison in comparisons:
        new = _compare_one(frame, comparison, B, seed, level, margin_default, list(metrics))
        rows += new
        families += [comparison.get("holm_family", MAIN_FAMILY)] * len(new)
    table = pd.DataFrame(rows, columns=COMPARE_COLUMNS)
    alpha = 1 - level
    families = np.array(families, dtype=object)
    for family in dict.fromkeys(families):
        members = families == family
        _warn_if_holm_cannot_reach_alpha(int(members.sum()), B, alpha)
        table.loc[members, "p_holm"] = stats.holm(table.loc[members, "p_value"].to_numpy(dtype=float))
    table["significant"] = (table["p_holm"] < alpha).astype(bool)
    table["equivalent"] = table["equivalent"].astype(bool)
    return table


def _warn_if_holm_cannot_reach_alpha(n_tests: int, B: int, alpha: float) -> None:
    """A bootstrap p-value is at least 2 / (B + 1), so Holm's smallest is n_tests times that."""
    floor = 2 * n_tests / (B + 1)
    if n_tests and floor >= alpha:
        warnings.warn(
            f"with B={B} replicates and {n_tests} tests no Holm-adjusted p-value can fall below "
            f"{floor:.3g} >= alpha={alpha:.3g}; use B > {int(np.ceil(2 * n_tests / alpha))}",
            stacklevel=3,
        )


def _compare_one(frame, comparison, B, seed, level, margin_default, metrics) -> list[dict]:
    name = comparison["name"]
    shared = {**comparison.get("where", {}), **{k: v for k, v in comparison.items() if k not in _NOT_FILTERS}}
    side_a = _comparison_side(frame, {**shared, **comparison["a"]}, name, "a")
    side_b = _comparison_side(frame, {**shared, **comparison["b"]}, name, "b")
    common = side_a.index.intersection(side_b.index).sort_values()
    data_a, clusters = group_arrays(side_a.loc[common])
    data_b, _ = group_arrays(side_b.loc[common])
    if any(side["readout"].isin(NO_CONFIDENCE_READOUTS).any() for side in (side_a, side_b)):
        metrics = [k for k in metrics if k == "accuracy"]  # a side without confidence: accuracy only
        for data in (data_a, data_b):
            data.update(confidence=np.zeros(len(common)), probs=None, gold=None)
    margins = {k: _margin(k, comparison.get("margin"), margin_default) for k in metrics}
    results = stats.paired_metric_differences(
        data_a,
        data_b,
        clusters,
        metrics,
        B=B,
        seed=stats.derive_seed(seed, name),
        level=level,
        margins=margins,
    )
    a_label = comparison.get("a_label") or _label(comparison["a"])
    b_label = comparison.get("b_label") or _label(comparison["b"])
    return [
        {
            "comparison": name,
            "metric": k,
            "a_label": a_label,
            "b_label": b_label,
            "n_paired": len(common),
            "value_a": r["value_a"],
            "value_b": r["value_b"],
            "diff": r["diff"],
            "diff_lo": r["lo"],
            "diff_hi": r["hi"],
            "p_value": r["p_value"],
            "p_holm": np.nan,
            "tost_p": r["tost_p"],
            "margin": r["margin"],
            "equivalent": r["equivalent"],
            "significant": False,
        }
        for k, r in results.items()
    ]


def _comparison_side(frame: pd.DataFrame, filters: dict, name: str, side: str) -> pd.DataFrame:
    """Rows matching ``filters``, indexed by item_id; one row per item or a clear error."""
    unknown = [column for column in filters if column not in frame.columns]
    if unknown:
        raise ValueError(f"comparison {name!r}: filter on unknown column {unknown[0]!r}")
    rows = select(frame, **filters)
    duplicated = rows["item_id"].duplicated()
    if duplicated.any():
        item = rows.loc[duplicated, "item_id"].iloc[0]
        raise ValueError(
            f"comparison {name!r}, side {side}: several rows for item {item!r}; "
            "add filters (readout, prompt, scenario, ...) so each side is one group"
        )
    return rows.set_index("item_id")


def _margin(metric: str, own, default) -> float | None:
    for source in (own, default):
        if isinstance(source, dict):
            if metric in source:
                return float(source[metric])
        elif source is not None:
            return float(source)
    return None


def _label(filters: dict) -> str:
    return ", ".join(f"{k}={v}" for k, v in filters.items())
