"""The reference study's protocol beside ours: the ``reference`` prompt format, the ``letter_greedy``
readout (against an independent greedy loop), and the ``metrics.no_letter`` policies (by hand)."""

from __future__ import annotations

import math

import numpy as np
import pandas as pd
import pytest
import torch

from mmcal import plan
from mmcal.analysis import stats
from mmcal.analysis.summary import compare, no_letter_summary, summarize
from mmcal.engine.chat import BUILTIN_FORMATS
from mmcal.engine.loading import load_model
from mmcal.engine.prompts import PromptVariant, prompt_from_config
from mmcal.engine.scenarios import Scenario
from mmcal.engine.scoring import Engine, load_image
from mmcal.errors import ConfigError, DataError
from mmcal.paper.tables import protocol_table
from mmcal.records import apply_no_letter, no_letter, to_frame

REFERENCE = PromptVariant(name="reference", prompt_format="reference")
QUESTION = "What is shown in the image?"


# ---- rendering -------------------------------------------------------------------------------


def test_reference_prompt_renders_like_the_released_code(tiny_llava_dir, fmnist_items):
    root, items = fmnist_items
    lm = load_model("tiny", str(tiny_llava_dir))
    item = items[0]
    opts = "\n".join(f"({L}) {o}" for L, o in zip("ABCD", item.options))
    body = f"{QUESTION}\n{opts}\nPlease provide the option letter directly."
    ref = Engine(lm, REFERENCE, readouts=["letter_greedy"], image_root=root)
    assert ref.render(item, Scenario()) == f"<image>\n{body}\nAnswer: ("
    assert ref.render(item, Scenario(name="blind", image=False)) == f"{body}\nAnswer: ("
    # whatever the model's configured format: llava-1.5's system prompt and roles do not appear
    ref_llava = Engine(lm, REFERENCE, image_root=root, chat_format=BUILTIN_FORMATS["llava-1.5"])
    assert ref_llava.render(item, Scenario()) == f"<image>\n{body}\nAnswer: ("
    # the chat format (today's behaviour) is unchanged: ChatML, answer prefix inside the assistant turn
    ours = Engine(lm, PromptVariant(), image_root=root)
    assert ours.render(item, Scenario()) == (
        f"<|im_start|>user\n<image>\n{body}<|im_end|>\n<|im_start|>assistant\nAnswer: ("
    )
    # the tokens the engine feeds are those of the whole rendered string
    enc = ref.encode(0, item, Scenario())
    image = load_image(root / item.image)
    whole = lm.processor(text=[ref.render(item, Scenario())], images=[image], return_tensors="pt")
    assert enc.prefix_ids + ref.readout_set.joined("Answer: (") == whole["input_ids"][0].tolist()


def test_prompt_format_in_the_hash_and_checked():
    # chat prompts keep the hashes they had before the key existed (records stay byte-identical)
    assert PromptVariant().prompt_hash() == "cb87a8c57c1246a8"
    assert PromptVariant(name="x", instruction="y").prompt_hash() == "218cf02ed3001329"
    assert REFERENCE.prompt_hash() not in {PromptVariant().prompt_hash(), "cb87a8c57c1246a8"}
    assert prompt_from_config("reference", {"prompt_format": "reference"}) == REFERENCE
    with pytest.raises(ConfigError, match="prompt_format"):
        prompt_from_config("p", {"prompt_format": "jinja"})
    with pytest.raises(ConfigError, match="system"):
        prompt_from_config("p", {"prompt_format": "reference", "system": "Be brief."})


# ---- letter_greedy against an independent loop --------------------------------------------------


def _independent_greedy(lm, text: str, image, steps: int = 20):
    """Greedy decoding with plain forward passes over the whole sequence (no cache)."""
    batch = lm.processor(text=[text], images=[image], return_tensors="pt")
    ids = batch["input_ids"]
    pixels = batch["pixel_values"].to(lm.model.dtype)
    eos = lm.model.generation_config.eos_token_id
    eos = set(eos if isinstance(eos, list) else [eos])
    generated, logits = [], []
    with torch.no_grad():
        for _ in range(steps):
            out = lm.model(input_ids=ids, attention_mask=torch.ones_like(ids), pixel_values=pixels)
            last = out.logits[0, -1].double()
            tok = int(last.argmax())
            if tok in eos:
                break
            generated.append(tok)
            logits.append(last)
            ids = torch.cat([ids, torch.tensor([[tok]])], 1)
    return generated, logits


