"""Same text on both sides of a comparison.

A comparison of two models on the same data set, scenario and prompt (a base LLM vs the MLLM built on
it, stage 1 vs stage 2) measures the models only if both are shown the same text: a system prompt that
one side's format adds and the other's lacks is a confound. :func:`check_comparisons` renders one probe
item through each side's prompt format, without loading any weights, and raises a ConfigError naming
the comparison and the first line that differs (image tokens aside).

A side's format is known without the network when it is a built-in format, a ``.jinja`` file, the
template of a model the DAG builds, a local folder's own template or a hub model whose small files are
already in the HF cache. Pairs with a side that is not (a hub model's own template, before download)
are returned, and the download job checks them once those files are there (:func:`check_pairs`).
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass, replace
from pathlib import Path

from mmcal import plan
from mmcal.engine.chat import (
    OWN,
    TINY_LLAVA_CHAT_TEMPLATE,
    format_from_key,
    missing_template,
    own_answer_separator,
    reference_format,
    render_prompt,
)
from mmcal.engine.prompts import build_messages, prompt_from_config
from mmcal.engine.scenarios import scenario_from_config
from mmcal.errors import ConfigError
from mmcal.items import MCItem

# What a comparison's sides may differ in without showing different text on purpose (a prompt or a
# scenario comparison shows different text by design).
TEXT_KEYS = ("dataset", "scenario", "prompt")
# Models the DAG builds carry a template known before they exist.
BUILT_TEMPLATES = {"stage1": TINY_LLAVA_CHAT_TEMPLATE, "stage2": TINY_LLAVA_CHAT_TEMPLATE}
BUILT_TEMPLATES["stage2_idk"] = TINY_LLAVA_CHAT_TEMPLATE
# Where a saved tokenizer / processor keeps its template and special tokens, in the order the engine's
# loaders would find them (processor first: an MLLM renders through its processor).
_TEMPLATE_FILES = ("chat_template.jinja", "chat_template.json", "processor_config.json", "tokenizer_config.json")
_SPECIAL_TOKENS = ("bos_token", "eos_token", "unk_token", "pad_token")
PROBE = MCItem(
    item_id="probe",
    cluster_id="probe",
    question="Which option is the probe's answer?",
    options=["first option", "second option"],
    gold=0,
    split="test",
    source="mmcal.engine.parity",
    image="probe.png",
)
PROBE_DESCRIPTION = "A description of the image."


@dataclass(frozen=True)
class Side:
    """One side of a same-text pair: a model scored on a data set, scenario and prompt."""

    model: str
    dataset: str
    scenario: str
    prompt: str


@dataclass(frozen=True)
class Pair:
    comparison: str
    a: Side
    b: Side


class TemplateRenderer:
    """The ``apply_chat_template`` of a tokenizer or processor, from its template text and special tokens
    alone (no vocabulary, no weights): what :func:`render_prompt` needs to render a prompt."""

    def __init__(self, template: str, special_tokens: dict, image_token: str = "<image>"):
        self.chat_template = template
        self.special_tokens = special_tokens
        self.image_token = image_token

    def apply_chat_template(self, messages, chat_template=None, add_generation_prompt=False, tokenize=False, **kw):
        from transformers.utils.chat_template_utils import render_jinja_template

        variables = {**self.special_tokens, **kw}
        rendered, _ = render_jinja_template(
            [messages], chat_template=chat_template or self.chat_template, add_generation_prompt=add_generation_prompt,
            **variables,
        )  # fmt: skip
        return rendered[0]


def _token_text(value) -> str | None:
    if isinstance(value, dict):  # a serialised AddedToken
        return value.get("content")
    return value if isinstance(value, str) else None


def _read_json(path: Path) -> dict:
    try:
        data = json.loads(path.read_text())
    except (OSError, ValueError):
        return {}
    return data if isinstance(data, dict) else {}


def renderer_from_files(files: dict[str, Path | None]) -> TemplateRenderer | None:
    """A renderer from a checkpoint's small files (name -> local path, None where absent); None when none of
    them holds a chat template."""
    template = None
    for name in _TEMPLATE_FILES:
        path = files.get(name)
        if path is None:
            continue
        if name.endswith(".jinja"):
            template = Path(path).read_text()
        else:
            value = _read_json(Path(path)).get("chat_template")
            if isinstance(value, list):  # named templates: the default one
                value = next((t.get("template") for t in value if t.get("name") == "default"), None)
            template = value
        if template:
            break
    if not template:
        return None
    tokenizer_cfg = _read_json(files["tokenizer_config.json"]) if files.get("tokenizer_config.json") else {}
    special = _read_json(files["special_tokens_map.json"]) if files.get("special_tokens_map.json") else {}
    tokens = {k: _token_text(tokenizer_cfg.get(k, special.get(k))) for k in _SPECIAL_TOKENS}
    processor_cfg = _read_json(files["processor_config.json"]) if files.get("processor_config.json") else {}
    image_token = _token_text(processor_cfg.get("image_token") or tokenizer_cfg.get("image_token")) or "<image>"
    return TemplateRenderer(template, {k: v for k, v in tokens.items() if v is not None}, image_token)


_FILES = _TEMPLATE_FILES + ("special_tokens_map.json",)


def _folder_files(folder: Path) -> dict[str, Path | None]:
    return {name: (folder / name if (folder / name).is_file() else None) for name in _FILES}


def _cached_hub_files(repo_id: str, revision: str | None) -> dict[str, Path | None] | None:
    """The small files of a hub model from the HF cache only; None when the cache cannot say (not downloaded)."""
    from huggingface_hub import try_to_load_from_cache

    out = {}
    for name in _FILES:
        found = try_to_load_from_cache(repo_id, name, revision=revision)
        if found is None and name == "tokenizer_config.json":  # never fetched: the cache cannot tell
            return None
        # a path, None (never looked up) or a marker that the repository has no such file
        out[name] = Path(found) if isinstance(found, str) else None
    return out


class NotYetKnown(Exception):
    """A model's own template cannot be read now; ``after_download``: the download job will have it."""

    def __init__(self, why: str, after_download: bool):
        super().__init__(why)
        self.after_download = after_download


