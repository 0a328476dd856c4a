"""Build the hub-shaped replicas: tiny random-weight models of each family's REAL class, carrying the real
tokenizer, chat template and processor configuration that fetch.py cached.

    python tests/replicas/build.py [FAMILY ...]     # default: every family below

Each replica is saved with ``save_pretrained`` into ``<cache>/built/<family>/`` (cache: fetch.CACHE), keyed by a
hash of this script, sources.yaml and the family's cached source files: a second run with the same key does
nothing. Weights are seeded, so a rebuild gives the same bytes. Only the weights are shrunk (hidden 32, 1-2
layers); vocabularies are full and image sizes / patch sizes are the real ones, so the number of image tokens
is the real family's. What else is shrunk or assumed is said per family below and in SOURCES.md.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
if str(HERE) not in sys.path:  # imported (tests/conftest.py appends it); as a script it is already first
    sys.path.append(str(HERE))
from fetch import CACHE, sha256_file  # noqa: E402

BUILT = CACHE / "built"
KEY_FILE = "replica_key.txt"
SMOLLM2_GGUF = "SmolLM2-135M-Instruct.Q4_1.gguf"

# The tiny transformer every replica's language model uses (vocabulary and special ids are the family's).
TINY_TEXT = dict(
    hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=2, num_key_value_heads=1
)
TINY_CLIP = dict(hidden_size=32, intermediate_size=64, num_hidden_layers=1, num_attention_heads=2)


class ReplicaMissing(RuntimeError):
    """A family's fetched sources are not in the cache (run fetch.py)."""


def _src(family: str, name: str) -> Path:
    path = CACHE / family / name
    if not path.is_file():
        raise ReplicaMissing(f"{path} is missing: run `python tests/replicas/fetch.py {family}`")
    return path


def _fast_tokenizer(family: str, **special):
    from transformers import PreTrainedTokenizerFast

    return PreTrainedTokenizerFast(tokenizer_file=str(_src(family, "tokenizer.json")), **special)


def _llama2_tokenizer(family: str, hub_added: bool):
    """Llama-2's tokenizer; llava-hf adds ``<image>``=32000 then ``<pad>``=32001 (in that order)."""
    tok = _fast_tokenizer(family, bos_token="<s>", eos_token="</s>", unk_token="<unk>")
    if hub_added:
        tok.add_special_tokens({"additional_special_tokens": ["<image>"]})
        tok.add_special_tokens({"pad_token": "<pad>"})
        assert tok.convert_tokens_to_ids(["<image>", "<pad>"]) == [32000, 32001]
    return tok


def _image_processor(cls, family: str):
    return cls.from_dict(json.loads(_src(family, "preprocessor_config.json").read_text()))


def _template(family: str) -> str:
    return _src(family, "chat_template.jinja").read_text()


def _llama_text(vocab_size: int, **kw) -> dict:
    return dict(model_type="llama", vocab_size=vocab_size, max_position_embeddings=4096, **TINY_TEXT, **kw)


def _clip_336() -> dict:
    """CLIP ViT-L/14-336's geometry (336 px, patch 14: 576 patches + CLS), tiny width."""
    return dict(model_type="clip_vision_model", image_size=336, patch_size=14, projection_dim=32, **TINY_CLIP)


def build_llava15(out: Path) -> None:
    from transformers import CLIPImageProcessor, LlavaConfig, LlavaForConditionalGeneration, LlavaProcessor

    tok = _llama2_tokenizer("llava-1.5", hub_added=True)
    cfg = LlavaConfig(
        vision_config=_clip_336(),
        # llava-hf pads the embedding matrix to 32064 rows
        text_config=_llama_text(32064, pad_token_id=32001, bos_token_id=1, eos_token_id=2),
        image_token_id=32000,
        vision_feature_select_strategy="default",
        vision_feature_layer=-2,
    )
    proc = LlavaProcessor(
        image_processor=_image_processor(CLIPImageProcessor, "llava-1.5"),
        tokenizer=tok,
        patch_size=14,
        vision_feature_select_strategy="default",
        num_additional_image_tokens=1,
        chat_template=_template("llava-1.5"),
    )
    _save(LlavaForConditionalGeneration(cfg), proc, out)