def _check_against_loop(lm, engine, items, root):
    rows = engine.score(items, Scenario())
    seen = []
    for item, row in zip(items, rows):
        text = engine.render(item, Scenario())
        generated, logits = _independent_greedy(lm, text, load_image(root / item.image))
        assert row["readout"] == "letter_greedy" and row["status"] == "ok"
        assert row["generated"] == lm.tokenizer.decode(generated)
        letters = list("ABCD"[: len(item.options)])
        step = next((t for t, g in enumerate(generated) if lm.tokenizer.decode([g]).strip() in letters), None)
        seen.append(step)
        if step is None:
            first = torch.softmax(logits[0], -1)
            best = max(float(first[i]) for i in range(len(first)) if lm.tokenizer.decode([i]).strip() in letters)
            assert row["pred"] == -1 and row["correct"] is False
            assert row["confidence"] == pytest.approx(best, rel=1e-4)
        else:
            letter = lm.tokenizer.decode([generated[step]]).strip()
            assert row["pred"] == letters.index(letter)
            assert row["correct"] == (row["pred"] == item.gold)
            p = float(torch.softmax(logits[step], -1)[generated[step]])
            assert row["confidence"] == pytest.approx(p, rel=1e-4)
            assert math.exp(max(row["option_scores"])) == pytest.approx(p, rel=1e-4)
    return seen


def test_letter_greedy_equals_an_independent_loop(tiny_llava_dir, fmnist_items):
    root, items = fmnist_items
    items = items[:3]
    lm = load_model("tiny", str(tiny_llava_dir))
    engine = Engine(lm, REFERENCE, readouts=["letter_greedy"], batch_size=3, image_root=root)
    # the random model never says a letter: every row is a no-letter row
    assert _check_against_loop(lm, engine, items, root) == [None, None, None]

    # Make the letter "B" as likely as the token the model says third for the first item: its head
    # row becomes that token's, scaled up. The first generated tokens are then no letter, a later one is.
    text = engine.render(items[0], Scenario())
    generated, logits = _independent_greedy(lm, text, load_image(root / items[0].image), steps=3)
    third = generated[2]
    b_token = lm.tokenizer.convert_tokens_to_ids("B")
    head = lm.model.get_output_embeddings().weight
    with torch.no_grad():
        scale = 1.05 if float(logits[2][third]) > 0 else 0.95
        head[b_token] = head[third] * scale
    seen = _check_against_loop(lm, Engine(lm, REFERENCE, readouts=["letter_greedy"], image_root=root), items, root)
    assert seen[0] is not None and seen[0] > 0


def test_letter_greedy_alone_costs_no_letter_pass(tiny_llava_dir, fmnist_items):
    """letter_greedy alone only generates; the one-pass readouts alone never generate."""
    root, items = fmnist_items
    lm = load_model("tiny", str(tiny_llava_dir))
    for readouts, want in (
        (["letter_greedy"], {"greedy": 2, "run_rows": 0}),  # two prefix lengths: two batches
        (["letter_restricted"], {"greedy": 0, "run_rows": 2}),
    ):
        engine = Engine(lm, REFERENCE, readouts=readouts, batch_size=4, image_root=root)
        calls = {"greedy": 0, "run_rows": 0}
        for name in calls:
            real = getattr(engine.forward, name)

            def counted(*a, _real=real, _name=name, _calls=calls, **k):
                _calls[_name] += 1
                return _real(*a, **k)

            setattr(engine.forward, name, counted)
        engine.score(items[:2], Scenario())
        assert calls == want


# ---- the no-letter policies, by hand -------------------------------------------------------------


def _rows(readout, preds, golds, confs, prompt="reference"):
    out = []
    for i, (p, g, c) in enumerate(zip(preds, golds, confs)):
        probs = [0.1, 0.1] if p < 0 else [c if k == p else (1 - c) for k in range(2)]
        out.append(
            {
                "item_id": f"i{i}",
                "cluster_id": f"i{i}",
                "split": "test",
                "model": "m",
                "dataset": "d",
                "scenario": "image",
                "prompt": prompt,
                "prompt_hash": "h",
                "model_fingerprint": "f",
                "readout": readout,
                "gold": g,
                "pred": p,
                "correct": p == g,
                "confidence": c,
                "entropy": 0.5,
                "option_mass": 1.0,
                "option_scores": list(np.log(probs)),
                "option_logits": [0.0, 0.0],
                "n_options": 2,
                "meta": "{}",
                "status": "ok",
            }
        )
    return out


GREEDY = _rows("letter_greedy", [0, 1, -1, 0], [0, 0, 1, 0], [0.9, 0.6, 0.1, 0.8])


