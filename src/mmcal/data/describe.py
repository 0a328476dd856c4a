"""Text descriptions of visual items, for the "text vs image" scenarios.

Each item gets two descriptions, stored in one JSON file keyed by item id (the scoring engine reads
``descriptions[item_id][mode]``):

- ``consistent``: describes the item's true class, except for a configured share ``error_rate``
  of items whose description deliberately describes another class (a describer's mistakes,
  measured and reported: :func:`measured_error_rate`). Used with the image
  (``image-desc-consistent``) and without it (``text-desc``, the "only" mode).
- ``conflicting``: always describes a class other than the truth, chosen among the item's distractor
  options when it has any, so the text points at a wrong *option* and the conflict is meaningful.

Two describers, chosen by the ``describer`` config:

- ``{"kind": "template", "error_rate": 0.1}`` (the default study): a templated attribute describer
  for Fashion-MNIST classes. :data:`CLASS_ATTRIBUTES` holds hand-written appearance phrases (each
  enough to tell the class from the other nine) and fact phrases per class; a description joins one
  of each through one of several sentence templates, so descriptions vary. Descriptions never
  contain a class name. Exactly ``round(error_rate * N)`` items, drawn with the seed, get a wrong
  class in the consistent description.
- ``{"kind": "captioner", "model": ..., "prompt": ...}`` (paper scale): an image-to-text model
  loaded through ``transformers`` (:class:`CaptionDescriber`) captions each image, on any data set.
  The consistent description is the item's own image's caption; the conflicting one is another
  item's caption, chosen with the seed (:func:`conflicting_donor`: an item with another image and,
  when there is one, another gold answer). A caption is judged correct when it names the gold
  option, and no other, by its text (:func:`classify_option_caption`). On Fashion-MNIST items
  (``metadata['label']``) the judge uses class keywords (:func:`classify_caption`) and the donor is
  an item of a distractor class (templated if the set has none). ``device`` and ``dtype`` default
  to the study's (``auto``: CUDA when present, bf16 there, fp32 on CPU).
"""

from __future__ import annotations

import hashlib
import json
import re
from pathlib import Path

import numpy as np

from mmcal.data.fashion_mnist import CLASSES
from mmcal.errors import ConfigError, DataError, MmcalError
from mmcal.image_backend import check_backend, loaded_backend
from mmcal.items import MCItem
from mmcal.torch_device import resolve_device, resolve_dtype

MODES = ("consistent", "conflicting", "only")
ENTRY_KEYS = (
    "consistent",
    "conflicting",
    "consistent_is_correct",
    "consistent_class",
    "conflicting_class",
)