def build_vicuna(out: Path) -> None:
    from transformers import LlamaConfig, LlamaForCausalLM

    tok = _llama2_tokenizer("vicuna-7b-v1.5", hub_added=False)
    cfg = LlamaConfig(
        **{k: v for k, v in _llama_text(32000, bos_token_id=1, eos_token_id=2).items() if k != "model_type"}
    )
    _save(LlamaForCausalLM(cfg), tok, out)


def build_llava_next(out: Path) -> None:
    from transformers import (
        LlavaNextConfig,
        LlavaNextForConditionalGeneration,
        LlavaNextImageProcessor,
        LlavaNextProcessor,
    )

    tok = _llama2_tokenizer("llava-next", hub_added=True)
    ip = _image_processor(LlavaNextImageProcessor, "llava-next")
    cfg = LlavaNextConfig(
        vision_config=_clip_336(),
        text_config=_llama_text(32064, pad_token_id=32001, bos_token_id=1, eos_token_id=2),
        image_token_id=32000,
        image_grid_pinpoints=ip.image_grid_pinpoints,
        vision_feature_select_strategy="default",
        vision_feature_layer=-2,
    )
    proc = LlavaNextProcessor(
        image_processor=ip,
        tokenizer=tok,
        patch_size=14,
        vision_feature_select_strategy="default",
        num_additional_image_tokens=1,
        chat_template=_template("llava-next"),
    )
    _save(LlavaNextForConditionalGeneration(cfg), proc, out)


def _qwen_tokenizer(family: str):
    return _fast_tokenizer(family, eos_token="<|im_end|>", pad_token="<|endoftext|>")


def build_qwen2(out: Path) -> None:
    from transformers import Qwen2Config, Qwen2ForCausalLM

    tok = _qwen_tokenizer("qwen2")
    tok.chat_template = _template("qwen2")
    cfg = Qwen2Config(
        vocab_size=152064, max_position_embeddings=4096, bos_token_id=151643, eos_token_id=151645, **TINY_TEXT
    )
    _save(Qwen2ForCausalLM(cfg), tok, out)


def build_qwen2_vl(out: Path) -> None:
    """Qwen2-VL's processor always carries a video processor, which needs torchvision (it does not import
    here), so the processor is written as its files (tokenizer, preprocessor_config.json with the PIL backend's
    values, chat template) rather than constructed; loading it needs torchvision."""
    from transformers import Qwen2VLConfig, Qwen2VLForConditionalGeneration

    tok = _qwen_tokenizer("qwen2-vl")
    ids = tok.convert_tokens_to_ids
    cfg = Qwen2VLConfig(
        vision_config=dict(
            depth=1,
            embed_dim=32,
            hidden_size=32,
            num_heads=2,
            mlp_ratio=2,
            patch_size=14,
            spatial_merge_size=2,
            temporal_patch_size=2,
        ),
        text_config=dict(
            vocab_size=152064,
            max_position_embeddings=4096,
            bos_token_id=151643,
            eos_token_id=151645,
            rope_parameters={"rope_type": "default", "rope_theta": 1000000.0, "mrope_section": [2, 3, 3]},
            **TINY_TEXT,
        ),
        image_token_id=ids("<|image_pad|>"),
        video_token_id=ids("<|video_pad|>"),
        vision_start_token_id=ids("<|vision_start|>"),
        vision_end_token_id=ids("<|vision_end|>"),
    )
    _save(Qwen2VLForConditionalGeneration(cfg), tok, out)
    shutil.copyfile(_src("qwen2-vl", "preprocessor_config.json"), out / "preprocessor_config.json")
    shutil.copyfile(_src("qwen2-vl", "chat_template.jinja"), out / "chat_template.jinja")


def _smollm2_tokenizer():
    from transformers import AutoTokenizer

    gguf = _src("smolvlm", SMOLLM2_GGUF)
    return AutoTokenizer.from_pretrained(gguf.parent, gguf_file=gguf.name)


