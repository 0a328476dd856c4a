"""LLaVA-1.5 after stage 1 (feature alignment) only, as a ``LlavaForConditionalGeneration``.

The LLaVA authors released the stage-1 projector alone (``mm_projector.bin`` of
liuhaotian/llava-v1.5-mlp2x-336px-pretrain-vicuna-7b-v1.5: a two-layer GELU MLP, keys
``model.mm_projector.{0,2}.{weight,bias}``); stage 1 trains nothing else, so the model is that projector
between the frozen CLIP ViT-L/336 tower and the untouched Vicuna-7B-v1.5. It is assembled here in the
layout of llava-hf/llava-1.5-7b-hf (the stage-2 model it is compared with), whose processor, chat template
and vocabulary it takes: llava-hf's tokenizer adds ``<image>`` (32000) and ``<pad>`` (32001) to Llama-2's
32,000 tokens, and the embedding and lm_head are padded to a multiple of 64 (32,064 rows).

New rows: llava-hf's conversion (transformers' convert_llava_weights_to_hf.py) draws every row past the
original vocabulary, in both the input embedding and the lm_head, from N(mu, 1e-5 * Sigma), mu and Sigma
being the mean and covariance of the original input-embedding rows; the same rule here, with a seeded
generator so the build is reproducible (llava-hf's draw was not seeded: its rows cannot be reproduced).
No text the study scores contains those tokens outside the image placeholder (whose embedding rows are
replaced by image features), so only their lm_head rows matter, as extra logits of tiny norm in the
full-vocabulary readout.

Dtype: every tensor is stored in the language model's dtype (Vicuna's float16, as llava-hf publishes).
"""

from __future__ import annotations

import json
import math
from pathlib import Path

from mmcal.errors import ConfigError, DataError

ROLES = ("projector", "language_model", "vision_tower", "processor")
PROJECTOR_FILE = "mm_projector.bin"
PROJECTOR_KEYS = {
    "model.mm_projector.0.weight": "model.multi_modal_projector.linear_1.weight",
    "model.mm_projector.0.bias": "model.multi_modal_projector.linear_1.bias",
    "model.mm_projector.2.weight": "model.multi_modal_projector.linear_2.weight",
    "model.mm_projector.2.bias": "model.multi_modal_projector.linear_2.bias",
}
PAD_TO = 64
NEW_ROW_SCALE = 1e-5  # the covariance factor of llava-hf's conversion
VISION_FEATURE_LAYER = -2
VISION_FEATURE_SELECT_STRATEGY = "default"


def source_folders(sources: dict, resolved: dict, model: str) -> dict[str, Path]:
    """role → folder of each source, as the download rule recorded it (``resolved``: its JSON)."""
    missing = [r for r in ROLES if r not in (sources or {})]
    if missing:
        raise ConfigError(f"models.{model}: build llava_stage1 needs sources {list(ROLES)}; missing {missing}")
    out = {}
    for role in ROLES:
        key = f"models.{model}.sources.{role}"
        if key not in resolved:
            raise DataError(f"{key}: not in the download rule's record (rerun the download rule)")
        out[role] = Path(resolved[key]["folder"])
    return out


def new_row_distribution(embeddings):
    """(mu, covariance) of llava-hf's new rows: the mean of ``embeddings``' rows and 1e-5 times their population
    covariance (divided by the row count, as the conversion script divides), in float64 on one thread: the job's
    thread count changes a parallel reduction's rounding, and with it the rows (measured: 3e-11)."""
    import torch

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        e = embeddings.detach().double()
        mu = e.mean(0)
        centred = e - mu
        return mu, NEW_ROW_SCALE * (centred.T @ centred / e.shape[0])
    finally:
        torch.set_num_threads(threads)


def new_rows(embeddings, n: int, seed: int):
    """``n`` rows drawn from :func:`new_row_distribution` of ``embeddings`` with a seeded generator."""
    import torch

    mu, cov = new_row_distribution(embeddings)
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        chol, info = torch.linalg.cholesky_ex(cov)
        if info:
            raise DataError("the language model's embedding rows have a singular covariance: cannot draw new rows")
        g = torch.Generator().manual_seed(seed)
        z = torch.randn(n, mu.shape[0], generator=g, dtype=torch.float64)
        return (mu + z @ chol.T).float()
    finally:
        torch.set_num_threads(threads)


def _load_projector(folder: Path) -> dict:
    import torch

    path = folder / PROJECTOR_FILE
    if not path.is_file():
        raise DataError(f"{folder}: no {PROJECTOR_FILE} (the stage-1 projector release)")
    state = torch.load(path, map_location="cpu", weights_only=True)
    if set(state) != set(PROJECTOR_KEYS):
        raise DataError(f"{path}: keys {sorted(state)}, expected {sorted(PROJECTOR_KEYS)}")
    return {PROJECTOR_KEYS[k]: v for k, v in state.items()}


def _llava_hf_config(folder: Path) -> dict | None:
    path = folder / "config.json"
    if not path.is_file():
        return None
    cfg = json.loads(path.read_text())
    return cfg if cfg.get("model_type") == "llava" else None


