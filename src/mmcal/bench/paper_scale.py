"""Benchmark at paper scale: the engine on a random-weight model of LLaVA-1.5-7B's exact shapes.

    python -m mmcal.bench.paper_scale                                   # a CUDA GPU, bf16, batches 1 8 32 64
    python -m mmcal.bench.paper_scale --reduced --device cpu --threads 2 --batch-sizes 1 8

The model is ``LlavaForConditionalGeneration`` with the shapes of ``llava-hf/llava-1.5-7b-hf``: CLIP
ViT-L/14 at 336 px (24 layers, hidden 1024, 576 image tokens; features of layer -2), the two-layer GELU
projector, and Llama-2-7B (32 layers, hidden 4096, 32 heads, intermediate 11008, vocabulary 32064).
Nothing is downloaded: the model is allocated directly on the device in the run's dtype and filled with
random values there; the tokenizer, chat template and image processor are the LLaVA-1.5 replica's
(tests/replicas: Llama-2's real vocabulary, the hub template, CLIP-336 preprocessing), so the prompts
have the real token counts (~650 per item). ``--reduced``: the same structure (the same image size,
vocabulary, prompts and readouts) with a few narrow layers, for a CPU.

Every item's FLOPs are counted analytically from the shapes and its own token counts: the vision
layers the features need, the projector, 2 x parameters x tokens for the language model plus its
attention (causal over the prefix; a packed continuation node attends to the prefix and its
ancestors), and the logits only where a readout reads them (padding and unread logits are not
counted). MFU = those FLOPs / time / the device's peak dense FLOP/s (``PEAK_TFLOPS`` by GPU name, or
``--peak-tflops``). Two timings per row: the engine end to end (``Engine.score``: images through the
processor on the CPU, then the model, then records), and its model passes alone (the same
pre-encoded batches through ``Engine._run_part``), each the fastest of ``--repeats`` interleaved runs.
On a CPU the peak is a square fp32 matrix product measured on the same threads beside each row (the
largest measurement counts), unless ``--peak-tflops`` is given.

Items: the same four Fashion-MNIST class names as options for every item (so every batch is full:
one prefix length), random 336 x 336 images.
"""

from __future__ import annotations

import argparse
import os
import tempfile
import time
from dataclasses import dataclass, replace
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")

# Peak dense bf16 tensor FLOP/s (no sparsity), from the vendors' data sheets, by a substring of the name
# torch.cuda.get_device_name() gives. Order matters: the first match wins.
PEAK_TFLOPS = [
    ("H100 PCIe", 756.0),
    ("H100 NVL", 835.0),
    ("H100", 989.4),  # SXM ("NVIDIA H100 80GB HBM3")
    ("H200", 989.4),
    ("GH200", 989.4),
    ("A100", 312.0),
    ("L40S", 362.1),
    ("L4", 121.0),
]

REPLICA = Path.home() / ".cache/mmcal/replicas/built/llava-1.5"
OPTIONS = ["T-shirt/top", "Trouser", "Pullover", "Ankle boot"]

# llava-hf/llava-1.5-7b-hf's configuration (the parts that set shapes and compute)
VISION = dict(
    hidden_size=1024,
    intermediate_size=4096,
    num_hidden_layers=24,
    num_attention_heads=16,
    image_size=336,
    patch_size=14,
    projection_dim=768,
    hidden_act="quick_gelu",
    layer_norm_eps=1e-5,
)
TEXT = dict(
    hidden_size=4096,
    intermediate_size=11008,
    num_hidden_layers=32,
    num_attention_heads=32,
    num_key_value_heads=32,
    vocab_size=32064,
    max_position_embeddings=4096,
    rms_norm_eps=1e-5,
    pad_token_id=32001,
    bos_token_id=1,
    eos_token_id=2,
)
LLAVA = dict(
    image_token_index=32000,
    vision_feature_layer=-2,
    vision_feature_select_strategy="default",
    projector_hidden_act="gelu",
    image_seq_length=576,
)
# --reduced: same structure, a few narrow layers
REDUCED_VISION = dict(hidden_size=256, intermediate_size=1024, num_hidden_layers=4, num_attention_heads=4)
REDUCED_TEXT = dict(hidden_size=512, intermediate_size=1376, num_hidden_layers=4, num_attention_heads=8)