def build_smolvlm(out: Path) -> None:
    """SmolVLM-Instruct (Idefics3): SigLIP 384 px / patch 14 (27x27 patches), pixel shuffle by 3 -> 81 image
    tokens per image. Shrunk: image splitting off (the hub splits large images into 384 px tiles + a global
    image); the hub's <row_i_col_j>/<global-img> strings are not added tokens here (config vocab 49155 has room
    for the three added tokens only)."""
    from transformers import Idefics3Config, Idefics3ForConditionalGeneration, Idefics3ImageProcessor, Idefics3Processor

    tok = _smollm2_tokenizer()
    tok.add_special_tokens(
        {"additional_special_tokens": ["<fake_token_around_image>", "<image>", "<end_of_utterance>"]}
    )
    assert tok.convert_tokens_to_ids(["<fake_token_around_image>", "<image>", "<end_of_utterance>"]) == [
        49152,
        49153,
        49154,
    ]
    cfg = Idefics3Config(
        vision_config=dict(image_size=384, patch_size=14, **TINY_CLIP),
        text_config=_llama_text(49155, bos_token_id=1, eos_token_id=2, pad_token_id=2),
        image_token_id=49153,
        scale_factor=3,
    )
    ip = Idefics3ImageProcessor(
        size={"longest_edge": 384}, max_image_size={"longest_edge": 384}, do_image_splitting=False, resample=1
    )
    proc = Idefics3Processor(image_processor=ip, tokenizer=tok, image_seq_len=81, chat_template=_template("smolvlm"))
    _save(Idefics3ForConditionalGeneration(cfg), proc, out)


def build_tiny_llava_smollm2(out: Path) -> None:
    """The project's own model (mmcal.tinyllava): LlavaForConditionalGeneration, SmolLM2's tokenizer + <image>,
    its ChatML template, a CLIP-style tower at 28 px / patch 7 -> 16 image tokens; untrained and tiny here."""
    from transformers import CLIPImageProcessor, LlavaConfig, LlavaForConditionalGeneration

    from mmcal.tinyllava.model import IMAGE_TOKEN, build_processor

    tok = _smollm2_tokenizer()
    tok.add_special_tokens({"additional_special_tokens": [IMAGE_TOKEN]})
    cfg = LlavaConfig(
        vision_config=dict(model_type="clip_vision_model", image_size=28, patch_size=7, projection_dim=32, **TINY_CLIP),
        text_config=_llama_text(len(tok), bos_token_id=1, eos_token_id=2, pad_token_id=2, tie_word_embeddings=True),
        image_token_id=tok.convert_tokens_to_ids(IMAGE_TOKEN),
        vision_feature_select_strategy="default",
        vision_feature_layer=-2,
        tie_word_embeddings=True,
    )
    ip = CLIPImageProcessor(size={"height": 28, "width": 28}, do_center_crop=False)
    _save(LlavaForConditionalGeneration(cfg), build_processor(tok, ip, patch_size=7), out)


def build_paligemma(out: Path) -> None:
    """PaliGemma (google/paligemma-3b-mix-224): SigLIP 224 px / patch 14 -> 256 image tokens, Gemma LM, the
    processor's own layout (<image>x256 + <bos> + prompt + "\n"). STAND-IN VOCABULARY: no Gemma-1 tokenizer is
    reachable offline, so Llama-2's (also SentencePiece BPE with byte fallback) carries <image> + the 1024 <locNNNN>
    + 128 <segNNN> tokens the processor adds; ids and splits are not Gemma's. SigLIP values (mean/std 0.5, 224 px,
    bicubic) are PaliGemma's documented ones, not pinned hub bytes."""
    from transformers import (
        PaliGemmaConfig,
        PaliGemmaForConditionalGeneration,
        PaliGemmaProcessor,
        SiglipImageProcessor,
    )

    tok = _llama2_tokenizer("llava-1.5", hub_added=False)
    ip = SiglipImageProcessor(size={"height": 224, "width": 224}, image_mean=[0.5] * 3, image_std=[0.5] * 3, resample=3)
    ip.image_seq_length = 256
    proc = PaliGemmaProcessor(image_processor=ip, tokenizer=tok)
    cfg = PaliGemmaConfig(
        vision_config=dict(
            model_type="siglip_vision_model", image_size=224, patch_size=14, projection_dim=32, **TINY_CLIP
        ),
        text_config=dict(
            model_type="gemma",
            vocab_size=len(tok),
            head_dim=16,
            max_position_embeddings=4096,
            bos_token_id=1,
            eos_token_id=2,
            pad_token_id=0,
            **TINY_TEXT,
        ),
        image_token_id=proc.image_token_id,
        projection_dim=32,
    )
    _save(PaliGemmaForConditionalGeneration(cfg), proc, out)


