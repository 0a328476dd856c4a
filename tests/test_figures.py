"""Figures: every plotting function writes a non-empty PDF and PNG from small synthetic inputs
of the real table shapes, and the numbers the figures show are computed correctly."""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest

from mmcal import figures as F
from mmcal.errors import DataError
from mmcal.figures.style import metric_label, scenario_label
from mmcal.records import readout_row, to_frame

DPI = 60  # small PNGs keep the tests fast; the figures' layout does not depend on dpi
SUMMARY_METRICS = ["accuracy", "mean_confidence", "ece_10", "brier", "nll", "auroc", "mean_entropy"]


# ------------------------------------------------------------------------------------------------
# Synthetic inputs
# ------------------------------------------------------------------------------------------------


def make_records(
    models=("m-small", "m-large"),
    scenarios=("image",),
    prompts=("default",),
    dataset="fmnist",
    n_items=60,
    idk=False,
    seed=0,
) -> pd.DataFrame:
    """Records of the contract's shape. Each item has a fixed gold option across scenarios;
    ``image-shift<k>`` rotates the options by k (gold moves along, as in mmcal.engine.scenarios)."""
    rng = np.random.default_rng(seed)
    rows = []
    for m, model in enumerate(models):
        for scenario in scenarios:
            shift = int(scenario.rsplit("shift", 1)[1]) if "shift" in scenario else 0
            for prompt in prompts:
                for i in range(n_items):
                    kind = ("unknown_class", "no_information", "control")[i % 3] if idk else None
                    gold0 = 3 if idk and kind != "control" else i % (3 if idk else 4)
                    gold = (gold0 + shift) % 4
                    logits = rng.normal(0.0, 1.0, 4)
                    logits[gold] += 1.0 + m
                    full = logits - np.log(np.exp(logits).sum()) - 0.1
                    row = readout_row("letter_restricted", logits, gold, float(np.exp(full).sum()), full)
                    meta = {"class": gold0}
                    if shift:
                        meta["option_shift"] = shift
                    if idk:
                        meta.update(kind=kind, answerable=kind == "control", idk_index=3)
                    row.update(
                        item_id=f"it{i}",
                        cluster_id=f"c{i // 2}",
                        split="test",
                        model=model,
                        dataset=dataset,
                        scenario=scenario,
                        prompt=prompt,
                        prompt_hash="h",
                        model_fingerprint="f",
                        n_options=4,
                        meta=json.dumps(meta),
                        status="ok",
                    )
                    rows.append(row)
    return to_frame(rows)


def make_summary(scenarios=("image", "blind", "text-desc", "image-desc-consistent")) -> pd.DataFrame:
    rng = np.random.default_rng(1)
    rows = []
    for model in ("m-small", "m-large"):
        for scenario in scenarios:
            row = {
                "model": model,
                "dataset": "fmnist",
                "scenario": scenario,
                "prompt": "default",
                "readout": "letter_restricted",
                "n": 100,
                "n_unscorable": 0,
            }
            for metric in SUMMARY_METRICS:
                v = float(rng.uniform(0.1, 0.9))
                row.update({metric: v, f"{metric}_lo": v - 0.05, f"{metric}_hi": v + 0.05})
            rows.append(row)
    return pd.DataFrame(rows)


def make_comparisons() -> pd.DataFrame:
    rows = []
    for k, name in enumerate(["visual fine-tuning", "image vs blind"]):
        for metric in ["accuracy", "ece_10", "nll"]:
            d = 0.02 * (k + 1) * (-1) ** len(metric)
            rows.append(
                {
                    "comparison": name,
                    "metric": metric,
                    "a_label": "A",
                    "b_label": "B",
                    "n_paired": 100,
                    "value_a": 0.5,
                    "value_b": 0.5 + d,
                    "diff": d,
                    "diff_lo": d - 0.01,
                    "diff_hi": d + 0.01,
                    "p_value": 0.01,
                    "p_holm": 0.03 * (k + 1),
                    "tost_p": 0.4,
                    "margin": 0.02,
                    "equivalent": False,
                    "significant": k == 0,
                }
            )
    return pd.DataFrame(rows)