# Per Fashion-MNIST class (same order as CLASSES): "looks" are noun phrases that identify the class
# among the ten; "facts" are phrases that read both after "it is" and after a comma.
CLASS_ATTRIBUTES: tuple[dict[str, tuple[str, ...]], ...] = (
    {  # T-shirt/top
        "looks": (
            "a simple garment with short sleeves and a round neckline",
            "a light knitted garment with short sleeves and no buttons or collar",
            "a plain short-sleeved garment that is pulled on over the head",
        ),
        "facts": (
            "worn on the upper body in warm weather",
            "usually made of thin cotton jersey",
            "a casual everyday garment",
        ),
    },
    {  # Trouser
        "looks": (
            "a long garment with two separate legs",
            "a garment with two long leg tubes that reach down to the ankles",
            "a long, narrow garment split into two legs from the waist down",
        ),
        "facts": (
            "worn on the lower body, from the waist to the ankles",
            "often made of denim or cotton",
            "held up at the waist, sometimes with a belt",
        ),
    },
    {  # Pullover
        "looks": (
            "a knitted garment with long sleeves and no opening at the front",
            "a thick long-sleeved knit that is pulled on over the head",
            "a warm long-sleeved sweater with a ribbed waistband and cuffs",
        ),
        "facts": (
            "worn on the upper body in cold weather",
            "usually made of wool",
            "worn to keep warm indoors and out",
        ),
    },
    {  # Dress
        "looks": (
            "a one-piece garment with a fitted upper part and a skirt",
            "a one-piece garment that hangs from the shoulders and flares below the waist",
            "a long one-piece garment covering the body from the shoulders to the knees",
        ),
        "facts": (
            "usually worn by women and girls",
            "worn for parties and summer days",
            "sometimes sleeveless",
        ),
    },
    {  # Coat
        "looks": (
            "a long, heavy outer garment with long sleeves, opening at the front",
            "a thick long-sleeved garment that fastens down the front and reaches below the hips",
            "a warm outer layer with long sleeves, a collar and front fastenings",
        ),
        "facts": (
            "worn outdoors over other clothes in cold weather",
            "often made of wool or padded fabric",
            "taken off when you come indoors",
        ),
    },
    {  # Sandal
        "looks": (
            "an open shoe made of a flat sole and thin straps",
            "a light shoe with straps across the foot that leaves the toes showing",
            "a flat sole held on the foot by a few narrow straps",
        ),
        "facts": (
            "worn on bare feet in summer",
            "footwear for hot weather and the beach",
            "open at the toes and heel",
        ),
    },
    {  # Shirt
        "looks": (
            "a light garment with a collar and a row of buttons down the front",
            "a collared garment with long or short sleeves that buttons down the front",
            "a thin button-up garment with a pointed collar and cuffs",
        ),
        "facts": (
            "worn on the upper body, often tucked into the waistband",
            "usually made of woven cotton",
            "often worn to the office",
        ),
    },
    {  # Sneaker
        "looks": (
            "a low, closed sports shoe with laces and a thick rubber sole",
            "a laced athletic shoe that covers the whole foot below the ankle",
            "a soft, closed shoe with laces and a cushioned sole",
        ),
        "facts": (
            "worn for running and sport",
            "casual footwear often made of canvas or mesh",
            "worn with socks",
        ),
    },
    {  # Bag
        "looks": (
            "a container made of leather or fabric with a handle or shoulder strap",
            "a pouch with two handles and a closable opening, used to carry things",
            "a carrying case with a strap and a zipped or clasped opening",
        ),
        "facts": (
            "carried in the hand or over the shoulder, not worn",
            "used to carry a wallet, keys and a phone",
            "an accessory rather than a garment",
        ),
    },
    {  # Ankle boot
        "looks": (
            "a closed shoe with high sides that cover the ankle, often with a heel",
            "a sturdy closed shoe whose upper rises just above the ankle",
            "a leather shoe with a short shaft around the ankle and a small heel",
        ),
        "facts": (
            "footwear for cold or wet weather",
            "often closed with a zip or laces at the side",
            "worn in autumn and winter",
        ),
    },
)

TEMPLATES = (
    "Description: {look}, {fact}.",
    "Description: the image shows {look}; it is {fact}.",
    "Description: a picture of {look}. It is {fact}.",
    "Description: {look}. It is {fact}.",
)

DEFAULT_CAPTION_PROMPT = "Describe the object in the image in one sentence."

# Keyword judge for captions: a class is named when one of its patterns matches a whole word.
CLASS_KEYWORDS: tuple[str, ...] = (
    r"t-?shirts?|tees?|tank tops?|tops?",
    r"trousers?|pants|jeans|slacks",
    r"pullovers?|sweaters?|jumpers?|sweatshirts?|hoodies?",
    r"dress(?:es)?|gowns?",
    r"coats?|jackets?|parkas?|blazers?",
    r"sandals?|flip-flops?",
    r"(?<!t-)shirts?|blouses?",  # not the "shirt" of "t-shirt"
    r"sneakers?|trainers?|(?:running|tennis|athletic|sports?) shoes?",
    r"(?:hand)?bags?|purses?|totes?|backpacks?",
    r"boots?|booties",
)


def _label(item: MCItem) -> int:
    label = item.metadata.get("label")
    if not isinstance(label, (int, np.integer)) or not 0 <= int(label) < len(CLASSES):
        raise DataError(
            f"item {item.item_id!r}: descriptions need metadata['label'], a Fashion-MNIST class "
            f"index 0..{len(CLASSES) - 1}; found {label!r}"
        )
    return int(label)


