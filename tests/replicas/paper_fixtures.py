"""Materialise the local stand-ins of config/paper-replica.yaml under one folder (default data/replica).

    python tests/replicas/paper_fixtures.py [OUT]

What it writes (seeded: a second run writes the same bytes; ~10 s):

- ``models/<family>/``: copies of the hub-shaped replicas (build.py; built first when missing) that stand in for
  llava-hf/llava-1.5-7b-hf, lmsys/vicuna-7b-v1.5, Qwen/Qwen2-VL-7B-Instruct, Qwen/Qwen2-7B-Instruct and
  HuggingFaceTB/SmolVLM-Instruct (copies, so a later rebuild of the replica cache does not change a finished study);
- ``stage1/``: the fake sources of LLaVA-1.5 stage 1: ``projector/mm_projector.bin`` with the release's key names
  (``model.mm_projector.{0,2}.{weight,bias}``, shaped for the vicuna replica and the tiny CLIP) and
  ``clip-vit-large-patch14-336/``, a tiny ``CLIPVisionModel`` of ViT-L/336's geometry (336 px, patch 14);
- ``scienceqa/``: a local data set repository laid out like lmms-lab/ScienceQA (a README whose ``configs`` name
  ``ScienceQA-IMG`` and ``ScienceQA-FULL``, one ``<config>/test-00000-of-00001.parquet`` each) with its schema
  (``image``, ``question``, ``choices`` (2-5), int ``answer``, ``hint``, ``task``, ``grade``, ``subject``,
  ``topic``, ``category``, ``skill``, ``lecture``, ``solution``); FULL mixes image and text-only rows;
- ``July24-NewsVQA/``: the IDK release's layout, ``questions.json`` (LLaVA conversation records, the
  "I don't know" option among lettered options, the answer turn a letter) + ``images/``;
- ``news/``: dated news records (``records.jsonl`` + images) for the ``dated_news`` entry;
- ``mmbench/``, ``seedbench/``: copies of the committed benchmark fixtures in lmms-lab/MMBench's and
  lmms-lab/SEED-Bench's schema and layout (tests/fixtures/benchmarks; SEED-Bench's 40 rows are those lmms-eval
  read for tests/fixtures/harness_logs).

Questions and images are synthetic (seeded coloured shapes; the question asks which shape or colour the image
shows), so they are answerable from the image but carry no real benchmark content.
"""

from __future__ import annotations

import json
import shutil
import sys
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent
if str(HERE) not in sys.path:  # imported (tests/conftest.py appends it); as a script it is already first
    sys.path.append(str(HERE))
import build as replicas  # noqa: E402

SEED = 20240701
# paper.yaml model -> replica family (tests/replicas/build.py)
FAMILIES = ["llava-1.5", "vicuna-7b-v1.5", "qwen2-vl", "qwen2", "smolvlm"]
COLOURS = {
    "red": (220, 40, 40),
    "green": (40, 170, 60),
    "blue": (40, 80, 220),
    "yellow": (230, 210, 40),
    "purple": (140, 60, 170),
}
SHAPES = ["square", "circle", "triangle", "cross", "bar"]
SCIENCEQA_README = """---
configs:
- config_name: ScienceQA-FULL
  data_files:
  - split: test
    path: ScienceQA-FULL/test-*
- config_name: ScienceQA-IMG
  data_files:
  - split: test
    path: ScienceQA-IMG/test-*
---
Local stand-in for lmms-lab/ScienceQA (same configs, split and columns; synthetic rows), written by
tests/replicas/paper_fixtures.py.
"""


def shape_image(shape: str, colour: str, rng: np.random.Generator, size: int = 64):
    """A ``size``-pixel RGB image of one coloured shape on a grey background, slightly jittered."""
    from PIL import Image, ImageDraw

    img = Image.new("RGB", (size, size), tuple(int(v) for v in rng.integers(150, 200, 3)))
    draw = ImageDraw.Draw(img)
    c, r = size / 2 + rng.uniform(-6, 6), size * rng.uniform(0.25, 0.35)
    box = [c - r, c - r, c + r, c + r]
    fill = COLOURS[colour]
    if shape == "square":
        draw.rectangle(box, fill=fill)
    elif shape == "circle":
        draw.ellipse(box, fill=fill)
    elif shape == "triangle":
        draw.polygon([(c, c - r), (c - r, c + r), (c + r, c + r)], fill=fill)
    elif shape == "cross":
        draw.rectangle([c - r, c - r / 4, c + r, c + r / 4], fill=fill)
        draw.rectangle([c - r / 4, c - r, c + r / 4, c + r], fill=fill)
    else:
        draw.rectangle([c - r, c - r / 4, c + r, c + r / 4], fill=fill)
    return img


