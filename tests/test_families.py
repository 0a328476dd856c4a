"""Every model family, on a hub-shaped replica (issue 13, point 7): the real tokenizer, chat template and
processor configuration of the family's hub repository around a tiny random-weight model of its real class
(tests/replicas/build.py; sources and hashes in tests/replicas/SOURCES.md).

Per family, through the engine (mmcal.engine.build.build_engine, from a model entry like the configs'):
the rendered prompt, the answer prefix's tokens against the family's own answers, the option letters' ids,
image tokens vs image features, option continuations' tokenisation, and the three readouts against plain
forward passes. The replicas' sources are fetched at set-up (envs/setup.sh); without them the cases skip.
"""

from __future__ import annotations

import inspect
from pathlib import Path

import numpy as np
import pytest
import torch

from mmcal.engine.build import build_engine
from mmcal.engine.chat import render_prompt
from mmcal.engine.prompts import PromptVariant, build_messages
from mmcal.engine.readouts import encode_ids
from mmcal.engine.scenarios import Scenario
from mmcal.items import MCItem
from mmcal.records import READOUTS

PROMPT = PromptVariant()
QUESTION = "What is shown in this image?"
OPTIONS = ["T-shirt/top", "Trouser", "Pullover", "Dress", "Coat"]
# the user's text every family renders (mmcal.engine.prompts.question_text)
USER_TEXT = (
    "What is shown in this image?\n(A) T-shirt/top\n(B) Trouser\n(C) Pullover\n(D) Dress\n(E) Coat\n"
    "Please provide the option letter directly."
)
# option strings as real data sets have them (ScienceQA, MMMU, Fashion-MNIST labels)
REAL_OPTIONS = ["the Atlantic Ocean", "12", "Mars", "T-shirt/top", "an oak's leaf", "3.5 cm", "(1, 2)", "Ankle boot"]
VICUNA_SYSTEM = (
    "A chat between a curious user and an artificial intelligence assistant. "
    "The assistant gives helpful, detailed, and polite answers to the user's questions."
)

# Per family: the config entry (besides path), the literal rendered prompt, the answer prefix's ids after the
# opened assistant turn, and the ids of the letters A-E after it. Ids are the real vocabularies':
# Llama-2 `▁Answer`=673 `:`=29901 `▁(`=313 `A`..`E`=29909,29933,29907,29928,29923; Qwen2 `Answer`=16141
# `:`=25 `Ġ(`=320 `A`..`E`=32..36; SmolLM2 `Answer`=21350 `ĠAnswer`=19842 `:`=42 `Ġ(`=365 `A`..`E`=49..53.
# The expected answer ids are also checked against the family's own template rendering an assistant answer.
LLAMA_ANSWER = [673, 29901, 313]
LLAMA_LETTERS = [29909, 29933, 29907, 29928, 29923]
FAMILIES = {
    "llava-1.5": dict(
        entry={"kind": "mllm"},
        prompt="USER: <image>\n" + USER_TEXT + " ASSISTANT:",
        answer=LLAMA_ANSWER,
        letters=LLAMA_LETTERS,
        image_tokens=576,
    ),
    "vicuna-7b-v1.5": dict(
        entry={"kind": "llm", "chat_template": "vicuna-v1.1"},
        prompt=VICUNA_SYSTEM + " USER: " + USER_TEXT + " ASSISTANT:",
        answer=LLAMA_ANSWER,
        letters=LLAMA_LETTERS,
    ),
    "llava-next": dict(
        entry={"kind": "mllm"},
        prompt="USER: <image>\n" + USER_TEXT + " ASSISTANT:",
        answer=LLAMA_ANSWER,
        letters=LLAMA_LETTERS,
        # anyres: base image (576) + the best pinpoint's tiles, unpadded to the image's aspect, with one newline
        # feature per row: 1176 for a 28x28 image
        image_tokens=1176,
    ),
    "qwen2-vl": dict(
        entry={"kind": "mllm"},
        prompt="<|im_start|>system\nYou are a helpful assistant.<|im_end|>\n<|im_start|>user\n"
        "<|vision_start|><|image_pad|><|vision_end|>" + USER_TEXT + "<|im_end|>\n<|im_start|>assistant\n",
        answer=[16141, 25, 320],
        letters=[32, 33, 34, 35, 36],
        needs="torchvision",  # Qwen2-VL's processor always loads a video processor, which needs torchvision
    ),
    "qwen2": dict(
        entry={"kind": "llm"},
        prompt="<|im_start|>system\nYou are a helpful assistant.<|im_end|>\n<|im_start|>user\n"
        + USER_TEXT
        + "<|im_end|>\n<|im_start|>assistant\n",
        answer=[16141, 25, 320],
        letters=[32, 33, 34, 35, 36],
    ),
    "smolvlm": dict(
        entry={"kind": "mllm"},
        prompt="<|im_start|>User:<image>" + USER_TEXT + "<end_of_utterance>\nAssistant:",
        # its own answers: "Assistant: " + text (the template's ': ' for a text-only turn) -> `ĠAnswer`
        answer=[19842, 42, 365],
        letters=[49, 50, 51, 52, 53],
        image_tokens=81,
    ),
    "tiny-llava-smollm2": dict(
        entry={"kind": "mllm"},
        prompt="<|im_start|>user\n<image>\n" + USER_TEXT + "<|im_end|>\n<|im_start|>assistant\n",
        answer=[21350, 42, 365],
        letters=[49, 50, 51, 52, 53],
        image_tokens=16,
    ),
    # STAND-IN VOCABULARY (Llama-2's + <image> and PaliGemma's <locNNNN>/<segNNN>): no Gemma-1 tokenizer is
    # reachable offline, so ids are not PaliGemma's; the processor, layout, SigLIP geometry and model class are.
    "paligemma-standin-vocab": dict(
        entry={"kind": "mllm", "chat_template": "paligemma"},  # PaliGemma ships no chat template
        # PaliGemmaProcessor makes "<image>"x256 + "<bos>" + prompt + "\n" from a text that starts "<image>"
        prompt="<image>" + USER_TEXT,
        answer=[22550, 29901, 313],  # `Answer` `:` `▁(` right after the processor's "\n", as its answers follow
        letters=LLAMA_LETTERS,
        image_tokens=256,
    ),
}