def _wrong_class(item: MCItem, label: int, rng: np.random.Generator) -> int:
    """A class other than the truth: one of the item's distractor options when it has any."""
    options = [int(c) for c in item.metadata.get("option_classes", []) if int(c) != label]
    pool = options or [c for c in range(len(CLASSES)) if c != label]
    return int(rng.choice(pool))


def render_description(class_index: int, rng: np.random.Generator) -> str:
    """A templated description of a class: one look, one fact, one sentence template (seeded)."""
    table = CLASS_ATTRIBUTES[class_index]
    look = table["looks"][rng.integers(len(table["looks"]))]
    fact = table["facts"][rng.integers(len(table["facts"]))]
    template = TEMPLATES[rng.integers(len(TEMPLATES))]
    return template.format(look=look, fact=fact)


def describe_item(item: MCItem, rng: np.random.Generator, error_rate: float, mode: str) -> tuple[str, bool, str]:
    """Describe one item with the template describer: (text, is_correct, described class name).

    ``consistent`` / ``only``: the true class, except with probability ``error_rate`` another class;
    ``conflicting``: always another class (a distractor option's class when possible).
    """
    if mode not in MODES:
        raise ValueError(f"mode must be one of {MODES}, not {mode!r}")
    label = _label(item)
    # Always draw, so one item's stream does not depend on the error rate or the mode.
    slip = rng.random() < error_rate
    described = _wrong_class(item, label, rng) if mode == "conflicting" or slip else label
    return render_description(described, rng), described == label, CLASSES[described]


def _item_rng(seed: int, item_id: str) -> np.random.Generator:
    """A generator per item, so an item's descriptions do not depend on the rest of the set."""
    digest = int(hashlib.sha256(item_id.encode()).hexdigest()[:15], 16)
    return np.random.default_rng([int(seed), digest])


def _check_error_rate(error_rate) -> float:
    if not isinstance(error_rate, (int, float)) or not 0.0 <= float(error_rate) <= 1.0:
        raise ConfigError(f"describer error_rate must be a number in [0, 1], not {error_rate!r}")
    return float(error_rate)


def _check_unique_ids(items: list[MCItem]) -> None:
    seen: set[str] = set()
    for it in items:
        if it.item_id in seen:
            raise DataError(f"item id {it.item_id!r} occurs twice: descriptions are keyed by item id")
        seen.add(it.item_id)


def _slipped_ids(items: list[MCItem], error_rate: float, seed: int) -> set[str]:
    """Exactly round(error_rate * N) item ids, drawn with the seed, that get a wrong description."""
    ids = sorted(it.item_id for it in items)
    n_wrong = int(round(error_rate * len(ids)))
    order = np.random.default_rng(seed).permutation(len(ids))
    return {ids[i] for i in order[:n_wrong]}


def _template_descriptions(items: list[MCItem], error_rate: float, seed: int) -> dict[str, dict]:
    slipped = _slipped_ids(items, error_rate, seed)
    out = {}
    for it in items:
        rng = _item_rng(seed, it.item_id)
        text, correct, cls = describe_item(it, rng, float(it.item_id in slipped), "consistent")
        wrong_text, _, wrong_cls = describe_item(it, rng, 1.0, "conflicting")
        out[it.item_id] = {
            "consistent": text,
            "conflicting": wrong_text,
            "consistent_is_correct": bool(correct),
            "consistent_class": cls,
            "conflicting_class": wrong_cls,
        }
    return out


def build_descriptions(
    items: list[MCItem],
    error_rate: float = 0.1,
    seed: int = 0,
    describer: dict | None = None,
    image_root: str | Path | None = None,
) -> dict[str, dict]:
    """Descriptions of every item: ``{item_id: {consistent, conflicting, consistent_is_correct,
    consistent_class, conflicting_class}}``.

    ``describer`` is the config block (``kind`` = ``template`` | ``captioner``); without it the
    template describer runs with ``error_rate``. ``image_root`` is the folder that item image paths
    are relative to (captioner only).
    """
    items = list(items)
    _check_unique_ids(items)
    cfg = dict(describer or {"kind": "template", "error_rate": error_rate})
    kind = cfg.pop("kind", "template")
    if kind == "template":
        unknown = set(cfg) - {"error_rate"}
        if unknown:
            raise ConfigError(f"describer 'template': unknown keys {sorted(unknown)}")
        rate = _check_error_rate(cfg.get("error_rate", error_rate))
        return _template_descriptions(items, rate, seed)
    if kind == "captioner":
        return _caption_descriptions(items, cfg, seed, image_root)
    raise ConfigError(f"describer kind must be 'template' or 'captioner', not {kind!r}")