def write_models(out: Path) -> None:
    for family in FAMILIES:
        src = replicas.build(family)
        dst = out / "models" / family
        if dst.exists():
            shutil.rmtree(dst)
        shutil.copytree(src, dst, ignore=shutil.ignore_patterns(replicas.KEY_FILE))


def write_stage1_sources(out: Path) -> None:
    """The released projector's key names, shaped [hidden_lm, width_clip] / [hidden_lm, hidden_lm]."""
    import torch
    from transformers import AutoConfig, CLIPVisionConfig, CLIPVisionModel

    hidden = AutoConfig.from_pretrained(out / "models" / "vicuna-7b-v1.5").hidden_size
    width = 24
    with torch.random.fork_rng(devices=[]):  # seeded; the caller's generator left as it was
        torch.manual_seed(SEED)
        CLIPVisionModel(
            CLIPVisionConfig(
                hidden_size=width,
                intermediate_size=48,
                num_hidden_layers=2,
                num_attention_heads=2,
                image_size=336,
                patch_size=14,
                projection_dim=width,
            )
        ).save_pretrained(out / "stage1" / "clip-vit-large-patch14-336")
        projector = {
            "model.mm_projector.0.weight": torch.randn(hidden, width) * 0.1,
            "model.mm_projector.0.bias": torch.zeros(hidden),
            "model.mm_projector.2.weight": torch.randn(hidden, hidden) * 0.1,
            "model.mm_projector.2.bias": torch.zeros(hidden),
        }
    (out / "stage1" / "projector").mkdir(parents=True, exist_ok=True)
    torch.save(projector, out / "stage1" / "projector" / "mm_projector.bin")


def _scienceqa_rows(rng: np.random.Generator, n: int, with_image: bool) -> list[dict]:
    rows = []
    for i in range(n):
        shape, colour = SHAPES[rng.integers(len(SHAPES))], list(COLOURS)[rng.integers(len(COLOURS))]
        n_options = 2 + i % 4  # 2, 3, 4, 5 options in turn, as ScienceQA has
        ask_shape = bool(rng.integers(2))
        truth, pool = (shape, SHAPES) if ask_shape else (colour, list(COLOURS))
        others = [p for p in pool if p != truth]
        choices = [truth, *rng.choice(others, n_options - 1, replace=False).tolist()]
        choices = [choices[j] for j in rng.permutation(n_options)]
        question = (
            f"Which {'shape' if ask_shape else 'colour'} is shown?"
            if with_image
            else f"Which word names a {'shape' if ask_shape else 'colour'}?"
        )
        if not with_image:  # text-only rows: answerable from the text
            decoy = list(COLOURS) if ask_shape else SHAPES
            choices = [truth, *rng.choice(decoy, n_options - 1, replace=False).tolist()]
            choices = [choices[j] for j in rng.permutation(n_options)]
        rows.append(
            {
                "image": shape_image(shape, colour, rng) if with_image else None,
                "question": question,
                "choices": choices,
                "answer": choices.index(truth),
                "hint": "The picture shows one object." if with_image and i % 3 == 0 else "",
                "task": "closed choice",
                "grade": f"grade{2 + i % 6}",
                "subject": "natural science",
                "topic": "shapes" if ask_shape else "colours",
                "category": "Identify shapes" if ask_shape else "Identify colours",
                "skill": "Identify the object",
                "lecture": "",
                "solution": f"The answer is {truth}.",
            }
        )
    return rows