def test_no_letter_policies_by_hand():
    df = to_frame(GREEDY)
    assert no_letter(df).tolist() == [False, False, True, False]
    assert len(apply_no_letter(df, "keep")) == 4 and len(apply_no_letter(df, "drop")) == 3
    with pytest.raises(DataError, match="no_letter"):
        apply_no_letter(df, "ignore")
    table = no_letter_summary(df, B=20, seed=0)
    keep = table[table["no_letter_policy"] == "keep"].iloc[0]
    drop = table[table["no_letter_policy"] == "drop"].iloc[0]
    assert (keep["n"], keep["n_no_letter"], drop["n"], drop["n_no_letter"]) == (4, 1, 3, 1)
    # keep: correct 1,0,0,1 -> 0.5; drop: 1,0,1 -> 2/3
    assert keep["accuracy"] == pytest.approx(0.5) and drop["accuracy"] == pytest.approx(2 / 3)
    # ECE-10, one item per occupied bin: mean |conf - correct|
    assert keep["ece_10"] == pytest.approx((0.1 + 0.6 + 0.1 + 0.2) / 4)
    assert drop["ece_10"] == pytest.approx((0.1 + 0.6 + 0.2) / 3)
    # the summary follows metrics.no_letter; keep is the default
    assert summarize(df, B=20, smece_test=False)["n"].tolist() == [4]
    assert summarize(df, B=20, smece_test=False, no_letter="drop")["n"].tolist() == [3]


def test_comparison_pairs_under_the_policy():
    ours = _rows("letter_restricted", [0, 0, 1, 1], [0, 0, 1, 0], [0.7, 0.7, 0.7, 0.7], prompt="default")
    df = to_frame(ours + GREEDY)
    spec = [
        {
            "name": "ours vs reference",
            "a": {"prompt": "default", "readout": "letter_restricted"},
            "b": {"prompt": "reference", "readout": "letter_greedy"},
        }
    ]
    keep = compare(df, spec, B=50, metrics=("accuracy",))
    drop = compare(df, spec, B=50, metrics=("accuracy",), no_letter="drop")
    # keep: a 1,1,1,0 = .75, b .5 on 4 items; drop: item i2 leaves both sides: a 1,1,0, b 1,0,1
    assert (keep["n_paired"].iloc[0], keep["value_a"].iloc[0], keep["value_b"].iloc[0]) == (4, 0.75, 0.5)
    assert drop["n_paired"].iloc[0] == 3
    assert drop["value_a"].iloc[0] == pytest.approx(2 / 3) and drop["value_b"].iloc[0] == pytest.approx(2 / 3)


def test_no_letter_rows_survive_the_records_file(tmp_path):
    from mmcal.records import read_records, write_records

    rows = [dict(r, generated="xyz") for r in GREEDY]
    write_records(to_frame(rows), tmp_path / "r.parquet")
    back = read_records(tmp_path / "r.parquet")
    assert back["generated"].tolist() == ["xyz"] * 4 and no_letter(back).sum() == 1
    assert "generated" not in to_frame(_rows("letter_restricted", [0], [0], [0.5])).columns


def test_a_holm_family_of_its_own_leaves_the_study_p_values():
    ours = _rows("letter_restricted", [0, 0, 1, 1], [0, 0, 1, 0], [0.7, 0.7, 0.7, 0.7], prompt="default")
    full = [dict(r, readout="letter_full_vocab", confidence=0.6) for r in ours]
    df = to_frame(ours + full + GREEDY)
    main = {"name": "readouts", "a": {"readout": "letter_restricted"}, "b": {"readout": "letter_full_vocab"}}
    main["where"] = {"prompt": "default"}
    protocol = {
        "name": "ours vs reference",
        "a": {"prompt": "default", "readout": "letter_restricted"},
        "b": {"prompt": "reference", "readout": "letter_greedy"},
        "holm_family": "protocol",
    }
    metrics = ("accuracy", "ece_10")
    alone = compare(df, [main], B=50, metrics=metrics)
    both = compare(df, [main, protocol], B=50, metrics=metrics)
    pd.testing.assert_frame_equal(both.iloc[:2].reset_index(drop=True), alone)
    # within the protocol family: Holm over its own two rows
    p = both.iloc[2:]["p_value"].to_numpy()
    assert both.iloc[2:]["p_holm"].tolist() == pytest.approx(list(stats.holm(p)))