def describer_settings(config: dict) -> dict:
    """The study's ``describer`` block; a captioner runs on the study's ``device`` and ``dtype``
    unless the block names its own (the template describer takes neither)."""
    cfg = dict(config["describer"])
    if cfg.get("kind") == "captioner":
        cfg = {"device": config.get("device", "auto"), "dtype": config.get("dtype", "auto"), **cfg}
    return cfg


def describer_gpus(cfg: dict) -> int:
    """GPUs the describe job holds: one for a captioner on CUDA, like a scoring job."""
    return int(str(cfg.get("device", "cpu")).startswith("cuda"))


def measured_error_rate(descriptions: dict[str, dict]) -> float:
    """The realised share of consistent descriptions that do not describe the true class."""
    if not descriptions:
        raise DataError("no descriptions: cannot measure an error rate")
    wrong = sum(not d["consistent_is_correct"] for d in descriptions.values())
    return wrong / len(descriptions)


def description_summary(descriptions: dict[str, dict], describer: dict | None = None) -> dict:
    """What the study reports about its describer: kind, configured and measured error rate."""
    cfg = describer or {"kind": "template"}
    templated = cfg.get("kind", "template") == "template"
    return {
        "describer": dict(cfg),
        "n_items": len(descriptions),
        # A captioner has no configured rate (the schema may fill one in), only a measured one.
        "error_rate_configured": cfg.get("error_rate") if templated else None,
        "error_rate_measured": measured_error_rate(descriptions),
    }


def _check_entry(item_id: str, entry, where: str) -> None:
    if not isinstance(entry, dict):
        raise DataError(f"{where}item {item_id!r}: description entry is not an object")
    missing = [k for k in ENTRY_KEYS if k not in entry]
    if missing:
        raise DataError(f"{where}item {item_id!r}: description lacks keys {missing}")
    for key in ("consistent", "conflicting", "conflicting_class"):
        if not isinstance(entry[key], str):
            raise DataError(f"{where}item {item_id!r}: {key!r} must be a string")
    if not isinstance(entry["consistent_is_correct"], bool):
        raise DataError(f"{where}item {item_id!r}: 'consistent_is_correct' must be true or false")
    # None: a caption that names no option class unambiguously.
    if entry["consistent_class"] is not None and not isinstance(entry["consistent_class"], str):
        raise DataError(f"{where}item {item_id!r}: 'consistent_class' must be a string or null")


def write_descriptions(descriptions: dict[str, dict], path: str | Path) -> None:
    """Write descriptions as one JSON object keyed by item id (stable order)."""
    for item_id, entry in descriptions.items():
        _check_entry(item_id, entry, "")
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    text = json.dumps(descriptions, indent=1, sort_keys=True, ensure_ascii=False)
    path.write_text(text + "\n", encoding="utf-8")


def read_descriptions(path: str | Path) -> dict[str, dict]:
    path = Path(path)
    if not path.exists():
        raise DataError(f"descriptions file {path} does not exist")
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as exc:
        raise DataError(f"{path}: not valid JSON ({exc.msg}, line {exc.lineno})") from None
    if not isinstance(data, dict):
        raise DataError(f"{path}: expected an object keyed by item id")
    for item_id, entry in data.items():
        _check_entry(item_id, entry, f"{path}: ")
    return data


# --- paper scale: a captioning model -------------------------------------------------------------


def classify_caption(caption: str, candidates: list[int]) -> int | None:
    """The one candidate class the caption names by keyword, or None (none or several named)."""
    named = [c for c in candidates if re.search(rf"\b(?:{CLASS_KEYWORDS[c]})\b", caption, re.IGNORECASE) is not None]
    return named[0] if len(named) == 1 else None