def _item(image: str | None, item_id: str = "q1", gold: int = 1) -> MCItem:
    return MCItem(item_id, item_id, QUESTION, OPTIONS, gold, "test", "replica", image=image)


@pytest.fixture(scope="session")
def replica_image(fmnist_items) -> tuple[Path, str]:
    """(image root, relative path) of a real Fashion-MNIST test image (28x28, grey, loaded as RGB)."""
    root, items = fmnist_items
    return root, items[0].image


@pytest.fixture(scope="session")
def replicas() -> dict:
    """family -> built replica folder; skips when the sources are not fetched."""
    import build

    out = {}
    for family in FAMILIES:
        try:
            out[family] = build.build(family)
        except build.ReplicaMissing as exc:
            out[family] = exc
    return out


_ENGINES: dict = {}


def _engine(family: str, replicas: dict, image_root: Path):
    spec = FAMILIES[family]
    folder = replicas[family]
    if isinstance(folder, Exception):
        pytest.skip(f"replica sources not fetched: {folder}")
    if spec.get("needs"):
        pytest.importorskip(spec["needs"], exc_type=ImportError)
    if family not in _ENGINES:
        entry = {"path": str(folder), **spec["entry"]}
        _ENGINES[family] = build_engine(
            family,
            entry,
            device="cpu",
            dtype="float32",
            prompt=PROMPT,
            readouts=READOUTS,
            batch_size=4,
            image_root=image_root,
        )
    return _ENGINES[family]


def _xfail(request, family: str, check: str) -> None:
    reason = FAMILIES[family].get("xfail", {}).get(check)
    if reason:
        request.applymarker(pytest.mark.xfail(reason=reason, strict=True))


def _multimodal(family: str) -> bool:
    return FAMILIES[family]["entry"]["kind"] == "mllm"


def _scenario(family: str) -> Scenario:
    return Scenario("image" if _multimodal(family) else "text", image=_multimodal(family))


def _rendered(engine, family: str, image: str | None) -> str:
    mm = _multimodal(family)
    messages = build_messages(_item(image if mm else None), PROMPT, with_image=mm)
    return render_prompt(engine.lm.processor, messages, multimodal=mm, chat_format=engine.chat_format)