def write_scienceqa(out: Path, rng: np.random.Generator) -> None:
    import datasets

    features = datasets.Features(
        {
            "image": datasets.Image(),
            "question": datasets.Value("string"),
            "choices": datasets.Sequence(datasets.Value("string")),
            "answer": datasets.Value("int8"),
            "hint": datasets.Value("string"),
            "task": datasets.Value("string"),
            "grade": datasets.Value("string"),
            "subject": datasets.Value("string"),
            "topic": datasets.Value("string"),
            "category": datasets.Value("string"),
            "skill": datasets.Value("string"),
            "lecture": datasets.Value("string"),
            "solution": datasets.Value("string"),
        }
    )
    root = out / "scienceqa"
    img_rows = _scienceqa_rows(rng, 24, with_image=True)
    text_rows = _scienceqa_rows(rng, 16, with_image=False)
    full = [r for pair in zip(img_rows[:16], text_rows) for r in pair]
    for config, rows in (("ScienceQA-IMG", img_rows), ("ScienceQA-FULL", full)):
        (root / config).mkdir(parents=True, exist_ok=True)
        ds = datasets.Dataset.from_list(rows, features=features)
        ds.to_parquet(str(root / config / "test-00000-of-00001.parquet"))
    (root / "README.md").write_text(SCIENCEQA_README)


def write_idk_release(out: Path, rng: np.random.Generator, n: int = 18) -> None:
    """July24-NewsVQA's layout: questions.json (LLaVA conversations) and images/."""
    root = out / "July24-NewsVQA"
    (root / "images").mkdir(parents=True, exist_ok=True)
    records = []
    for i in range(n):
        shape, colour = SHAPES[rng.integers(len(SHAPES))], list(COLOURS)[rng.integers(len(COLOURS))]
        name = f"news_{i:04d}.jpg"
        shape_image(shape, colour, rng).save(root / "images" / name, quality=90)
        events = [f"Event {chr(65 + k)} in the {colour} district" for k in range(3)]
        options = [*events, "I don't know"]
        letters = "ABCD"
        body = "\n".join(f"{letters[k]}. {o}" for k, o in enumerate(options))
        # after-cutoff questions (two in three) have the IDK option as the answer; the rest a real event
        answer = "D" if i % 3 else letters[(i // 3) % 3]
        records.append(
            {
                "id": f"july24-{i:04d}",
                "image": name,
                "conversations": [
                    {"from": "human", "value": f"<image>\nWhich event does this photo from July 2024 show?\n{body}"},
                    {"from": "gpt", "value": answer},
                ],
            }
        )
    (root / "questions.json").write_text(json.dumps(records, indent=1) + "\n")


def write_dated_news(out: Path, rng: np.random.Generator, n: int = 8) -> None:
    root = out / "news"
    (root / "images").mkdir(parents=True, exist_ok=True)
    lines = []
    for i in range(n):
        shape, colour = SHAPES[rng.integers(len(SHAPES))], list(COLOURS)[rng.integers(len(COLOURS))]
        name = f"images/dated_{i:04d}.jpg"
        shape_image(shape, colour, rng).save(root / name, quality=90)
        date = f"{2023 + i % 3}-{1 + i % 12:02d}-15"
        lines.append(
            json.dumps({"id": f"n{i}", "image": name, "headline": f"A {colour} {shape} unveiled", "date": date})
        )
    (root / "records.jsonl").write_text("\n".join(lines) + "\n")


def write_benchmarks(out: Path) -> None:
    fixtures = HERE.parent / "fixtures"
    for name in ("mmbench", "seedbench"):
        shutil.rmtree(out / name, ignore_errors=True)
    shutil.copytree(fixtures / "benchmarks" / "mmbench", out / "mmbench")
    (out / "seedbench" / "data").mkdir(parents=True)
    shutil.copy(fixtures / "benchmarks" / "seedbench" / "README.md", out / "seedbench" / "README.md")
    rows = fixtures / "harness_logs" / "lmms-eval" / "data" / "seedbench" / "test-00000-of-00001.parquet"
    shutil.copy(rows, out / "seedbench" / "data" / rows.name)


def materialise(out: str | Path = "data/replica") -> Path:
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    # the config's datasets cache (one per study folder): rewritten files must be read anew
    shutil.rmtree(out / "datasets-cache", ignore_errors=True)
    write_models(out)
    write_stage1_sources(out)
    write_scienceqa(out, np.random.default_rng(SEED))
    write_idk_release(out, np.random.default_rng(SEED + 1))
    write_dated_news(out, np.random.default_rng(SEED + 2))
    write_benchmarks(out)
    return out


if __name__ == "__main__":
    print(materialise(*sys.argv[1:2]))