def _is_hub_id(source: str) -> bool:
    return bool(re.fullmatch(r"[\w.\-]+/[\w.\-]+", source)) and not Path(source).exists()


def model_renderer(config: dict, model: str, allow_hub_download: bool = False) -> TemplateRenderer:
    """The renderer of a model's own template, from what is on disk (or, when allowed, the hub). Raises
    NotYetKnown when it cannot be read now, ConfigError when the model has no template of its own."""
    entry = config["models"][model]
    build = entry.get("build")
    if build in BUILT_TEMPLATES:
        return TemplateRenderer(BUILT_TEMPLATES[build], {})
    source, revision = str(entry.get("path", "")), entry.get("revision")
    if build == "llava_stage1":  # its template is its processor source's
        processor = (entry.get("sources") or {}).get("processor") or {}
        source, revision = str(processor.get("path", "")), processor.get("revision")
    elif build:
        source = plan.BUILD_PATHS[build]
    folder = Path(source)
    # the download job fetches (or, for a local folder, records) every source of a model the DAG does not build
    downloaded = build in (None, "llava_stage1")
    if folder.is_dir():
        files = _folder_files(folder)
    elif not _is_hub_id(source) or not downloaded:
        why = f"models.{model}: {source} does not exist yet, so its own chat template is unknown"
        raise NotYetKnown(why, downloaded)
    elif allow_hub_download:
        from mmcal.engine.loading import hub_snapshot

        files = _folder_files(hub_snapshot(source, revision))
    else:
        files = _cached_hub_files(source, revision)
        if files is None:
            raise NotYetKnown(f"models.{model}: the hub files of {source} are not downloaded yet", True)
    renderer = renderer_from_files(files)
    if renderer is None:
        raise missing_template(model, source)
    return renderer


def _matches(value, wanted) -> bool:
    return value in wanted if isinstance(wanted, list) else value == wanted


def _side(run: dict) -> Side:
    return Side(run["model"], *(run[k] for k in TEXT_KEYS))


def same_text_pairs(config: dict) -> list[Pair]:
    """Every pair of scored runs that a comparison sets side by side on the same data set, scenario and
    prompt (so they must be shown the same text), for every model comparison of ``config['comparisons']``."""
    runs = plan.expand_runs(config)
    pairs = []
    for comparison in config.get("comparisons") or []:
        shared = dict(comparison.get("where") or {})
        side_a = {**shared, **(comparison.get("a") or {})}
        side_b = {**shared, **(comparison.get("b") or {})}
        keys = ("model",) + TEXT_KEYS
        runs_a = [r for r in runs if all(_matches(r[k], side_a[k]) for k in keys if k in side_a)]
        runs_b = [r for r in runs if all(_matches(r[k], side_b[k]) for k in keys if k in side_b)]
        for ra in runs_a:
            for rb in runs_b:
                if ra["model"] != rb["model"] and all(ra[k] == rb[k] for k in TEXT_KEYS):
                    pairs.append(Pair(comparison["name"], _side(ra), _side(rb)))
    return pairs


# The text an image becomes in a rendered prompt, per format: the processor's image token (and the newline
# the formats put after it), or Qwen-VL's "Picture k: <img>PATH</img>" with the path inside.
_QWEN_PICTURE = re.compile(r"Picture \d+: ?<img>.*?</img>\n?")


def _without_images(text: str, image_token: str) -> str:
    text = _QWEN_PICTURE.sub("", text)
    return text.replace(image_token + "\n", "").replace(image_token, "")