def _own_answer_ids(engine, family: str, text: str) -> list[int]:
    """Tokens the family's own template gives an assistant answer ``text``, after the opened turn."""
    mm = _multimodal(family)
    user = build_messages(_item("x" if mm else None), PROMPT, with_image=mm)
    answer = {"role": "assistant", "content": [{"type": "text", "text": text}]}
    opened = render_prompt(engine.lm.processor, user, mm, engine.chat_format)
    if engine.chat_format.template is None:
        proc = engine.lm.processor
        msgs = user + [answer] if mm else [{"role": m["role"], "content": m["content"][-1]["text"]} for m in user]
        if not mm:
            msgs.append({"role": "assistant", "content": text})
        full = proc.apply_chat_template(msgs, tokenize=False)
    else:
        full = opened + engine.chat_format.answer_separator + text
    assert full.startswith(opened), (full, opened)
    if engine.chat_format.separator_in_prompt:  # the processor ends the prompt with the separator itself
        opened += engine.chat_format.answer_separator
    tok = engine.lm.tokenizer
    head, ids = encode_ids(tok, opened), encode_ids(tok, full)
    assert ids[: len(head)] == head
    return ids[len(head) : len(head) + len(encode_ids(tok, text))]


@pytest.mark.parametrize("family", FAMILIES)
def test_rendered_prompt(family, replicas, replica_image, request):
    root, image = replica_image
    engine = _engine(family, replicas, root)
    _xfail(request, family, "render")
    assert _rendered(engine, family, image) == FAMILIES[family]["prompt"]


@pytest.mark.parametrize("family", FAMILIES)
def test_answer_prefix_tokens_are_the_familys_own(family, replicas, replica_image, request):
    spec = FAMILIES[family]
    engine = _engine(family, replicas, replica_image[0])
    _xfail(request, family, "answer")
    own = _own_answer_ids(engine, family, PROMPT.answer_prefix + "A")[:-1]
    assert own == spec["answer"]
    assert engine.readout_set.joined(PROMPT.answer_prefix) == own


@pytest.mark.parametrize("family", FAMILIES)
def test_option_letters_are_single_tokens(family, replicas, replica_image):
    engine = _engine(family, replicas, replica_image[0])
    tok = engine.lm.tokenizer
    letters = engine.readout_set.letters(PROMPT.answer_prefix, 5)
    assert letters == FAMILIES[family]["letters"]
    assert tok.convert_ids_to_tokens(letters) == list("ABCDE")


@pytest.mark.parametrize("family", [f for f in FAMILIES if _multimodal(f)])
def test_image_tokens_match_image_features(family, replicas, replica_image):
    root, image = replica_image
    engine = _engine(family, replicas, root)
    enc = engine.encode(0, _item(image), _scenario(family))
    assert enc.status == "ok"
    model = engine.lm.model
    n_tokens = sum(t == model.config.image_token_id for t in enc.prefix_ids)
    # the image inputs the family's feature function takes (not e.g. PaliGemma's token_type_ids/labels)
    takes = inspect.signature(model.model.get_image_features).parameters
    with torch.no_grad():
        feats = model.model.get_image_features(**{k: v for k, v in enc.extra.items() if k in takes}).pooler_output
    n_features = sum(
        t.reshape(-1, t.shape[-1]).shape[0] for t in (feats if isinstance(feats, (list, tuple)) else [feats])
    )
    assert n_tokens == n_features
    if FAMILIES[family].get("image_tokens"):
        assert n_tokens == FAMILIES[family]["image_tokens"]


def _tail_ids(tok, head: str, text: str) -> list[int]:
    """Tokens of ``text`` as it follows ``head`` in one string (checking the head's tokens are untouched)."""
    head_ids, full = encode_ids(tok, head), encode_ids(tok, head + text)
    assert full[: len(head_ids)] == head_ids, (head[-20:], text)
    return full[len(head_ids) :]