def llava_config(reduced: bool):
    from transformers import CLIPVisionConfig, LlamaConfig, LlavaConfig

    vision, text = dict(VISION), dict(TEXT)
    if reduced:
        vision.update(REDUCED_VISION)
        text.update(REDUCED_TEXT, num_key_value_heads=REDUCED_TEXT["num_attention_heads"])
    return LlavaConfig(vision_config=CLIPVisionConfig(**vision), text_config=LlamaConfig(**text), **LLAVA)


def build_model(config, device: str, dtype, seed: int = 0):
    """The model allocated on ``device`` in ``dtype`` and initialised there (random, the architecture's own
    initialiser): no checkpoint, no full-precision copy on the host."""
    import torch
    from transformers import LlavaForConditionalGeneration

    torch.manual_seed(seed)
    previous = torch.get_default_dtype()
    torch.set_default_dtype(dtype)
    try:
        with torch.device(device):
            model = LlavaForConditionalGeneration(config)
    finally:
        torch.set_default_dtype(previous)
    return model.eval()


# ---- FLOPs ------------------------------------------------------------------------------------------
@dataclass
class Shapes:
    d_v: int  # vision hidden
    i_v: int
    layers_v: int  # vision layers the features need
    patch: int
    patches: int
    d: int  # language model hidden
    kv: int  # key/value width
    inter: int
    layers: int
    vocab: int
    attention: bool = True  # count attention's own products (False: the weights' matrix products only)

    @classmethod
    def of(cls, config, attention: bool = True) -> "Shapes":
        v, t = config.vision_config, config.text_config
        feature = config.vision_feature_layer
        needed = v.num_hidden_layers + 1 + feature if feature < 0 else feature  # hidden_states[k]: k layers
        head = t.hidden_size // t.num_attention_heads
        return cls(
            d_v=v.hidden_size,
            i_v=v.intermediate_size,
            layers_v=needed,
            patch=v.patch_size,
            patches=(v.image_size // v.patch_size) ** 2,
            d=t.hidden_size,
            kv=t.num_key_value_heads * head,
            inter=t.intermediate_size,
            layers=t.num_hidden_layers,
            vocab=t.vocab_size,
            attention=attention,
        )

    @property
    def layer_params(self) -> int:
        """Multiply-accumulates per token of one language-model layer (attention projections + SwiGLU MLP)."""
        return 2 * self.d * self.d + 2 * self.d * self.kv + 3 * self.d * self.inter

    def image(self) -> float:
        """Vision tower (the layers the features need) + projector, for one image."""
        s = self.patches + 1  # + CLS
        embed = 2 * self.patches * 3 * self.patch**2 * self.d_v
        layer = 2 * s * (4 * self.d_v**2 + 2 * self.d_v * self.i_v) + self.attention * 4 * s * s * self.d_v
        projector = 2 * self.patches * (self.d_v * self.d + self.d * self.d)
        return embed + self.layers_v * layer + projector

    def prefix(self, n: int) -> float:
        """Language model over n tokens, causal attention, no logits."""
        return self.layers * (2 * n * self.layer_params + self.attention * 2 * self.d * n * (n + 1))

    def nodes(self, prefix_len: int, depths: list[int]) -> float:
        """Packed continuation nodes: each attends to the prefix, its ancestors and itself."""
        per_layer = sum(2 * self.layer_params + self.attention * 4 * self.d * (prefix_len + k + 1) for k in depths)
        return self.layers * per_layer

    def logits(self, n: int) -> float:
        return 2 * self.d * self.vocab * n


def item_flops(shapes: Shapes, engine, enc) -> float:
    """FLOPs an item's readouts need (as the engine runs them: letters alone in one pass; with options,
    the prefix once and the packed tree)."""
    from mmcal.engine.packing import build_tree

    rows = engine.readout_set.continuations(enc, 0)
    L = len(enc.prefix_ids)
    total = shapes.image()
    if len(rows) == 1:
        return total + shapes.prefix(L + len(rows[0].ids)) + shapes.logits(1)
    tree = build_tree(rows)
    return total + shapes.prefix(L) + shapes.logits(1) + shapes.nodes(L, tree.depths) + shapes.logits(tree.n_read)


# ---- items, model, engine -----------------------------------------------------------------------------
def make_items(n: int, root: Path, n_images: int = 32, seed: int = 0):
    """``n`` items over ``n_images`` random 336 x 336 RGB images (smooth noise, PNG)."""
    import numpy as np
    from PIL import Image

    from mmcal.items import MCItem

    rng = np.random.default_rng(seed)
    (root / "images").mkdir(parents=True, exist_ok=True)
    for k in range(n_images):
        small = rng.integers(0, 256, (21, 21, 3), dtype=np.uint8)
        Image.fromarray(small).resize((336, 336), Image.BILINEAR).save(root / "images" / f"{k}.png")
    return [
        MCItem(
            f"i{i}",
            f"i{i}",
            "What is shown in the image?",
            OPTIONS,
            i % 4,
            "test",
            "random",
            image=f"images/{i % n_images}.png",
        )
        for i in range(n)
    ]


def loaded_model(model, processor_dir: Path, device: str):
    from transformers import AutoProcessor

    from mmcal.engine.loading import LoadedModel

    if not (processor_dir / "tokenizer.json").exists():
        raise SystemExit(
            f"{processor_dir}: no LLaVA-1.5 processor files (tokenizer.json, chat template, preprocessor "
            "config). Build the replicas (bash envs/setup.sh) or pass --processor with a copy of that folder."
        )
    processor = AutoProcessor.from_pretrained(processor_dir, backend="pil")
    return LoadedModel(
        name="llava-1.5-7b-shapes-random",
        model=model,
        processor=processor,
        tokenizer=processor.tokenizer,
        multimodal=True,
        device=device,
        fingerprint="random",
    )


def engine_for(lm, readouts, batch_size: int, root: Path):
    from mmcal.engine.chat import OWN, own_answer_separator
    from mmcal.engine.prompts import PromptVariant
    from mmcal.engine.scoring import Engine

    chat_format = replace(OWN, answer_separator=own_answer_separator(lm.processor, True))
    return Engine(
        lm, PromptVariant(), readouts=readouts, batch_size=batch_size, image_root=root, chat_format=chat_format
    )


def measured_peak(device: str, dtype, size: int = 2048, reps: int = 5) -> float:
    """FLOP/s of a square matrix product on this device and threads (the CPU's practical peak)."""
    import torch

    from mmcal.bench.common import timed

    a = torch.randn(size, size, dtype=dtype, device=device)
    b = torch.randn(size, size, dtype=dtype, device=device)
    a @ b
    _, t = timed(lambda: [a @ b for _ in range(reps)])
    return 2 * size**3 * reps / t


def peak_flops(args, device: str, dtype):
    """(a function giving the peak FLOP/s, its description): a GPU's data-sheet value (or ``--peak-tflops``);
    on a CPU a matrix product measured on the run's threads each time it is called."""
    import torch

    if args.peak_tflops:
        return (lambda: args.peak_tflops * 1e12), f"{args.peak_tflops:g} TFLOP/s (given)"
    if device.startswith("cuda"):
        name = torch.cuda.get_device_name()
        for key, tflops in PEAK_TFLOPS:
            if key in name:
                return (lambda value=tflops * 1e12: value), f"{tflops:g} TFLOP/s ({name} data sheet, dense bf16)"
        raise SystemExit(f"no known peak for {name!r}: pass --peak-tflops")
    text = f"a {dtype} matrix product measured beside each row, {torch.get_num_threads()} threads"
    return (lambda: measured_peak(device, dtype)), text


def measure(engine, items, scenario, shapes: Shapes, repeats: int, peak) -> tuple[float, float, float, float]:
    """(FLOPs the items need, seconds end to end, seconds of the model passes alone, peak FLOP/s), the
    fastest of ``repeats`` interleaved runs; ``peak`` is called between runs (a CPU's measured peak is
    taken beside each measurement, the largest counts: a shared machine slows both alike)."""
    from mmcal.bench.common import timed

    engine.score(items[: engine.batch_size], scenario)  # warm-up: kernels, allocator, the packed pass's check
    encs = engine.encode_many(items, scenario)
    flops = sum(item_flops(shapes, engine, e) for e in encs)
    batches = list(engine._batches(encs))
    t_model = t_all = float("inf")
    best_peak = peak()
    for _ in range(max(1, repeats)):
        t_model = min(t_model, timed(lambda: [engine._run_part(b) for b in batches])[1])
        t_all = min(t_all, timed(lambda: engine.score(items, scenario))[1])
        best_peak = max(best_peak, peak())
    return flops, t_all, t_model, best_peak


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--reduced", action="store_true", help="a few narrow layers of the same structure (for a CPU)")
    p.add_argument("--device", default="auto", help="cuda, cpu or auto")
    p.add_argument("--dtype", default="auto", help="auto: bfloat16 on CUDA, float32 on the CPU")
    p.add_argument("--batch-sizes", type=int, nargs="+", default=[1, 8, 32, 64])
    p.add_argument("--items", type=int, default=0, help="items per measurement (default: 4 batches, at least 16)")
    p.add_argument("--threads", type=int, default=0, help="CPU threads (0: torch's default)")
    p.add_argument("--repeats", type=int, default=2, help="timed runs per row; the fastest counts")
    p.add_argument("--peak-tflops", type=float, default=0.0, help="the device's peak dense FLOP/s, in TFLOP/s")
    p.add_argument("--processor", default=str(REPLICA), help="folder with LLaVA-1.5's tokenizer/processor files")
    args = p.parse_args(argv)

    import torch

    from mmcal.engine.scenarios import Scenario
    from mmcal.records import READOUTS
    from mmcal.torch_device import resolve_device, resolve_dtype

    if args.threads:
        torch.set_num_threads(args.threads)
    device = resolve_device(args.device)
    dtype = resolve_dtype(args.dtype, device)
    config = llava_config(args.reduced)
    t0 = time.perf_counter()
    model = build_model(config, device, dtype)
    built = time.perf_counter() - t0
    lm = loaded_model(model, Path(args.processor), device)
    shapes = Shapes.of(config)
    peak, peak_text = peak_flops(args, device, dtype)
    where = torch.cuda.get_device_name() if device.startswith("cuda") else f"CPU, {torch.get_num_threads()} threads"
    n_params = sum(t.numel() for t in model.parameters())
    root = Path(tempfile.mkdtemp(prefix="mmcal-paper-scale-"))
    scenario = Scenario()
    print(
        f"{'reduced ' if args.reduced else ''}LLaVA-1.5-7B shapes, random weights: {n_params / 1e9:.2f} B parameters, "
        f"{dtype}, {where}; torch {torch.__version__}; built in {built:.0f} s; fastest of {args.repeats} runs"
    )
    print(f"peak: {peak_text}")
    sets = {"letters": ["letter_restricted", "letter_full_vocab"], "all 3": list(READOUTS)}
    table = []
    for bs in args.batch_sizes:
        n = args.items or max(16, 4 * bs)
        items = make_items(n, root)
        for label, readouts in sets.items():
            engine = engine_for(lm, readouts, bs, root)
            flops, t_all, t_model, top = measure(engine, items, scenario, shapes, args.repeats, peak)
            row = (label, bs, n / t_all, flops / t_all / top, n / t_model, flops / t_model / top, top)
            table.append(row)
            print(
                f"  {label:8s} batch {bs:4d}: engine {row[2]:8.2f} items/s (MFU {row[3]:6.1%}), "
                f"model passes {row[4]:8.2f} items/s (MFU {row[5]:6.1%}); peak {top / 1e12:.3g} TFLOP/s",
                flush=True,
            )
        if device.startswith("cuda"):
            torch.cuda.empty_cache()
    enc = engine.encode_many(items[:1], scenario)[0]
    per_item = item_flops(shapes, engine_for(lm, sets["letters"], 1, root), enc)
    per_item_all = item_flops(shapes, engine, enc)
    print(
        f"prefix {len(enc.prefix_ids)} tokens (576 image); FLOPs per item: letters {per_item / 1e12:.3f} T, "
        f"all 3 readouts {per_item_all / 1e12:.3f} T"
    )
    print()
    print("| readouts | batch | engine items/s | engine MFU | model passes items/s | model passes MFU | peak TFLOP/s |")
    print("| --- | ---: | ---: | ---: | ---: | ---: | ---: |")
    for label, bs, ips, mfu, ips_m, mfu_m, top in table:
        print(f"| {label} | {bs} | {ips:.2f} | {mfu:.1%} | {ips_m:.2f} | {mfu_m:.1%} | {top / 1e12:.3g} |")


if __name__ == "__main__":
    main()