def make_idk_table(names=("admit_rate", "false_idk_rate")) -> pd.DataFrame:
    rows = []
    for m, model in enumerate(["m-small", "m-large"]):
        for p, prompt in enumerate(["idk-neutral", "idk-hint"]):
            row = {
                "model": model,
                "dataset": "idk",
                "scenario": "image",
                "prompt": prompt,
                "readout": "letter_restricted",
                "n_unknowable": 40,
                "n_answerable": 20,
            }
            for j, name in enumerate(names):
                v = 0.2 + 0.1 * m + 0.15 * p + 0.05 * j
                row.update({name: v, f"{name}_lo": v - 0.05, f"{name}_hi": v + 0.05})
            rows.append(row)
    return pd.DataFrame(rows)


def make_recal_table() -> pd.DataFrame:
    rows = []
    for model in ("m-small", "m-large"):
        for k, method in enumerate(["none", "temperature", "isotonic"]):
            ece = 0.15 / (k + 1)
            rows.append(
                {
                    "model": model,
                    "dataset": "fmnist",
                    "scenario": "image",
                    "prompt": "default",
                    "readout": "letter_restricted",
                    "recalibrator": method,
                    "params": json.dumps({"temperature": 1.7}) if method == "temperature" else "{}",
                    "accuracy": 0.7,
                    "accuracy_lo": 0.65,
                    "accuracy_hi": 0.75,
                    "ece_10": ece,
                    "ece_10_lo": ece - 0.02,
                    "ece_10_hi": ece + 0.02,
                }
            )
    return pd.DataFrame(rows)


def make_trajectory() -> pd.DataFrame:
    rows = []
    for r in range(3):
        for i in range(4):
            rows.append(
                {
                    "round": r,
                    "text": f"prompt {r}.{i}",
                    "source": "seed" if r == 0 else "paraphrase",
                    "parent": None,
                    "accuracy": 0.6 + 0.01 * i,
                    "ece_10": 0.2 / (r + 1) + 0.01 * i,
                    "rank": i + 1,
                    "survived": i < 2,
                }
            )
    return pd.DataFrame(rows)


BEST = {
    "text": "Answer with the letter.",
    "calib": {"accuracy": 0.62, "ece_10": 0.05},
    "test": {
        "accuracy": 0.6,
        "accuracy_lo": 0.55,
        "accuracy_hi": 0.65,
        "ece_10": 0.07,
        "ece_10_lo": 0.04,
        "ece_10_hi": 0.1,
    },
}


@pytest.fixture
def drawn(monkeypatch):
    """The figures the plotting functions draw, kept open to be read: ``save_figure`` writes each figure's files,
    then closes it (pyplot's close, held back here and done at the end)."""
    import matplotlib.pyplot as plt

    kept, close = [], plt.close
    monkeypatch.setattr(plt, "close", kept.append)
    yield kept
    for fig in kept:
        close(fig)


def errorbar_points(ax) -> np.ndarray:
    """The (x, y) of every errorbar's marker on ``ax``."""
    from matplotlib.container import ErrorbarContainer

    parts = [c.lines[0].get_xydata() for c in ax.containers if isinstance(c, ErrorbarContainer)]
    return np.concatenate(parts) if parts else np.empty((0, 2))


def assert_written(paths, stem):
    assert [p.name for p in paths] == [stem.name + ".pdf", stem.name + ".png"]
    for p in paths:
        assert p.exists() and p.stat().st_size > 1000, p
    assert paths[0].read_bytes().startswith(b"%PDF")
    assert paths[1].read_bytes().startswith(b"\x89PNG")


# ------------------------------------------------------------------------------------------------
# Every plotting function writes its files
# ------------------------------------------------------------------------------------------------


def test_reliability_single_group(tmp_path):
    records = make_records(models=("m-large",))
    stem = tmp_path / "reliability"
    assert_written(F.plot_reliability(records, stem, n_boot=50, dpi=DPI), stem)


