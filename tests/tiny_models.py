"""Tiny random-weight MLLMs of real ``transformers`` architectures, built locally (no hub).

They let the engine's code path for hub models (LLaVA-1.5, Qwen2-VL) run here: same classes,
same processors, same save/load through the Auto classes, just tiny and untrained.
"""

from __future__ import annotations

import functools
from pathlib import Path

import torch

from mmcal.engine.chat import TINY_LLAVA_CHAT_TEMPLATE


def _seeded(build):
    """Initialise the model from ``seed`` on a forked generator: the same weights every time, and torch's
    global generator left as it was (the tests after a build draw what they would have drawn without it)."""

    @functools.wraps(build)
    def wrapper(out_dir, lm_dir, seed: int = 0):
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            return build(out_dir, lm_dir, seed)

    return wrapper


def _tokenizer(lm_dir: str | Path, extra_tokens: list[str]):
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(lm_dir)
    tok.add_special_tokens({"additional_special_tokens": extra_tokens})
    return tok


@_seeded
def build_tiny_llava(out_dir: str | Path, lm_dir: str | Path, seed: int = 0) -> Path:
    from transformers import (
        CLIPImageProcessor,
        CLIPVisionConfig,
        LlamaConfig,
        LlavaConfig,
        LlavaForConditionalGeneration,
        LlavaProcessor,
    )

    tok = _tokenizer(lm_dir, ["<image>"])
    vision = CLIPVisionConfig(
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=1,
        num_attention_heads=2,
        image_size=28,
        patch_size=14,
        num_channels=3,
    )
    text = LlamaConfig(
        vocab_size=len(tok),
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=2,
        num_attention_heads=2,
        num_key_value_heads=1,
        max_position_embeddings=512,
        pad_token_id=tok.pad_token_id,
    )
    cfg = LlavaConfig(
        vision_config=vision,
        text_config=text,
        image_token_index=tok.convert_tokens_to_ids("<image>"),
        vision_feature_select_strategy="default",
        vision_feature_layer=-1,
    )
    model = LlavaForConditionalGeneration(cfg).eval()
    ip = CLIPImageProcessor(
        size={"shortest_edge": 28},
        crop_size={"height": 28, "width": 28},
        do_center_crop=True,
    )
    proc = LlavaProcessor(
        image_processor=ip,
        tokenizer=tok,
        patch_size=14,
        vision_feature_select_strategy="default",
        num_additional_image_tokens=1,
        chat_template=TINY_LLAVA_CHAT_TEMPLATE,
    )
    out_dir = Path(out_dir)
    model.save_pretrained(out_dir)
    proc.save_pretrained(out_dir)
    return out_dir


IDEFICS3_TEMPLATE = (
    "<|im_start|>{% for message in messages %}{{ message['role'] | capitalize }}"
    "{% if message['content'] is string %}: {{ message['content'] }}{% else %}"
    "{% if message['content'][0]['type'] == 'image' %}:{% else %}: {% endif %}"
    "{% for part in message['content'] %}{% if part['type'] == 'image' %}<image>"
    "{% elif part['type'] == 'text' %}{{ part['text'] }}{% endif %}{% endfor %}{% endif %}"
    "<end_of_utterance>\n{% endfor %}{% if add_generation_prompt %}Assistant:{% endif %}"
)


@_seeded
def build_tiny_idefics3(out_dir: str | Path, lm_dir: str | Path, seed: int = 0) -> Path:
    """SmolVLM / Idefics3 family: SigLIP-style encoder, pixel-shuffle connector, Llama LM."""
    from transformers import (
        Idefics3Config,
        Idefics3ForConditionalGeneration,
        Idefics3ImageProcessor,
        Idefics3Processor,
    )

    tok = _tokenizer(lm_dir, ["<fake_token_around_image>", "<image>", "<global-img>", "<end_of_utterance>"])
    cfg = Idefics3Config(
        vision_config=dict(
            hidden_size=32,
            intermediate_size=64,
            num_hidden_layers=1,
            num_attention_heads=2,
            image_size=28,
            patch_size=7,
        ),
        text_config=dict(
            model_type="llama",
            vocab_size=len(tok),
            hidden_size=32,
            intermediate_size=64,
            num_hidden_layers=2,
            num_attention_heads=2,
            num_key_value_heads=1,
            max_position_embeddings=512,
            pad_token_id=tok.pad_token_id,
        ),
        image_token_id=tok.convert_tokens_to_ids("<image>"),
        scale_factor=2,
    )
    model = Idefics3ForConditionalGeneration(cfg).eval()
    ip = Idefics3ImageProcessor(
        size={"longest_edge": 28}, max_image_size={"longest_edge": 28}, do_image_splitting=False
    )
    proc = Idefics3Processor(image_processor=ip, tokenizer=tok, image_seq_len=4, chat_template=IDEFICS3_TEMPLATE)
    out_dir = Path(out_dir)
    model.save_pretrained(out_dir)
    proc.save_pretrained(out_dir)
    return out_dir