def build_qwen7b(out: Path) -> None:
    """Qwen-7B's tokenizer only (its model class is remote code, which is not copied here): the fast tokenizer
    fetch.py derived from qwen.tiktoken, with the remote tokenizer's specials and ids."""
    _fast_tokenizer("qwen-7b").save_pretrained(out)


FAMILIES = {
    "llava-1.5": (build_llava15, ["llava-1.5"]),
    "vicuna-7b-v1.5": (build_vicuna, ["vicuna-7b-v1.5"]),
    "llava-next": (build_llava_next, ["llava-next"]),
    "qwen2-vl": (build_qwen2_vl, ["qwen2-vl"]),
    "qwen2": (build_qwen2, ["qwen2"]),
    "smolvlm": (build_smolvlm, ["smolvlm"]),
    "tiny-llava-smollm2": (build_tiny_llava_smollm2, ["smolvlm"]),
    "paligemma-standin-vocab": (build_paligemma, ["llava-1.5"]),
    "qwen-7b": (build_qwen7b, ["qwen-7b"]),
}


def _save(model, processor, out: Path) -> None:
    model.eval()
    model.save_pretrained(out)
    processor.save_pretrained(out)


def build_key(family: str) -> str:
    """Hash of what a replica is made of: this script, sources.yaml, the family's cached files, the versions."""
    import torch
    import transformers

    h = hashlib.sha256()
    h.update(Path(__file__).read_bytes() + (HERE / "sources.yaml").read_bytes())
    h.update(f"{transformers.__version__}|{torch.__version__}".encode())
    for src in FAMILIES[family][1]:
        folder = CACHE / src
        files = sorted(folder.iterdir()) if folder.is_dir() else []
        if not files:
            raise ReplicaMissing(f"{folder} holds no files: run `python tests/replicas/fetch.py {src}`")
        for f in files:
            h.update(f"{f.name}:{sha256_file(f)}".encode())
    return h.hexdigest()


def build(family: str) -> Path:
    """The replica's folder, built unless already built from the same sources."""
    import torch

    out = BUILT / family
    key = build_key(family)
    if (out / KEY_FILE).is_file() and (out / KEY_FILE).read_text() == key:
        return out
    tmp = out.with_name(f"{out.name}.tmp{os.getpid()}")  # one per process: two test runs may build at once
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    with torch.random.fork_rng(devices=[]):  # seeded, and the caller's generator left as it was
        torch.manual_seed(0)
        FAMILIES[family][0](tmp)
    (tmp / KEY_FILE).write_text(key)
    shutil.rmtree(out, ignore_errors=True)
    try:
        os.replace(tmp, out)
    except OSError:  # another process put its build there first: the same sources, the same replica
        shutil.rmtree(tmp, ignore_errors=True)
        if not ((out / KEY_FILE).is_file() and (out / KEY_FILE).read_text() == key):
            raise
    return out


def main(argv: list[str]) -> int:
    unknown = [f for f in argv if f not in FAMILIES]
    if unknown:
        sys.exit(f"build.py: unknown families {unknown}; known: {list(FAMILIES)}")
    for family in argv or FAMILIES:
        print(f"{family}: {build(family)}")
    return 0


if __name__ == "__main__":
    try:
        sys.exit(main(sys.argv[1:]))
    except ReplicaMissing as e:
        sys.exit(f"build.py: {e}")