@pytest.mark.parametrize("family", FAMILIES)
def test_option_continuations_tokenise_consistently(family, replicas, replica_image):
    """The engine scores each option with the tokens the whole text has (`encode(head + " " + opt)`), which for
    byte-level BPE equals `encode(head) + encode(" " + opt)`; a legacy SentencePiece Llama tokenises " opt" alone
    as "▁", "▁opt", a sequence the model never sees after "Answer:"."""
    root, image = replica_image
    engine = _engine(family, replicas, root)
    tok = engine.lm.tokenizer
    head = _rendered(engine, family, image) + engine.chat_format.answer_separator + PROMPT.option_prefix
    item = MCItem("o", "o", QUESTION, REAL_OPTIONS[:5], 0, "test", "replica")
    rows = engine.readout_set.continuations(engine.encode(0, item, Scenario("text", image=False)), 0)[1:]
    head_ids = engine.readout_set.joined(PROMPT.option_prefix)
    for opt, row in zip(item.options, rows):
        assert row.ids[row.span_from :] == _tail_ids(tok, head, " " + opt), opt
        assert row.ids[: row.span_from] == head_ids
    if family in ("qwen2", "qwen2-vl", "smolvlm", "tiny-llava-smollm2"):  # byte-level BPE: the split is clean
        for opt in REAL_OPTIONS:
            assert encode_ids(tok, head + " " + opt) == encode_ids(tok, head) + encode_ids(tok, " " + opt), opt


def _hand_readouts(engine, family: str, item: MCItem, image) -> dict:
    """Plain full forward passes (no cache, no batching) of prefix + continuation; textbook softmax maths."""
    lm = engine.lm
    tok = lm.tokenizer
    enc = engine.encode(0, item, _scenario(family))
    assert enc.status == "ok"

    def log_probs(cont: list[int]):
        ids = torch.tensor([enc.prefix_ids + cont])
        extra = {k: v for k, v in enc.extra.items()}
        for k, v in extra.items():  # per-token type ids (Qwen2-VL) cover the continuation too
            if v.dim() == 2 and v.shape[1] == len(enc.prefix_ids) and not v.is_floating_point():
                extra[k] = torch.cat([v, v.new_zeros((1, len(cont)))], 1)
        with torch.no_grad():
            logits = lm.model(input_ids=ids, attention_mask=torch.ones_like(ids), **extra).logits[0]
        return torch.log_softmax(logits.double(), -1)

    answer = engine.readout_set.joined(PROMPT.answer_prefix)
    lp = log_probs(answer)[-1]
    letters = FAMILIES[family]["letters"]
    restricted = torch.softmax(lp[letters], 0).numpy()
    full = lp[letters].exp().numpy()
    head = engine.readout_set.joined(PROMPT.option_prefix)
    text_head = _rendered(engine, family, "x") + engine.chat_format.answer_separator + PROMPT.option_prefix
    per_option = []
    for opt in item.options:
        opt_ids = _tail_ids(tok, text_head, " " + opt)
        lps = log_probs(head + opt_ids)
        n = len(enc.prefix_ids) + len(head)
        per_option.append(sum(float(lps[n + j - 1, t]) for j, t in enumerate(opt_ids)) / len(opt_ids))
    loglik = torch.softmax(torch.tensor(per_option), 0).numpy()
    return {"letter_restricted": restricted, "letter_full_vocab": full, "option_loglik": loglik}


@pytest.mark.parametrize("family", FAMILIES)
def test_readouts_equal_hand_computation(family, replicas, replica_image, request):
    root, image = replica_image
    engine = _engine(family, replicas, root)
    _xfail(request, family, "readouts")
    items = [_item(image if _multimodal(family) else None, "q1", gold=1)]
    rows = engine.score(items, _scenario(family))
    assert {r["status"] for r in rows} == {"ok"}
    for item in items:
        expected = _hand_readouts(engine, family, item, image)
        for readout, probs in expected.items():
            row = next(r for r in rows if r["item_id"] == item.item_id and r["readout"] == readout)
            np.testing.assert_allclose(np.exp(row["option_scores"]), probs, rtol=1e-4, atol=1e-6, err_msg=readout)
            assert row["pred"] == int(np.argmax(probs))
            assert row["correct"] == (row["pred"] == item.gold)
        full = next(r for r in rows if r["item_id"] == item.item_id and r["readout"] == "letter_full_vocab")
        assert full["option_mass"] == pytest.approx(expected["letter_full_vocab"].sum(), rel=1e-4)