QWEN2VL_TEMPLATE = (
    "{% for message in messages %}<|im_start|>{{ message['role'] }}\n"
    "{% if message['content'] is string %}{{ message['content'] }}{% else %}"
    "{% for part in message['content'] %}{% if part['type'] == 'image' %}"
    "<|vision_start|><|image_pad|><|vision_end|>{% elif part['type'] == 'text' %}{{ part['text'] }}"
    "{% endif %}{% endfor %}{% endif %}<|im_end|>\n{% endfor %}"
    "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)


@_seeded
def build_tiny_qwen2vl(out_dir: str | Path, lm_dir: str | Path, seed: int = 0) -> Path:
    """Qwen2-VL family: its own ViT with 2x2 patch merging, and multimodal rotary positions (mrope),
    which the engine cannot reuse a prefix cache for. A 28x28 image is resized to 56x56 = 4 tokens.
    Needs torchvision (Qwen2-VL's processor always carries a video processor)."""
    from transformers import Qwen2VLVideoProcessor

    model, proc = tiny_qwen2vl_parts(lm_dir, seed, video_processor=Qwen2VLVideoProcessor())
    out_dir = Path(out_dir)
    model.save_pretrained(out_dir)
    proc.save_pretrained(out_dir)
    return out_dir


def tiny_qwen2vl_parts(lm_dir: str | Path, seed: int = 0, video_processor=None):
    from transformers import Qwen2VLConfig, Qwen2VLForConditionalGeneration, Qwen2VLProcessor
    from transformers.models.qwen2_vl.image_processing_pil_qwen2_vl import Qwen2VLImageProcessorPil

    tok = _tokenizer(lm_dir, ["<|vision_start|>", "<|image_pad|>", "<|vision_end|>", "<|video_pad|>"])
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
            vocab_size=len(tok),
            hidden_size=32,
            intermediate_size=64,
            num_hidden_layers=2,
            num_attention_heads=2,
            num_key_value_heads=1,
            max_position_embeddings=512,
            pad_token_id=tok.pad_token_id,
            bos_token_id=tok.bos_token_id,
            eos_token_id=tok.eos_token_id,
            rope_parameters={"rope_type": "default", "rope_theta": 10000.0, "mrope_section": [2, 3, 3]},
        ),
        image_token_id=ids("<|image_pad|>"),
        video_token_id=ids("<|video_pad|>"),
        vision_start_token_id=ids("<|vision_start|>"),
        vision_end_token_id=ids("<|vision_end|>"),
    )
    model = Qwen2VLForConditionalGeneration(cfg).eval()
    ip = Qwen2VLImageProcessorPil(size={"shortest_edge": 56 * 56, "longest_edge": 56 * 56})
    proc = Qwen2VLProcessor(
        image_processor=ip, tokenizer=tok, video_processor=video_processor, chat_template=QWEN2VL_TEMPLATE
    )
    return model, proc


def tiny_clip_vit_l336(out_dir: str | Path, seed: int = 1):
    """A tiny ``CLIPVisionModel`` of CLIP ViT-L/336's geometry (336 px, patch 14: 576 patches), seeded from
    ``seed`` with the global RNG (what is drawn after it continues from there), saved to ``out_dir``."""
    from transformers import CLIPVisionConfig, CLIPVisionModel

    torch.manual_seed(seed)
    vision = CLIPVisionModel(
        CLIPVisionConfig(
            hidden_size=24,
            intermediate_size=48,
            num_hidden_layers=2,
            num_attention_heads=2,
            image_size=336,
            patch_size=14,
            projection_dim=24,
        )
    )
    vision.save_pretrained(out_dir)
    return vision


def tiny_llava_stage1_inputs(out_dir: Path, hidden: int, projector_file: str):
    """The CLIP of :func:`tiny_clip_vit_l336` (``out_dir/clip``) and, drawn after it from the same generator, a
    LLaVA-1.5 ``mm_projector`` (24 -> ``hidden``, GELU, ``hidden``) saved as ``out_dir/projector/projector_file``;
    returns (vision, projector state dict). Call inside ``own_global_state()``."""
    vision = tiny_clip_vit_l336(out_dir / "clip")
    projector = {
        "model.mm_projector.0.weight": torch.randn(hidden, 24),
        "model.mm_projector.0.bias": torch.randn(hidden),
        "model.mm_projector.2.weight": torch.randn(hidden, hidden),
        "model.mm_projector.2.bias": torch.randn(hidden),
    }
    (out_dir / "projector").mkdir()
    torch.save(projector, out_dir / "projector" / projector_file)
    return vision, projector
