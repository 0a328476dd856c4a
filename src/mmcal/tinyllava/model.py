"""Assembling, saving and running the tiny-LLaVA: a genuine ``LlavaForConditionalGeneration``.

vision tower (our CLIP-style ViT) + projector (LLaVA-1.5's 2-layer GELU MLP) + the real
SmolLM2-135M-Instruct, with an ``<image>`` token added to SmolLM2's tokenizer, and a
``LlavaProcessor`` (``CLIPImageProcessor`` sized 28x28, no crop) that expands ``<image>`` to one
token per patch (``vision_feature_select_strategy='default'`` drops CLS, hence
``num_additional_image_tokens=1``). Saved with ``save_pretrained``; any process reloads it with
``AutoModelForImageTextToText`` + ``AutoProcessor`` and no custom code.

Training never re-runs the frozen vision tower: :func:`logits_from_features` is the model's own
forward pass with cached patch features in place of ``pixel_values`` (tests check it matches).
"""

from __future__ import annotations

import logging
from pathlib import Path

from mmcal.engine.chat import TINY_LLAVA_CHAT_TEMPLATE
from mmcal.errors import MmcalError

log = logging.getLogger(__name__)

IMAGE_TOKEN = "<image>"


def build_processor(tokenizer, image_processor, patch_size: int):
    """``LlavaProcessor`` + chat template; the tokenizer gets the template too."""
    from transformers import LlavaProcessor

    tokenizer.chat_template = TINY_LLAVA_CHAT_TEMPLATE
    return LlavaProcessor(
        image_processor=image_processor,
        tokenizer=tokenizer,
        patch_size=patch_size,
        vision_feature_select_strategy="default",
        num_additional_image_tokens=1,
        chat_template=TINY_LLAVA_CHAT_TEMPLATE,
        image_token=IMAGE_TOKEN,
    )


