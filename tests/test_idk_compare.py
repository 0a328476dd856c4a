"""Paired IDK comparisons: a prompt that doubles admissions is detected; an identical one is not."""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest

from mmcal.analysis.idk_comparisons import idk_paired


def _records(rates: dict, n: int = 200, seed: int = 0) -> pd.DataFrame:
    rng = np.random.default_rng(seed)
    rows = []
    for prompt, p_admit in rates.items():
        for i in range(n):
            unknowable = i < n // 2
            abstain = rng.random() < (p_admit if unknowable else 0.05)
            pred = 3 if abstain else 0
            rows.append(
                dict(
                    item_id=f"i{i}",
                    cluster_id=f"c{i // 2}",
                    split="test",
                    model="m",
                    dataset="idk",
                    scenario="image",
                    prompt=prompt,
                    readout="letter_restricted",
                    pred=pred,
                    correct=(pred == 3) if unknowable else (pred == 0),
                    confidence=0.7,
                    option_scores=[np.log(0.7)] + [np.log(0.1)] * 3,
                    status="ok",
                    meta=json.dumps(
                        {
                            "answerable": not unknowable,
                            "idk_index": 3,
                            "kind": "unknown_class" if unknowable else "control",
                        }
                    ),
                )
            )
    return pd.DataFrame(rows)


def test_prompt_effect_on_admit_rate_is_detected():
    df = _records({"neutral": 0.2, "hint": 0.7})
    out = idk_paired(df, [{"name": "hint", "a": {"prompt": "neutral"}, "b": {"prompt": "hint"}}], B=400)
    admit = out[out.metric == "admit_rate"].iloc[0]
    assert admit.n_paired == 200
    assert admit["diff"] > 0.3 and admit["diff_lo"] > 0 and admit["significant"]
    hand = (df[(df.prompt == "hint") & (df.item_id.str[1:].astype(int) < 100)].pred == 3).mean() - (
        df[(df.prompt == "neutral") & (df.item_id.str[1:].astype(int) < 100)].pred == 3
    ).mean()
    assert abs(admit["diff"] - hand) < 1e-12


def test_identical_prompts_show_no_difference():
    df = _records({"a": 0.3})
    df = pd.concat([df, df.assign(prompt="b")])
    out = idk_paired(df, [{"name": "same", "a": {"prompt": "a"}, "b": {"prompt": "b"}}], B=200)
    assert (out["diff"].abs() < 1e-12).all() and not out["significant"].any()


def test_rates_use_the_idk_metric_names_and_unknown_filters_are_named():
    df = _records({"a": 0.3, "b": 0.3})
    out = idk_paired(df, [{"name": "ab", "a": {"prompt": "a"}, "b": {"prompt": "b"}}], B=50)
    assert list(out["metric"]) == ["admit_rate", "false_idk_rate", "answerable_accuracy"]
    answerable = df[df.item_id.str[1:].astype(int) >= 100]  # items 100..199 are answerable
    by_prompt = answerable.groupby("prompt")["correct"].mean()
    row = out.set_index("metric").loc["answerable_accuracy"]
    assert row["value_a"] == by_prompt["a"] and row["value_b"] == by_prompt["b"]
    with pytest.raises(ValueError, match="'ab'.*'promt'"):
        idk_paired(df, [{"name": "ab", "a": {"promt": "a"}, "b": {"prompt": "b"}}], B=50)