def test_reliability_refuses_several_groups(tmp_path):
    with pytest.raises(ValueError, match="one group"):
        F.plot_reliability(make_records(), tmp_path / "x", dpi=DPI)


def test_reliability_groups_and_pair(tmp_path):
    records = make_records()
    paths = F.plot_reliability_groups(records, tmp_path, n_boot=20, dpi=DPI)
    assert len(paths) == 4
    assert paths[0].name == "reliability_m-large_fmnist_image_default_letter_restricted.pdf"
    stem = tmp_path / "pair"
    a, b = (records[records["model"] == m] for m in ("m-small", "m-large"))
    assert_written(F.plot_reliability_pair(a, b, stem, labels=("small", "large"), n_boot=20, dpi=DPI), stem)


def test_confidence_histograms(tmp_path, drawn):
    """One panel per model and scenario; its bars count that group's correct and incorrect items."""
    records = make_records(scenarios=("image", "blind"))
    stem = tmp_path / "hist"
    assert_written(F.plot_confidence_histograms(records, stem, dpi=DPI), stem)
    (fig,) = drawn
    panels = [ax for ax in fig.axes if ax.containers]
    counted = sorted(
        tuple(round(sum(bar.get_height() for bar in c)) for c in ax.containers if c[0].get_label() == name)
        for ax in panels
        for name in ("Correct", "Incorrect")
    )
    expected = sorted(
        (int((g["correct"] == is_correct).sum()),)
        for _, g in records.groupby(["model", "scenario"])
        for is_correct in (True, False)
    )
    assert len(panels) == 4 and counted == expected


def test_risk_coverage(tmp_path, drawn):
    """One curve per group: the coverage and risk of ``risk_coverage_curve``, its AURC in the legend."""
    records = make_records(scenarios=("image", "blind"))
    stem = tmp_path / "rc"
    assert_written(F.plot_risk_coverage(records, stem, dpi=DPI), stem)
    (fig,) = drawn
    lines = [line for line in fig.axes[0].get_lines() if not line.get_label().startswith("_")]
    curves = [F.risk_coverage_curve(g["confidence"], g["correct"]) for _, g in records.groupby(["model", "scenario"])]
    assert len(lines) == len(curves) == 4
    for curve in curves:
        matching = [
            line
            for line in lines
            if len(line.get_xdata()) == len(curve)
            and np.allclose(line.get_xydata(), curve[["coverage", "risk"]].to_numpy())
        ]
        assert len(matching) == 1 and f"(AURC {curve.attrs['aurc']:.3f})" in matching[0].get_label()


def test_forest(tmp_path, drawn):
    """A panel per metric, a row per comparison (first on top), the difference as a point: filled where the Holm
    p-value is below 0.05."""
    comparisons = make_comparisons()
    stem = tmp_path / "forest"
    assert_written(F.plot_forest(comparisons, stem, dpi=DPI), stem)
    (fig,) = drawn
    panels = [ax for ax in fig.axes if ax.get_title()]
    assert [ax.get_title() for ax in panels] == [metric_label(m) for m in ("accuracy", "ece_10", "nll")]
    assert [t.get_text() for t in panels[0].get_yticklabels()] == ["image vs blind", "visual fine-tuning"]
    for ax, metric in zip(panels, ("accuracy", "ece_10", "nll")):
        rows = comparisons[comparisons["metric"] == metric].set_index("comparison")
        points = {line.get_label(): line.get_xydata().tolist() for line in ax.get_lines() if line.get_marker() == "o"}
        # p_holm 0.03 (visual fine-tuning, top row) and 0.06 (image vs blind)
        assert points == {
            "Holm p < 0.05": [[rows.loc["visual fine-tuning", "diff"], 1.0]],
            "not significant": [[rows.loc["image vs blind", "diff"], 0.0]],
        }