def assemble(folders: dict[str, Path], out_dir: str | Path, seed: int = 0) -> dict:
    """Build the stage-1 model from the four source folders into ``out_dir``; returns its summary."""
    import torch
    from transformers import (
        AutoModelForCausalLM,
        AutoProcessor,
        CLIPVisionModel,
        LlavaConfig,
        LlavaForConditionalGeneration,
    )

    processor = AutoProcessor.from_pretrained(folders["processor"])
    tok = processor.tokenizer
    image_id = tok.convert_tokens_to_ids(processor.image_token)
    pad_id = tok.pad_token_id
    lm = AutoModelForCausalLM.from_pretrained(folders["language_model"], dtype="auto")
    dtype = lm.dtype
    vision = CLIPVisionModel.from_pretrained(folders["vision_tower"], dtype=dtype)
    projector = _load_projector(folders["projector"])

    n_old = lm.config.vocab_size
    n_tokens = len(tok)
    vocab = math.ceil(n_tokens / PAD_TO) * PAD_TO
    for what, token_id in (("image token", image_id), ("pad token", pad_id)):
        if token_id is None or not n_old <= token_id < n_tokens:
            raise DataError(
                f"{folders['processor']}: {what} id {token_id} is not a token added after the language "
                f"model's {n_old} rows (tokenizer has {n_tokens})"
            )
    reference = _llava_hf_config(folders["processor"])
    if reference and (reference["text_config"].get("vocab_size"), reference["image_token_index"]) != (vocab, image_id):
        raise DataError(
            f"{folders['processor']}/config.json: vocab {reference['text_config'].get('vocab_size')}, image token "
            f"{reference['image_token_index']}; assembled vocab {vocab}, image token {image_id}"
        )
    vcfg = vision.config
    if processor.image_processor.crop_size["height"] != vcfg.image_size or processor.patch_size != vcfg.patch_size:
        raise DataError(
            f"{folders['processor']}: crops {processor.image_processor.crop_size} / patch {processor.patch_size}, "
            f"vision tower {folders['vision_tower']}: image {vcfg.image_size} / patch {vcfg.patch_size}"
        )
    hidden, v_hidden = lm.config.hidden_size, vcfg.hidden_size
    expected = {
        "model.multi_modal_projector.linear_1.weight": (hidden, v_hidden),
        "model.multi_modal_projector.linear_2.weight": (hidden, hidden),
    }
    for key, shape in expected.items():
        if tuple(projector[key].shape) != shape:
            raise DataError(
                f"{folders['projector']}/{PROJECTOR_FILE}: {key} has shape {tuple(projector[key].shape)}, "
                f"the sources need {shape} (language model {hidden}, vision tower {v_hidden})"
            )

    lm_state = lm.state_dict()
    embed = lm_state["model.embed_tokens.weight"]
    extra = vocab - n_old
    state = {f"model.language_model.{k[len('model.') :]}": v for k, v in lm_state.items() if k.startswith("model.")}
    # the input embedding's new rows, then the lm_head's: independent draws, as in llava-hf's conversion
    drawn = new_rows(embed, 2 * extra, seed).to(dtype)
    state["model.language_model.embed_tokens.weight"] = torch.cat([embed, drawn[:extra]])
    state["lm_head.weight"] = torch.cat([lm_state["lm_head.weight"], drawn[extra:]])
    state.update({f"model.vision_tower.{k}": v for k, v in vision.state_dict().items()})
    state.update({k: v.to(dtype) for k, v in projector.items()})

    text_config = lm.config.to_dict()
    text_config.update(vocab_size=vocab, pad_token_id=pad_id)
    config = LlavaConfig(
        text_config=text_config,
        vision_config=vcfg.to_dict(),
        image_token_index=image_id,
        projector_hidden_act="gelu",
        vision_feature_layer=VISION_FEATURE_LAYER,
        vision_feature_select_strategy=VISION_FEATURE_SELECT_STRATEGY,
        image_seq_length=(vcfg.image_size // vcfg.patch_size) ** 2,
        multimodal_projector_bias=True,
        tie_word_embeddings=False,
    )
    config.dtype = dtype
    with torch.device("meta"):
        model = LlavaForConditionalGeneration(config)
    model.load_state_dict(state, strict=True, assign=True)
    model.generation_config = lm.generation_config
    out_dir = Path(out_dir)
    model.save_pretrained(out_dir, max_shard_size="5GB")
    processor.save_pretrained(out_dir)
    return {
        "vocab_size": vocab,
        "new_rows": extra,
        "image_token_index": image_id,
        "pad_token_id": pad_id,
        "dtype": str(dtype).removeprefix("torch."),
        "seed": seed,
    }


def build(model: str, mcfg: dict, resolved: dict, out_dir: str | Path, seed: int = 0) -> dict:
    """The rule's work: sources from the download record, the model into ``out_dir``, and ``sources.json``."""
    folders = source_folders(mcfg.get("sources"), resolved, model)
    summary = assemble(folders, out_dir, seed=seed)
    record = {
        role: {
            k: resolved[f"models.{model}.sources.{role}"].get(k)
            for k in ("path", "revision", "commit", "mode", "sha256")
        }
        for role in ROLES
    }
    record["assembly"] = summary
    (Path(out_dir) / "sources.json").write_text(json.dumps(record, indent=2, sort_keys=True) + "\n")
    return record