class CaptionDescriber:
    """Captions images with an image-to-text model (``AutoModelForImageTextToText``), loaded lazily.

    The prompt is put in the model's own chat template (image part + text part); without a chat
    template, the processor's image token and the prompt are joined by a newline. Generation is
    greedy and short: a caption, not an answer.
    """

    def __init__(
        self,
        model_id: str,
        device: str = "cpu",
        prompt: str = DEFAULT_CAPTION_PROMPT,
        dtype: str = "auto",
        max_new_tokens: int = 40,
        trust_remote_code: bool = False,
        revision: str | None = None,
        image_processor_backend: str = "pil",
    ):
        self.model_id = str(model_id)
        self.trust_remote_code = bool(trust_remote_code)
        self.revision = revision
        self.image_processor_backend = image_processor_backend
        self.device = resolve_device(device, what="describer device")
        self.dtype = resolve_dtype(dtype, self.device, what="describer dtype")
        self.prompt = prompt
        self.max_new_tokens = int(max_new_tokens)
        self._model = None
        self._processor = None

    def _load(self) -> None:
        if self._model is not None:
            return
        from transformers import AutoModelForImageTextToText, AutoProcessor

        check_backend("describer", self.image_processor_backend)
        kw = {"revision": self.revision, "trust_remote_code": self.trust_remote_code}
        try:
            self._processor = AutoProcessor.from_pretrained(self.model_id, backend=self.image_processor_backend, **kw)
            model = AutoModelForImageTextToText.from_pretrained(self.model_id, dtype=self.dtype, **kw)
        except (OSError, ValueError) as exc:
            raise MmcalError(
                f"captioning model {self.model_id!r} could not be loaded ({exc}). Name a local "
                "folder or a hub model id reachable from this machine (describer.model)."
            ) from None
        got = loaded_backend(self._processor)
        if got is not None and got != self.image_processor_backend:
            raise MmcalError(
                f"captioner {self.model_id!r}: asked for the {self.image_processor_backend} image processor, got {got}"
            )
        self._model = model.to(self.device).eval()

    def _prompt_text(self) -> str:
        messages = [{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": self.prompt}]}]
        if getattr(self._processor, "chat_template", None):
            return self._processor.apply_chat_template(messages, add_generation_prompt=True, tokenize=False)
        token = getattr(self._processor, "image_token", "<image>")
        return f"{token}\n{self.prompt}"

    def caption(self, image_path: str | Path | None, item_id: str = "?") -> str:
        """The caption of one image; a clear error naming the item when the image is missing."""
        if image_path is None:
            raise DataError(f"item {item_id!r} has no image to caption")
        path = Path(image_path)
        if not path.is_file():
            raise DataError(f"item {item_id!r}: image {path} not found (captioner {self.model_id})")
        import torch
        from PIL import Image

        self._load()
        with Image.open(path) as img:
            image = img.convert("RGB")
        inputs = self._processor(images=image, text=self._prompt_text(), return_tensors="pt")
        inputs = inputs.to(self.device)
        if "pixel_values" in inputs:
            inputs["pixel_values"] = inputs["pixel_values"].to(self.dtype)
        with torch.inference_mode():
            out = self._model.generate(**inputs, max_new_tokens=self.max_new_tokens, do_sample=False)
        new_tokens = out[0, inputs["input_ids"].shape[1] :]
        return self._processor.decode(new_tokens, skip_special_tokens=True).strip()


def _image_path(item: MCItem, image_root: str | Path | None) -> Path | None:
    if item.image is None:
        return None
    return Path(image_root) / item.image if image_root is not None else Path(item.image)


# the model-loading keys a captioner shares with models.<name> entries
_LOADING_KEYS = ("trust_remote_code", "revision", "image_processor_backend")


def _has_label(item: MCItem) -> bool:
    label = item.metadata.get("label")
    return isinstance(label, (int, np.integer)) and 0 <= int(label) < len(CLASSES)


def classify_option_caption(caption: str, options: list[str]) -> int | None:
    """The one option whose text the caption contains (whole words, any case), or None."""
    named = [
        i
        for i, o in enumerate(options)
        if o.strip() and re.search(rf"(?<!\w){re.escape(o.strip())}(?!\w)", caption, re.IGNORECASE) is not None
    ]
    return named[0] if len(named) == 1 else None


def conflicting_donor(item: MCItem, items: list[MCItem], seed: int) -> MCItem:
    """The item whose caption is ``item``'s conflicting description: drawn with the seed among the
    items with another image, preferring those whose gold answer differs from ``item``'s."""
    others = sorted((d for d in items if d.image is not None and d.image != item.image), key=lambda d: d.item_id)
    if not others:
        raise DataError(f"item {item.item_id!r}: no other item with an image to take a conflicting caption from")
    gold = str(item.options[item.gold]).strip().lower()
    differ = [d for d in others if str(d.options[d.gold]).strip().lower() != gold] or others
    return differ[int(_item_rng(seed, item.item_id).integers(len(differ)))]


def _caption_descriptions(items: list[MCItem], cfg: dict, seed: int, image_root: str | Path | None) -> dict[str, dict]:
    # error_rate is accepted and ignored: the schema fills it in, a captioner's rate is measured.
    allowed = {"model", "prompt", "device", "dtype", "max_new_tokens", "error_rate", *_LOADING_KEYS}
    unknown = set(cfg) - allowed
    if unknown or "model" not in cfg:
        raise ConfigError(
            f"describer 'captioner' needs 'model' and takes only {', '.join(sorted(allowed))} "
            f"(unknown: {sorted(unknown)})"
        )
    captioner = CaptionDescriber(
        cfg["model"],
        device=cfg.get("device", "cpu"),
        prompt=cfg.get("prompt", DEFAULT_CAPTION_PROMPT),
        dtype=cfg.get("dtype", "auto"),
        max_new_tokens=cfg.get("max_new_tokens", 40),
        **{k: cfg[k] for k in _LOADING_KEYS if k in cfg},
    )
    cache: dict[str, str] = {}

    def caption_of(it: MCItem) -> str:
        if it.item_id not in cache:
            cache[it.item_id] = captioner.caption(_image_path(it, image_root), it.item_id)
        return cache[it.item_id]

    if items and all(_has_label(it) for it in items):
        return _fmnist_caption_descriptions(items, seed, caption_of)
    out = {}
    for it in items:
        text = caption_of(it)
        judged = classify_option_caption(text, it.options)
        donor = conflicting_donor(it, items, seed)
        out[it.item_id] = {
            "consistent": "Description: " + text,
            "conflicting": "Description: " + caption_of(donor),
            "consistent_is_correct": judged == it.gold,
            "consistent_class": it.options[judged] if judged is not None else None,
            "conflicting_class": str(donor.options[donor.gold]),
        }
    return out


def _fmnist_caption_descriptions(items: list[MCItem], seed: int, caption_of) -> dict[str, dict]:
    """Fashion-MNIST items: the class-keyword judge, and a donor of a distractor class."""
    by_label: dict[int, list[MCItem]] = {}
    for it in items:
        by_label.setdefault(_label(it), []).append(it)
    out = {}
    for it in items:
        label = _label(it)
        rng = _item_rng(seed, it.item_id)
        text = caption_of(it)
        options = [int(c) for c in it.metadata.get("option_classes", [])] or list(range(len(CLASSES)))
        judged = classify_caption(text, options)
        wrong = _wrong_class(it, label, rng)
        donors = [d for d in by_label.get(wrong, []) if d.item_id != it.item_id]
        if donors:
            conflicting = "Description: " + caption_of(donors[int(rng.integers(len(donors)))])
        else:
            conflicting = render_description(wrong, rng)
        out[it.item_id] = {
            "consistent": "Description: " + text,
            "conflicting": conflicting,
            "consistent_is_correct": judged == label,
            "consistent_class": CLASSES[judged] if judged is not None else None,
            "conflicting_class": CLASSES[wrong],
        }
    return out