def test_text_vs_image_skips_missing_metric(tmp_path, drawn):
    """A metric the summary lacks (entropy) gets no panel; the others show each model's value per scenario."""
    summary = make_summary().drop(columns=["mean_entropy", "mean_entropy_lo", "mean_entropy_hi"])
    stem = tmp_path / "ti"
    assert_written(F.plot_text_vs_image(summary, stem, dpi=DPI), stem)
    (fig,) = drawn
    panels = [ax for ax in fig.axes if ax.get_visible() and ax.get_xlabel()]
    metrics = ("accuracy", "mean_confidence")
    assert [ax.get_xlabel() for ax in panels] == [metric_label(m) for m in metrics]
    scenarios = ["image", "blind", "text-desc", "image-desc-consistent"]  # TEXT_IMAGE_SCENARIOS' order, top down
    assert [t.get_text() for t in panels[0].get_yticklabels()] == [scenario_label(s) for s in reversed(scenarios)]
    for ax, metric in zip(panels, metrics):
        assert sorted(errorbar_points(ax)[:, 0]) == pytest.approx(sorted(summary[metric]))


def test_entropy_shift_plot(tmp_path, drawn):
    """Per model and condition, the items' mean entropy change (the errorbar's point)."""
    records = make_records(scenarios=("image", "image-desc-consistent", "image-desc-conflicting"))
    stem = tmp_path / "es"
    assert_written(F.plot_entropy_shift(records, stem, n_boot=20, dpi=DPI), stem)
    (fig,) = drawn
    shifts = F.entropy_shift(records)
    means = shifts.groupby(["model", "condition"])["delta_entropy"].mean()
    assert sorted(errorbar_points(fig.axes[0])[:, 1]) == pytest.approx(sorted(means))


def test_position_bias(tmp_path):
    records = make_records(models=("m-large",), scenarios=("image", "image-shift1", "image-shift2", "image-shift3"))
    stem = tmp_path / "pos"
    assert_written(F.plot_position_bias(records, stem, n_boot=20, dpi=DPI), stem)


def test_idk_figures(tmp_path, drawn):
    table = make_idk_table()
    stem = tmp_path / "tradeoff"
    assert_written(F.plot_idk_tradeoff(table, stem, dpi=DPI), stem)
    # one point per model and prompt at (false IDK rate, admit rate)
    points = sorted(map(tuple, errorbar_points(drawn[0].axes[0]).round(9)))
    assert points == sorted(zip(table["false_idk_rate"].round(9), table["admit_rate"].round(9)))
    records = make_records(dataset="idk", prompts=("idk-neutral", "idk-hint"), idk=True)
    for value in ("confidence", "p_idk"):
        stem = tmp_path / f"idk_{value}"
        assert_written(F.plot_idk_confidence(records, stem, value=value, dpi=DPI), stem)


def test_recalibration_figures(tmp_path):
    from mmcal.calibration import apply_to_records, fit_on_records

    records = make_records(models=("m-large",), n_items=80)
    records["split"] = np.where(np.arange(len(records)) % 2 == 0, "calib", "test")
    recal = fit_on_records(records, "temperature", readout="letter_restricted", split="calib")
    test = records[records["split"] == "test"]
    after = apply_to_records(test, recal)
    stem = tmp_path / "recal_rel"
    assert_written(F.plot_recalibration_reliability(test, after, stem, n_boot=20, dpi=DPI), stem)
    stem = tmp_path / "recal_bar"
    assert_written(F.plot_recalibration_ece(make_recal_table(), stem, dpi=DPI), stem)


def test_prompt_trajectory(tmp_path):
    stem = tmp_path / "traj"
    assert_written(F.plot_prompt_trajectory(make_trajectory(), stem, best=BEST, dpi=DPI), stem)
    stem = tmp_path / "traj2"
    frames = {"m-small": make_trajectory(), "m-large": make_trajectory()}
    assert_written(F.plot_prompt_trajectory(frames, stem, dpi=DPI), stem)


def test_empty_input_is_a_clear_error(tmp_path):
    records = make_records()
    records["status"] = "image missing"
    with pytest.raises(ValueError, match="nothing to plot"):
        F.plot_confidence_histograms(records, tmp_path / "x", dpi=DPI)


# ------------------------------------------------------------------------------------------------
# The numbers behind the figures
# ------------------------------------------------------------------------------------------------