# ---- the reference protocol (issue 13, point 2) per family ------------------------------------------
# The released code's text: no template, the image placeholder on its own line, the question with its options,
# the instruction, "\nAnswer: (". Each family's processor expands its own placeholder.
REFERENCE = PromptVariant(name="reference", prompt_format="reference")
IMAGE_PLACEHOLDER = {"qwen2-vl": "<|image_pad|>"}  # the processor's image token; "<image>" elsewhere


def _reference_engine(family: str, replicas: dict, image_root: Path):
    base = _engine(family, replicas, image_root)  # skips like the other checks; reuses the loaded model
    from mmcal.engine.scoring import Engine

    return Engine(
        base.lm,
        REFERENCE,
        readouts=["letter_greedy"],
        batch_size=2,
        image_root=image_root,
        chat_format=base.chat_format,
    )


@pytest.mark.parametrize("family", FAMILIES)
def test_reference_render(family, replicas, replica_image):
    root, image = replica_image
    engine = _reference_engine(family, replicas, root)
    mm = _multimodal(family)
    expected = (IMAGE_PLACEHOLDER.get(family, "<image>") + "\n" if mm else "") + USER_TEXT + "\nAnswer: ("
    if engine.chat_format.processor_adds_separator:  # PaliGemma: "<image>" + text, its processor adds "\n"
        expected = "<image>" + USER_TEXT + "\nAnswer: ("
    assert engine.render(_item(image if mm else None), _scenario(family)) == expected


def _independent_greedy(engine, family: str, text: str, image_path: Path | None, steps: int = 20):
    """Greedy decoding by full forward passes over the whole sequence (no cache, no ``generate``); the
    text (prompt + answer prefix) is tokenised in one piece, as the released code did."""
    from mmcal.engine.forward import APPENDED_TOKEN_TYPE
    from mmcal.engine.scoring import load_image

    lm = engine.lm
    tok = lm.tokenizer
    special = not (tok.bos_token and text.startswith(tok.bos_token))
    answer_ids = []
    if engine.chat_format.processor_adds_separator:  # PaliGemma: prompt (its processor adds "\n"), then the answer
        text, answer = text.rsplit("\n", 1)
        answer_ids = encode_ids(tok, text + "\n" + answer)[len(encode_ids(tok, text + "\n")) :]
    if _multimodal(family):
        batch = lm.processor(
            text=[text], images=[load_image(image_path)], return_tensors="pt", add_special_tokens=special
        )
    else:
        batch = tok([text], return_tensors="pt", add_special_tokens=special)
    ids = batch["input_ids"]
    extra = {k: v for k, v in batch.items() if k not in ("input_ids", "attention_mask", "labels")}
    if answer_ids:
        for k, v in extra.items():
            if v.dim() == 2 and not v.is_floating_point() and v.shape[1] == ids.shape[1]:
                fill = APPENDED_TOKEN_TYPE.get((lm.model_type, k), 0)
                extra[k] = torch.cat([v, v.new_full((1, len(answer_ids)), fill)], 1)
        ids = torch.cat([ids, torch.tensor([answer_ids])], 1)
    eos = lm.model.generation_config.eos_token_id
    eos = set(eos if isinstance(eos, list) else [eos])
    generated, logits = [], []
    with torch.no_grad():
        for _ in range(steps):
            out = lm.model(input_ids=ids, attention_mask=torch.ones_like(ids), **extra)
            last = out.logits[0, -1].double()
            t = int(last.argmax())
            if t in eos:
                break
            generated.append(t)
            logits.append(last)
            ids = torch.cat([ids, torch.tensor([[t]])], 1)
            for k, v in extra.items():  # per-token types grow with the sequence (PaliGemma: answer = 1)
                if v.dim() == 2 and not v.is_floating_point() and v.shape[1] == ids.shape[1] - 1:
                    fill = APPENDED_TOKEN_TYPE.get((lm.model_type, k), 0)
                    extra[k] = torch.cat([v, v.new_full((1, 1), fill)], 1)
    return generated, logits