def assemble_tiny_llava(
    vision_dir: str | Path,
    lm_dir: str | Path,
    feature_layer: int = -2,
    projector_act: str = "gelu",
    seed: int = 0,
):
    """(model, processor): pretrained tower + fresh seeded projector + pretrained SmolLM2."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer, LlavaConfig, LlavaForConditionalGeneration

    from mmcal.tinyllava.vision import load_vision_tower

    for what, path in (("vision tower", vision_dir), ("language model", lm_dir)):
        if not (Path(path) / "config.json").exists():
            raise MmcalError(f"tiny-LLaVA {what}: no checkpoint at {path} (config.json missing)")
    tower, image_processor = load_vision_tower(vision_dir)
    lm = AutoModelForCausalLM.from_pretrained(lm_dir, dtype=torch.float32)
    tokenizer = AutoTokenizer.from_pretrained(lm_dir)
    tokenizer.add_special_tokens({"additional_special_tokens": [IMAGE_TOKEN]})
    n_layers = tower.config.num_hidden_layers
    if not -n_layers - 1 <= feature_layer <= n_layers:
        raise MmcalError(f"feature_layer {feature_layer} outside the tower's {n_layers} layers")

    config = LlavaConfig(
        vision_config=tower.config.to_dict(),
        text_config=lm.config.to_dict(),
        image_token_id=tokenizer.convert_tokens_to_ids(IMAGE_TOKEN),
        projector_hidden_act=projector_act,
        vision_feature_select_strategy="default",
        vision_feature_layer=feature_layer,
        tie_word_embeddings=bool(lm.config.tie_word_embeddings),
    )
    torch.manual_seed(seed)  # the projector's initial weights
    model = LlavaForConditionalGeneration(config)
    model.model.vision_tower.load_state_dict(tower.state_dict())
    model.model.language_model.load_state_dict(lm.model.state_dict())
    model.lm_head.load_state_dict(lm.lm_head.state_dict())
    # The <image> row is never looked up (features replace it), so its init does not matter.
    model.resize_token_embeddings(len(tokenizer), mean_resizing=False)
    model.tie_weights()
    model.generation_config.pad_token_id = tokenizer.pad_token_id
    processor = build_processor(tokenizer, image_processor, tower.config.patch_size)
    return model, processor


def save_tiny_llava(model, processor, out_dir: str | Path) -> Path:
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(out_dir)
    processor.save_pretrained(out_dir)
    return out_dir


def load_tiny_llava(model_dir: str | Path):
    """(model, processor) through the Auto classes, exactly as the scoring engine loads it."""
    import torch
    from transformers import AutoModelForImageTextToText, AutoProcessor

    if not (Path(model_dir) / "config.json").exists():
        raise MmcalError(f"no tiny-LLaVA checkpoint at {model_dir} (config.json missing)")
    model = AutoModelForImageTextToText.from_pretrained(model_dir, dtype=torch.float32)
    return model, AutoProcessor.from_pretrained(model_dir)


def n_image_tokens(model) -> int:
    """Image features per image: patches of the tower (CLS dropped by the "default" strategy)."""
    vc = model.config.vision_config
    return (vc.image_size // vc.patch_size) ** 2


def vision_tower(model):
    return model.model.vision_tower


def trainable_parts(model) -> dict:
    """Named submodules whose freezing the stages decide."""
    return {
        "vision_tower": model.model.vision_tower,
        "projector": model.model.multi_modal_projector,
        "language_model": model.model.language_model,
        "lm_head": model.lm_head,
    }


def logits_from_features(model, input_ids, attention_mask, features, positions):
    """Logits at ``positions`` [B, K] of the LLaVA forward pass, given cached patch features.

    Same arithmetic as ``LlavaForConditionalGeneration.forward``: token embeddings with the
    projected features scattered into the ``<image>`` slots, the language model, the LM head --
    but the head runs only at the positions a loss needs (the 49k-word head over every position
    would cost a fifth of a training step).
    """
    import torch

    embeds = _input_embeddings(model, input_ids, features)
    hidden = model.model.language_model(inputs_embeds=embeds, attention_mask=attention_mask).last_hidden_state
    rows = torch.arange(len(input_ids)).unsqueeze(1)
    return model.lm_head(hidden[rows, positions])


def _input_embeddings(model, input_ids, features):
    """Token embeddings with the projected patch features scattered into the ``<image>`` slots."""
    embeds = model.get_input_embeddings()(input_ids)
    projected = model.model.multi_modal_projector(features).to(embeds.dtype)
    slots = (input_ids == model.config.image_token_id).unsqueeze(-1)
    if int(slots.sum()) != projected.numel() // projected.shape[-1]:
        raise MmcalError(f"{int(slots.sum())} <image> tokens but {projected.shape[0] * projected.shape[1]} features")
    return embeds.masked_scatter(slots, projected)


def _run_decoder_layers(language_model, hidden, attention_mask, layers):
    """``layers`` of the language model on ``hidden``, as its own forward runs them (default positions,
    its causal mask and rotary embeddings, no cache); no final norm."""
    import torch
    from transformers.masking_utils import create_causal_mask

    position_ids = torch.arange(hidden.shape[1]).unsqueeze(0)
    mask = create_causal_mask(
        config=language_model.config,
        inputs_embeds=hidden,
        attention_mask=attention_mask,
        cache=None,
        position_ids=position_ids,
    )
    rotary = language_model.rotary_emb(hidden, position_ids=position_ids)
    for layer in layers:
        hidden = layer(hidden, attention_mask=mask, position_embeddings=rotary, position_ids=position_ids)
    return hidden


def decoder_entry(model, input_ids, attention_mask, features, first_layer: int):
    """The hidden states entering decoder layer ``first_layer``: what a stage that trains only the layers
    from there up (projector frozen) can compute once per example and cache (no autograd)."""
    import torch

    lm = model.model.language_model
    with torch.no_grad():
        embeds = _input_embeddings(model, input_ids, features)
        return _run_decoder_layers(lm, embeds, attention_mask, lm.layers[:first_layer])


def logits_from_entry(model, hidden, attention_mask, positions, first_layer: int):
    """Logits at ``positions`` [B, K] from :func:`decoder_entry`'s states: the layers from ``first_layer``
    up, the final norm and the LM head (only where a loss reads it); with ``first_layer`` 0 and the
    embeddings as ``hidden``, the same arithmetic as :func:`logits_from_features`."""
    import torch

    lm = model.model.language_model
    hidden = lm.norm(_run_decoder_layers(lm, hidden, attention_mask, lm.layers[first_layer:]))
    rows = torch.arange(len(hidden)).unsqueeze(1)
    return model.lm_head(hidden[rows, positions])