def test_reliability_bins_by_hand():
    # bins (0, .5], (.5, 1]: 0.3 and 0.5 fall in the first (0.5 is on its right edge)
    table = F.reliability_bins([0.3, 0.5, 0.9, 1.0], [1, 0, 1, 1], bins=2)
    assert table["count"].tolist() == [2, 2]
    assert table["accuracy"].tolist() == [0.5, 1.0]
    assert np.allclose(table["confidence"], [0.4, 0.95])


def test_reliability_panel_ece_is_that_of_its_bins():
    import matplotlib.pyplot as plt

    from mmcal.figures.reliability import draw_reliability

    records = pd.DataFrame(
        {
            "item_id": list("abcd"),
            "cluster_id": list("abcd"),
            "status": "ok",
            "confidence": [0.3, 0.5, 0.9, 1.0],
            "correct": [True, False, True, True],
        }
    )
    fig, (ax, ax_count) = plt.subplots(2)
    # bins (0, .5], (.5, 1]: |0.5 - 0.4| for two items, |1 - 0.95| for two
    assert draw_reliability(ax, ax_count, records, bins=2, n_boot=10) == pytest.approx((2 * 0.1 + 2 * 0.05) / 4)
    plt.close(fig)


def test_reliability_band_is_seeded_and_brackets_the_estimate():
    rng = np.random.default_rng(0)
    conf = rng.uniform(0.25, 1, 300)
    correct = rng.uniform(size=300) < conf
    clusters = np.arange(300) // 3
    lo, hi = F.reliability_band(conf, correct, clusters, bins=5, n_boot=100, seed=3)
    lo2, hi2 = F.reliability_band(conf, correct, clusters, bins=5, n_boot=100, seed=3)
    assert np.array_equal(lo, lo2, equal_nan=True) and np.array_equal(hi, hi2, equal_nan=True)
    acc = F.reliability_bins(conf, correct, 5)["accuracy"].to_numpy()
    filled = np.isfinite(acc)
    assert np.isnan(lo[0])  # nothing below 0.2
    assert np.all((lo[filled] <= acc[filled] + 1e-12) & (acc[filled] <= hi[filled] + 1e-12))


def test_risk_coverage_curve_with_ties():
    curve = F.risk_coverage_curve([0.9, 0.9, 0.6, 0.3], [1, 0, 1, 0])
    assert curve["coverage"].tolist() == [0.5, 0.75, 1.0]
    assert np.allclose(curve["risk"], [0.5, 1 / 3, 0.5])
    # each item is accepted at the risk of its tie group
    assert curve.attrs["aurc"] == pytest.approx((0.5 + 0.5 + 1 / 3 + 0.5) / 4)


def test_permutation_average_undoes_the_rotation():
    """A model that always puts 0.7 on letter A: every rotation's confidence is 0.7 but only the
    rotation with the gold at A is right; averaging over the 4 rotations (aligned back to the
    original options) gives a uniform distribution."""
    rows = []
    for k in range(4):
        scores = np.log([0.7, 0.1, 0.1, 0.1])
        gold = (2 + k) % 4
        rows.append(
            {
                "model": "m",
                "dataset": "d",
                "prompt": "p",
                "readout": "r",
                "item_id": "x",
                "cluster_id": "x",
                "scenario": f"image-shift{k}" if k else "image",
                "option_scores": list(scores),
                "confidence": 0.7,
                "pred": 0,
                "correct": gold == 0,
                "gold": gold,
                "status": "ok",
                "meta": json.dumps({"option_shift": k} if k else {}),
            }
        )
    out = F.permutation_average(pd.DataFrame(rows))
    assert len(out) == 1
    assert out["averaged_confidence"].iloc[0] == pytest.approx(0.25)
    assert out["mean_accuracy"].iloc[0] == pytest.approx(0.25)