@pytest.mark.parametrize("family", FAMILIES)
def test_letter_greedy_equals_an_independent_loop(family, replicas, replica_image):
    root, image = replica_image
    engine = _reference_engine(family, replicas, root)
    mm = _multimodal(family)
    item = _item(image if mm else None, "q1", gold=1)
    row = engine.score([item], _scenario(family))[0]
    tok = engine.lm.tokenizer
    generated, logits = _independent_greedy(engine, family, engine.render(item, _scenario(family)), root / image)
    assert row["readout"] == "letter_greedy" and row["status"] == "ok"
    assert row["generated"] == tok.decode(generated)
    letters = list("ABCDE")
    step = next((t for t, g in enumerate(generated) if tok.decode([g]).strip() in letters), None)
    if step is None:  # no letter: kept, counted wrong, confidence = the best letter's probability at step 1
        assert row["pred"] == -1 and row["correct"] is False
        if logits:
            first = torch.softmax(logits[0], -1)
            spelled = [
                i for i, t in enumerate(tok.batch_decode([[i] for i in range(len(tok))])) if t.strip() in letters
            ]
            assert row["confidence"] == pytest.approx(max(float(first[i]) for i in spelled), rel=1e-4)
    else:
        assert row["pred"] == letters.index(tok.decode([generated[step]]).strip())
        assert row["confidence"] == pytest.approx(float(torch.softmax(logits[step], -1)[generated[step]]), rel=1e-4)


# ---- all continuations in one packed pass (issue 22, point 1) ------------------------------------------
def _separate_pass(engine, enc, row) -> tuple[torch.Tensor, float]:
    """One plain pass of prefix + this continuation alone (no cache, no batch): the full-vocabulary log-softmax
    after its last token and the summed log-probability of its scored tokens (float64 maths)."""
    from mmcal.engine.forward import APPENDED_TOKEN_TYPE

    lm = engine.lm
    ids = torch.tensor([enc.prefix_ids + row.ids])
    extra = dict(enc.extra)
    for k, v in extra.items():  # per-token types cover the continuation (PaliGemma: the answer is type 1)
        if v.dim() == 2 and v.shape[1] == len(enc.prefix_ids) and not v.is_floating_point():
            extra[k] = torch.cat([v, v.new_full((1, len(row.ids)), APPENDED_TOKEN_TYPE.get((lm.model_type, k), 0))], 1)
    with torch.no_grad():
        lp = torch.log_softmax(
            lm.model(input_ids=ids, attention_mask=torch.ones_like(ids), **extra).logits[0].double(), -1
        )
    n = len(enc.prefix_ids)
    scored = sum(float(lp[n + j - 1, row.ids[j]]) for j in range(min(row.span_from, len(row.ids)), len(row.ids)))
    return lp[-1], scored


@pytest.mark.parametrize("family", FAMILIES)
def test_packed_readouts_equal_separate_passes(family, replicas, replica_image):
    """Two items in one batch (different options, so their trees differ in size and are padded): the letter
    branch's full-vocabulary log-probs and every option's summed log-probability from the packed tree equal one
    plain pass per continuation within 1e-5 (fp32). Qwen2-VL (mrope) keeps one full pass per continuation."""
    from dataclasses import replace

    from mmcal.engine.forward import Forward

    root, image = replica_image
    engine = _engine(family, replicas, root)
    mm = _multimodal(family)
    first = engine.encode(0, _item(image if mm else None), _scenario(family))
    assert first.status == "ok"
    # the second item has the first one's prefix (a batch needs equal lengths) and other, longer options
    other = MCItem("q2", "q2", QUESTION, REAL_OPTIONS[3:8], 0, "test", "replica")
    encs = [first, replace(first, pos=1, item=other)]
    rows = [r for j, e in enumerate(encs) for r in engine.readout_set.continuations(e, j)]
    forward = Forward(engine.lm)
    outs = forward.run_rows(encs, rows)
    assert forward.tree_ok is (True if engine.lm.prefix_cache_ok else None)
    assert engine.lm.prefix_cache_ok is (family != "qwen2-vl")
    worst = 0.0
    for row, out in zip(rows, outs):
        last, scored = _separate_pass(engine, encs[row.enc_index], row)
        if row.last:
            worst = max(worst, float((torch.log_softmax(out.last_logits.double(), -1) - last).abs().max()))
        else:
            assert out.span_len == len(row.ids) - row.span_from
            worst = max(worst, abs(out.span_logprob - scored))
    assert worst <= 1e-5, worst