def test_runs_carry_their_own_readouts():
    config = {
        "models": {"m": {"kind": "mllm"}},
        "datasets": {"d": {}},
        "scenarios": {"image": {"image": True}},
        "prompts": {"default": {}, "reference": {"prompt_format": "reference"}},
        "readouts": ["letter_restricted", "option_loglik"],
        "runs": [
            {"models": ["m"], "datasets": ["d"], "scenarios": ["image"], "prompts": ["default"]},
            {"models": ["m"], "datasets": ["d"], "scenarios": ["image"], "prompts": ["reference"]}
            | {"readouts": ["letter_greedy"], "splits": ["test"]},
        ],
    }
    runs = plan.expand_runs(config)
    assert [plan.run_readouts(config, r) for r in runs] == [["letter_restricted", "option_loglik"], ["letter_greedy"]]
    config["runs"].append(dict(config["runs"][0], readouts=["letter_greedy"]))
    with pytest.raises(ConfigError, match="other readouts"):
        plan.expand_runs(config)


def test_protocol_table():
    cond = {"model": "m", "dataset": "d", "scenario": "image"}
    metric_cols = {"accuracy": 0.75, "accuracy_lo": 0.5, "accuracy_hi": 1.0, "ece_10": 0.1, "ece_10_lo": 0.05}
    summary = pd.DataFrame([{**cond, "prompt": "default", "readout": "letter_restricted", "n": 4, **metric_cols}])
    summary["ece_10_hi"] = 0.2
    table = no_letter_summary(to_frame(GREEDY).assign(model="m", dataset="d"), B=20)
    part = {
        **cond,
        "ours": {"prompt": "default", "readout": "letter_restricted"},
        "reference": {"prompt": "reference", "readout": "letter_greedy"},
    }
    tex = protocol_table(summary, table, part)
    lines = [line for line in tex.splitlines() if line.endswith(r"\\")]
    assert lines[1].startswith("ours & default, letter\\_restricted & -- & 4 & 0 & 0.750 [0.500, 1.000] & 0.100")
    assert lines[2].startswith("reference & reference, letter\\_greedy & kept, counted wrong & 4 & 1 & 0.500")
    assert lines[3].startswith(" &  & dropped & 3 & 1 & 0.667")
    with pytest.raises(ValueError, match="protocol table"):
        protocol_table(summary, table.iloc[:1], part)
    paired = pd.DataFrame(
        [
            {
                "metric": k,
                "n_paired": 4,
                "a_label": "ours",
                "b_label": "ref",
                "diff": d,
                "diff_lo": -0.5,
                "diff_hi": 0.1,
            }
            | {"p_holm": 0.25}
            for k, d in (("accuracy", -0.25), ("ece_10", 0.05), ("nll", 1.0))
        ]
    )
    note = protocol_table(summary, table, part, paired).split("Paired over ")[1]
    assert note.startswith(r"4 items, ref $-$ ours: Acc. $-$0.250")
    assert r"$-$0.250 [$-$0.500, 0.100], $p_{\mathrm{Holm}}$ 0.250" in note and "NLL" not in note


def test_tables_show_the_protocol_with_its_paired_test(tmp_path):
    from mmcal.paper.build import make_tables

    ours = _rows("letter_restricted", [0, 0, 1, 1], [0, 0, 1, 0], [0.7, 0.7, 0.7, 0.7], prompt="default")
    full = [dict(r, readout="letter_full_vocab", confidence=0.6) for r in ours]
    df = to_frame(ours + full + GREEDY)
    specs = [
        {"name": "readouts", "a": {"readout": "letter_restricted"}, "b": {"readout": "letter_full_vocab"}}
        | {"where": {"prompt": "default"}},
        {
            "name": "ours vs reference",
            "a": {"prompt": "default", "readout": "letter_restricted"},
            "b": {"prompt": "reference", "readout": "letter_greedy"},
            "holm_family": "protocol",
        },
    ]
    inputs = {"summary": tmp_path / "s.csv", "comparisons": tmp_path / "c.csv", "no_letter": tmp_path / "n.csv"}
    summarize(df, B=20, smece_test=False).to_csv(inputs["summary"], index=False)
    compare(df, specs, B=50).to_csv(inputs["comparisons"], index=False)
    no_letter_summary(df, B=20).to_csv(inputs["no_letter"], index=False)
    part = {
        "model": "m",
        "dataset": "d",
        "scenario": "image",
        "ours": {"prompt": "default", "readout": "letter_restricted"},
        "reference": {"prompt": "reference", "readout": "letter_greedy"},
        "comparison": "ours vs reference",
    }
    parts = {"main": {"dataset": "d", "scenario": "image", "prompt": "default"}, "protocol": part}
    written = {p.stem: p.read_text() for p in make_tables(inputs, tmp_path / "tables", parts, level=0.95)}
    assert "Paired over 4 items" in written["protocol"]
    assert "readouts" in written["comparisons"] and "ours vs reference" not in written["comparisons"]