def test_permutation_average_without_every_rotation_is_empty_with_its_columns(tmp_path):
    """Only shifts 0 and 1 of a 4-option item (the test study's grid): no item is averaged, the
    frame keeps its columns and the position-bias figure still renders the rotations it has."""
    rows = []
    for k in range(2):
        rows.append(
            {
                "model": "m",
                "dataset": "d",
                "prompt": "p",
                "readout": "letter_restricted",
                "item_id": "x",
                "cluster_id": "x",
                "scenario": f"image-shift{k}" if k else "image",
                "option_scores": list(np.log([0.7, 0.1, 0.1, 0.1])),
                "confidence": 0.7,
                "pred": 0,
                "correct": k == 0,
                "gold": (0 + k) % 4,
                "status": "ok",
                "meta": json.dumps({"option_shift": k} if k else {}),
            }
        )
    out = F.permutation_average(pd.DataFrame(rows))
    assert out.empty and out.attrs["left_out"] == 1
    assert {"model", "averaged_correct", "averaged_confidence", "cluster_id"} <= set(out.columns)
    F.plot_position_bias(pd.DataFrame(rows), tmp_path / "option_order", n_boot=10)
    assert (tmp_path / "option_order.png").exists()


def test_permutation_average_recovers_content_preference():
    """A model that prefers the gold *content* wherever it is put is right after averaging."""
    rows = []
    for k in range(4):
        p = np.roll([0.1, 0.6, 0.2, 0.1], k)  # original option 1 (the gold) moved to 1 + k
        rows.append(
            {
                "model": "m",
                "item_id": "x",
                "cluster_id": "x",
                "scenario": f"image-shift{k}",
                "option_scores": list(np.log(p)),
                "confidence": 0.6,
                "pred": (1 + k) % 4,
                "correct": True,
                "gold": (1 + k) % 4,
                "status": "ok",
                "meta": "{}",
            }
        )
    out = F.permutation_average(pd.DataFrame(rows))
    assert bool(out["averaged_correct"].iloc[0])
    assert out["averaged_confidence"].iloc[0] == pytest.approx(0.6)


def test_entropy_shift_matches_items():
    records = make_records(models=("m-large",), scenarios=("image", "image-desc-conflicting"), n_items=10)
    shifts = F.entropy_shift(records)
    assert set(shifts["condition"]) == {"conflicting"}
    assert len(shifts) == 10
    base = records[records["scenario"] == "image"].set_index("item_id")["entropy"]
    other = records[records["scenario"] == "image-desc-conflicting"].set_index("item_id")["entropy"]
    expected = (other - base).loc[shifts["item_id"]].to_numpy()
    assert np.allclose(shifts["delta_entropy"], expected)


def test_idk_items_reads_meta():
    records = make_records(models=("m",), dataset="idk", idk=True, n_items=6)
    items = F.idk_items(records)
    assert items["answerable"].tolist() == [False, False, True] * 2
    assert items["kind"].iloc[0] == "unknown_class"
    assert items["p_idk"].between(0, 1).all()
    # full-vocabulary letter probabilities 0.3, 0.1, 0.05, 0.05 (sum 0.5): P(IDK) renormalised = 0.1
    records.at[0, "option_scores"] = list(np.log([0.3, 0.1, 0.05, 0.05]))
    assert F.idk_items(records)["p_idk"].iloc[0] == pytest.approx(0.1)
    records.at[0, "meta"] = "{broken"
    with pytest.raises(DataError, match="'it0'"):  # never silently treated as no metadata
        F.idk_items(records)


def test_cluster_mean_ci_by_hand():
    from mmcal.figures.frames import cluster_mean_ci

    # one cluster: every replicate redraws it, so the interval is the mean itself
    assert cluster_mean_ci([0.2, 0.4], ["a", "a"], B=50) == pytest.approx((0.3, 0.3, 0.3))
    # two clusters of one item: replicate means are 0, 0.5 or 1; the interval spans them
    mean, lo, hi = cluster_mean_ci([0.0, 1.0], ["a", "b"], B=400, seed=1)
    assert (mean, lo, hi) == (0.5, 0.0, 1.0)


def test_model_colours_are_consistent():
    from mmcal.figures.style import model_color, set_model_order

    set_model_order(["b", "a"])
    assert model_color("b") != model_color("a")
    first = model_color("a")
    assert model_color("a") == first