def side_text(config: dict, side: Side, allow_hub_download: bool = False) -> str:
    """The probe item's full text up to the answer (prompt, answer separator, answer prefix) as ``side``'s
    model is shown it, image tokens removed; NotYetKnown when the model's own template cannot be read now."""
    entry = config["models"][side.model]
    prompt = prompt_from_config(side.prompt, config["prompts"][side.prompt])
    scenario = scenario_from_config(side.scenario, config["scenarios"][side.scenario])
    multimodal = entry.get("kind", "mllm") != "llm"
    context = PROBE_DESCRIPTION if scenario.description else None
    messages = build_messages(PROBE, prompt, with_image=scenario.image, context=context)
    if entry.get("adapter") == "qwen-vl-chat":
        from mmcal.engine.qwen_vl import REFERENCE_FORMAT, reference_prompt

        text = reference_prompt(messages, [PROBE.image] if scenario.image else []) + "\n"
        return _without_images(text + REFERENCE_FORMAT.answer_separator + prompt.answer_prefix, "<image>")
    chat_format = format_from_key(side.model, entry["chat_template"]) if entry.get("chat_template") else OWN
    if prompt.is_reference:
        chat_format = reference_format(chat_format)
    renderer = None
    if chat_format is OWN:
        renderer = model_renderer(config, side.model, allow_hub_download)
        chat_format = replace(OWN, answer_separator=own_answer_separator(renderer, multimodal))
    renderer = renderer or TemplateRenderer("", {})  # a configured format brings its own template
    text = render_prompt(renderer, messages, multimodal=multimodal, chat_format=chat_format)
    return _without_images(text + chat_format.answer_separator + prompt.answer_prefix, renderer.image_token)


def _first_difference(text_a: str, text_b: str) -> tuple[int, str, str]:
    lines_a, lines_b = text_a.split("\n"), text_b.split("\n")
    for i in range(max(len(lines_a), len(lines_b))):
        a = lines_a[i] if i < len(lines_a) else "(no line)"
        b = lines_b[i] if i < len(lines_b) else "(no line)"
        if a != b:
            return i + 1, a, b
    return 0, "", ""


def check_pairs(config: dict, pairs: list[Pair], allow_hub_download: bool = False) -> list[Pair]:
    """Raise a ConfigError at the first pair whose sides are shown different text, or whose text cannot be
    known before it is scored; return the pairs that can be checked once the download job has run."""
    later = []
    texts: dict[Side, str | NotYetKnown] = {}
    for pair in pairs:
        for side in (pair.a, pair.b):
            if side not in texts:
                try:
                    texts[side] = side_text(config, side, allow_hub_download)
                except NotYetKnown as exc:
                    texts[side] = exc
        unknown = [t for t in (texts[pair.a], texts[pair.b]) if isinstance(t, NotYetKnown)]
        if any(not u.after_download for u in unknown):
            why = next(u for u in unknown if not u.after_download)
            raise ConfigError(
                f"comparison {pair.comparison!r} needs {pair.a.model} and {pair.b.model} to be shown the same text, "
                f"which cannot be checked before they are scored: {why}; set models.<name>.chat_template"
            )
        if unknown:
            later.append(pair)
            continue
        text_a, text_b = texts[pair.a], texts[pair.b]
        if text_a != text_b:
            line, a, b = _first_difference(text_a, text_b)
            raise ConfigError(
                f"comparison {pair.comparison!r}: {pair.a.model} and {pair.b.model} are compared on "
                f"{pair.a.dataset}/{pair.a.scenario}/{pair.a.prompt} but are shown different text "
                f"(image tokens aside); first difference, line {line}:\n  {pair.a.model}: {a!r}\n  "
                f"{pair.b.model}: {b!r}\nGive both models the same prompt format (models.<name>.chat_template)."
            )
    return later


def check_comparisons(config: dict) -> list[Pair]:
    """The planning-time check: every same-text pair the config's comparisons make; returns those whose
    text can only be known after the download job (hub models' own templates)."""
    return check_pairs(config, same_text_pairs(config))


def deferred_check_slice(config: dict, pairs: list[Pair]) -> dict:
    """What the download job needs to check ``pairs`` later: the pairs and the config entries they read."""
    if not pairs:
        return {}
    sides = [side for pair in pairs for side in (pair.a, pair.b)]
    return {
        "pairs": [[p.comparison, list(vars(p.a).values()), list(vars(p.b).values())] for p in pairs],
        "models": {s.model: config["models"][s.model] for s in sides},
        "prompts": {s.prompt: config["prompts"][s.prompt] for s in sides},
        "scenarios": {s.scenario: config["scenarios"][s.scenario] for s in sides},
    }


def check_deferred(check: dict) -> None:
    """The download job's half of the check: the pairs planning could not render, now that the hub files
    are in the cache (raises a ConfigError as at planning)."""
    if not check:
        return
    pairs = [Pair(name, Side(*a), Side(*b)) for name, a, b in check["pairs"]]
    sliced = {k: check[k] for k in ("models", "prompts", "scenarios")}
    check_pairs(sliced, pairs, allow_hub_download=True)
