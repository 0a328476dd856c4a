"""Text-only multiple-choice questions for the "base LLM vs MLLM" scenario.

No package on the reachable registries (PyPI, Debian, npm) ships a standard text multiple-choice
benchmark (MMLU, ARC, OpenBookQA, SciQ, CommonsenseQA, ... all download from the Hugging Face hub at
run time), so this set is generated from a small hand-written knowledge base about clothing,
accessories and everyday household objects: the domain of the Fashion-MNIST classes, which are all
included as objects. :func:`text_mcq_card` documents the construction; the README cites it.

The knowledge base is package data: ``facts/attributes.yaml`` holds the attributes (category, body
part, material, use, occasion, weather, parts), their values and question texts;
``facts/concepts.yaml`` (:data:`FACTS`) lists, for each object, its values of a few attributes. A
value prefixed with ``~`` means "sometimes": true for some such objects, so it may never be used to
make the object a wrong answer. An attribute an object does not list at all is *unknown* for it,
and the object is then never used in a question about that attribute. Two templates turn facts into questions:

- ``attribute_to_object``: "Which of these is usually made of denim?" -> options are objects; the
  gold has the value, every distractor lists the attribute and has neither the value nor ``~value``.
- ``object_to_attribute``: "What are jeans usually made of?" -> options are values; the gold is the
  object's first listed (primary) value, every distractor is a value the object does not have,
  not even as ``~``.

So every answer is unambiguous *given the table* (:func:`check_item_against_facts` re-checks it).
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from importlib import resources
from pathlib import Path

import numpy as np
import yaml

from mmcal.data.registry import BuildContext, register
from mmcal.errors import DataError
from mmcal.items import MCItem

FACTS_DIR = "facts"  # package data beside this module: attributes.yaml, concepts.yaml
SOMETIMES = "~"
FORWARD = "attribute_to_object"
REVERSE = "object_to_attribute"


@dataclass(frozen=True)
class Attribute:
    """An attribute: each value's forward question and option text, and the reverse question."""

    name: str
    # value key -> (forward question, the value's text as an option of a reverse question)
    values: dict[str, tuple[str, str]]
    # "{be}"/"{do}" agree with the object's name; None: no reverse question for this attribute.
    reverse_question: str | None


@dataclass(frozen=True)
class Concept:
    """An object of the knowledge base; ``facts`` maps attribute -> values (``~v``: sometimes)."""

    key: str
    name: str  # as an option and inside a question: "a coat", "sandals"
    plural: bool
    fmnist_class: str | None
    facts: dict[str, tuple[str, ...]]

    def usual(self, attribute: str) -> tuple[str, ...]:
        return tuple(v for v in self.facts.get(attribute, ()) if not v.startswith(SOMETIMES))

    def mentioned(self, attribute: str) -> set[str]:
        """Every value listed, usual or sometimes: none of these can make the object wrong."""
        return {v.lstrip(SOMETIMES) for v in self.facts.get(attribute, ())}

    def knows(self, attribute: str) -> bool:
        return attribute in self.facts


# --------------------------------------------------------------------------------------------
# The knowledge base: package data, checked on load so a typo names its file and entry
# --------------------------------------------------------------------------------------------


def read_knowledge_file(name: str) -> tuple[object, str]:
    """(parsed YAML, where) of ``mmcal/data/facts/<name>``, shipped as package data."""
    where = f"mmcal/data/{FACTS_DIR}/{name}"
    try:
        text = (resources.files("mmcal.data") / FACTS_DIR / name).read_text(encoding="utf-8")
    except FileNotFoundError:
        raise DataError(f"{where}: knowledge-base file missing from the installed package") from None
    try:
        return yaml.safe_load(text), where
    except yaml.YAMLError as exc:
        raise DataError(f"{where}: not valid YAML ({exc})") from None


def _fields(value, where: str, required: tuple[str, ...], optional: tuple[str, ...] = ()) -> dict:
    """``value`` as a mapping with exactly the ``required`` keys and some ``optional`` ones."""
    if not isinstance(value, dict):
        raise DataError(f"{where}: expected a mapping, got {type(value).__name__}")
    missing = [k for k in required if k not in value]
    unknown = [k for k in value if k not in required + optional]
    if missing or unknown:
        raise DataError(f"{where}: missing keys {missing}, unknown keys {unknown} (keys: {list(required + optional)})")
    return value


def _text(value, where: str) -> str:
    if not isinstance(value, str) or not value.strip():
        raise DataError(f"{where}: expected non-empty text, got {value!r}")
    return value


def _key(value, where: str) -> str:
    """A value or object key: one word, as it is written inside a concept's space-separated facts."""
    if not isinstance(value, str) or not re.fullmatch(r"\w+", value):
        raise DataError(
            f"{where}: key {value!r} must be one word of letters, digits or '_' (quote it if YAML reads "
            "it as a number or a boolean)"
        )
    return value


def parse_attributes(data, where: str) -> dict[str, Attribute]:
    """Attributes from ``attributes.yaml``: name -> {reverse_question, values: key -> {question, option}}."""
    if not isinstance(data, dict) or not data:
        raise DataError(f"{where}: expected a mapping of attributes, got {type(data).__name__}")
    attributes = {}
    for name, spec in data.items():
        at = f"{where}: attribute {_key(name, where)!r}"
        spec = _fields(spec, at, ("reverse_question", "values"))
        reverse = spec["reverse_question"]
        if reverse is not None:
            _text(reverse, f"{at} reverse_question")
        if not isinstance(spec["values"], dict) or not spec["values"]:
            raise DataError(f"{at}: 'values' must be a non-empty mapping")
        values = {}
        for key, value in spec["values"].items():
            vat = f"{at} value {_key(key, at)!r}"
            value = _fields(value, vat, ("question", "option"))
            values[key] = (_text(value["question"], f"{vat} question"), _text(value["option"], f"{vat} option"))
        attributes[name] = Attribute(name, values, reverse)
    return attributes


def parse_concepts(data, where: str, attributes: dict[str, Attribute]) -> tuple[Concept, ...]:
    """Objects from ``concepts.yaml``; every fact value must be a value of its attribute."""
    if not isinstance(data, list) or not data:
        raise DataError(f"{where}: expected a list of objects, got {type(data).__name__}")
    concepts: list[Concept] = []
    for i, spec in enumerate(data):
        at = f"{where}: object #{i}"
        spec = _fields(spec, at, ("key", "name", "facts"), ("plural", "fmnist"))
        key = _key(spec["key"], at)
        at = f"{where}: object {key!r}"
        if any(c.key == key for c in concepts):
            raise DataError(f"{at}: key listed twice")
        plural = spec.get("plural", False)
        if not isinstance(plural, bool):
            raise DataError(f"{at}: 'plural' must be true or false, not {plural!r}")
        fmnist = spec.get("fmnist")
        if fmnist is not None:
            _text(fmnist, f"{at} fmnist")
        if not isinstance(spec["facts"], dict):
            raise DataError(f"{at}: 'facts' must be a mapping attribute -> values")
        facts = {}
        for attribute, text in spec["facts"].items():
            if attribute not in attributes:
                raise DataError(f"{at}: unknown attribute {attribute!r} (attributes: {', '.join(attributes)})")
            if not isinstance(text, str):
                raise DataError(f"{at}: {attribute} must be space-separated value keys, not {text!r}")
            values = tuple(text.split())
            unknown = [v for v in values if v.lstrip(SOMETIMES) not in attributes[attribute].values]
            if unknown:
                raise DataError(f"{at}: {attribute} values {unknown} are not values of that attribute")
            facts[attribute] = values
        concepts.append(Concept(key, _text(spec["name"], f"{at} name"), plural, fmnist, facts))
    return tuple(concepts)


ATTRIBUTES: dict[str, Attribute] = parse_attributes(*read_knowledge_file("attributes.yaml"))
FACTS: tuple[Concept, ...] = parse_concepts(*read_knowledge_file("concepts.yaml"), ATTRIBUTES)
CONCEPTS: dict[str, Concept] = {c.key: c for c in FACTS}


@dataclass(frozen=True)
class Fact:
    """One question to ask: before options are drawn."""

    template: str
    attribute: str
    value: str
    concept: str  # the object the fact is about: the cluster of the item
    question: str
    gold: str  # key of the gold option (a concept key or a value key)
    distractor_pool: tuple[str, ...]


def _bare(name: str) -> str:
    for article in ("a ", "an "):
        if name.startswith(article):
            return name[len(article) :]
    return name


def _named_in(concept: Concept, text: str) -> bool:
    return re.search(rf"\b{re.escape(_bare(concept.name))}\b", text, re.IGNORECASE) is not None


def option_text(template: str, attribute: str, key: str) -> str:
    """Text of an option: an object's name, or a value's option phrase."""
    if template == FORWARD:
        return CONCEPTS[key].name
    return ATTRIBUTES[attribute].values[key][1]


def _reverse_question(attribute: Attribute, concept: Concept) -> str:
    be, do = ("are", "do") if concept.plural else ("is", "does")
    text = attribute.reverse_question.format(be=be, do=do, name=concept.name)
    return text[0].upper() + text[1:]


def _forward_facts(attribute: Attribute) -> list[Fact]:
    facts = []
    for value, (question, _) in attribute.values.items():
        # An object named in the question would be a silly distractor ("...hold up your trousers?").
        wrong = tuple(
            c.key
            for c in FACTS
            if c.knows(attribute.name) and value not in c.mentioned(attribute.name) and not _named_in(c, question)
        )
        for c in FACTS:
            if value in c.usual(attribute.name):
                facts.append(Fact(FORWARD, attribute.name, value, c.key, question, c.key, wrong))
    return facts


def _reverse_facts(attribute: Attribute) -> list[Fact]:
    facts = []
    for c in FACTS:
        usual = c.usual(attribute.name)
        if not usual:
            continue
        wrong = tuple(v for v in attribute.values if v not in c.mentioned(attribute.name))
        question = _reverse_question(attribute, c)
        facts.append(Fact(REVERSE, attribute.name, usual[0], c.key, question, usual[0], wrong))
    return facts


def all_facts(n_options: int = 4) -> list[Fact]:
    """Every askable fact with at least ``n_options - 1`` valid distractors, in a fixed order."""
    facts: list[Fact] = []
    for attribute in ATTRIBUTES.values():
        facts += _forward_facts(attribute)
        if attribute.reverse_question is not None:
            facts += _reverse_facts(attribute)
    return [f for f in facts if len(f.distractor_pool) >= n_options - 1]


def _split_clusters(facts: list[Fact], n_calib: int, n_test: int, rng) -> dict[str, list[Fact]]:
    """Whole objects (clusters) go to calib or test, sized in proportion to the requested counts,
    so no object's facts leak from the calibration split into the test split."""
    by_concept: dict[str, list[Fact]] = {}
    for f in facts:
        by_concept.setdefault(f.concept, []).append(f)
    keys = [k for k in CONCEPTS if k in by_concept]
    calib_share = n_calib / (n_calib + n_test) if n_calib + n_test else 0.0
    pools: dict[str, list[Fact]] = {"calib": [], "test": []}
    for k in rng.permutation(keys):
        split = "calib" if len(pools["calib"]) < calib_share * len(facts) else "test"
        pools[split] += by_concept[str(k)]
    return pools


def _sample(pool: list[Fact], n: int, split: str, rng) -> list[Fact]:
    if n > len(pool):
        raise DataError(
            f"text MC set: {n} {split!r} items requested but its share of the knowledge base has "
            f"only {len(pool)} questions (all splits together: lower the counts in the config)"
        )
    picked = rng.choice(len(pool), size=n, replace=False)
    return [pool[i] for i in picked]


def _make_item(fact: Fact, split: str, gold_pos: int, n_options: int, dataset: str, rng) -> MCItem:
    chosen = rng.choice(len(fact.distractor_pool), size=n_options - 1, replace=False)
    keys = [fact.distractor_pool[i] for i in chosen]
    keys.insert(gold_pos, fact.gold)
    concept = CONCEPTS[fact.concept]
    item_id = f"{dataset}-{fact.concept}-{fact.attribute}" + (f"-{fact.value}" if fact.template == FORWARD else "")
    return MCItem(
        item_id=item_id,
        cluster_id=f"{dataset}-{fact.concept}",
        question=fact.question,
        options=[option_text(fact.template, fact.attribute, k) for k in keys],
        gold=gold_pos,
        split=split,
        source=f"text-mcq/{fact.template}:{fact.attribute}",
        image=None,
        metadata={
            "template": fact.template,
            "attribute": fact.attribute,
            "value": fact.value,
            "concept": fact.concept,
            "option_keys": keys,
            "fmnist_class": concept.fmnist_class,
        },
    )


def build_text_mcq_items(
    n_calib: int,
    n_test: int,
    n_options: int = 4,
    seed: int = 0,
    dataset: str = "fmnist-text",
) -> list[MCItem]:
    """Build ``n_calib`` + ``n_test`` text-only MC items from the knowledge base (deterministic).

    Splits are disjoint in objects (``cluster_id`` = the object). Within each split the gold
    letter cycles through the positions, so every letter is gold equally often (±1).
    """
    if n_options < 2:
        raise DataError(f"text MC set: n_options must be at least 2, not {n_options}")
    if n_calib < 0 or n_test < 0:
        raise DataError(f"text MC set: split counts must be >= 0 (calib {n_calib}, test {n_test})")
    rng = np.random.default_rng(seed)
    pools = _split_clusters(all_facts(n_options), n_calib, n_test, rng)
    items: list[MCItem] = []
    for split, n in (("calib", n_calib), ("test", n_test)):
        chosen = _sample(pools[split], n, split, rng)
        for j, fact in enumerate(chosen):
            item = _make_item(fact, split, j % n_options, n_options, dataset, rng)
            check_item_against_facts(item)
            items.append(item)
    return items


def _holds(template: str, attribute: str, key: str, concept_key: str, value: str) -> tuple[bool, bool]:
    """(is usually true, is at least sometimes true) for the option ``key`` of a question."""
    if template == FORWARD:
        c = CONCEPTS[key]
        return value in c.usual(attribute), value in c.mentioned(attribute)
    c = CONCEPTS[concept_key]
    return key in c.usual(attribute), key in c.mentioned(attribute)


def check_item_against_facts(item: MCItem) -> None:
    """Raise DataError naming the item unless its gold holds and no distractor ever does."""
    m = item.metadata
    try:
        template, attribute, value = m["template"], m["attribute"], m["value"]
        concept, keys = m["concept"], m["option_keys"]
    except KeyError as exc:
        raise DataError(f"item {item.item_id!r}: metadata lacks {exc}") from None
    if len(set(keys)) != len(keys) or len(set(item.options)) != len(item.options):
        raise DataError(f"item {item.item_id!r}: repeated options {item.options}")
    for i, key in enumerate(keys):
        usually, sometimes = _holds(template, attribute, key, concept, value)
        if i == item.gold and not usually:
            raise DataError(f"item {item.item_id!r}: gold option {key!r} is not true per the table")
        if i != item.gold and sometimes:
            raise DataError(f"item {item.item_id!r}: distractor {key!r} is also (sometimes) true")
        if template == FORWARD and not CONCEPTS[key].knows(attribute):
            raise DataError(f"item {item.item_id!r}: option {key!r} has no {attribute!r} facts")


def text_mcq_card() -> str:
    """A data card for the generated text set (Markdown), with counts from the knowledge base."""
    facts = all_facts(4)
    n_fwd = sum(f.template == FORWARD for f in facts)
    attrs = ", ".join(f"{a.name} ({len(a.values)} values)" for a in ATTRIBUTES.values())
    fm = [c.name for c in FACTS if c.fmnist_class]
    return f"""# fmnist-text: text-only multiple-choice questions (generated)

**Why generated.** The study compares SmolLM2-135M-Instruct with the tiny LLaVA built on it on the
same text-only questions. No package on the registries this project can reach (PyPI, Debian, npm)
carries a standard text multiple-choice benchmark: MMLU, ARC, OpenBookQA, SciQ, CommonsenseQA,
HellaSwag and PIQA are only on the Hugging Face hub (unreachable offline); trivia packages call
web APIs; the few quiz data sets that do ship offline are small or narrow (e.g. a US civics app
with under 100 native 4-option questions). So the set is generated from a hand-written knowledge
base (`mmcal/data/facts/*.yaml`, read by `mmcal/data/text_mcq.py`), in the domain of the
Fashion-MNIST classes.

**Knowledge base.** {len(FACTS)} objects: the ten Fashion-MNIST classes
({", ".join(fm)}),
other clothing, footwear, headwear, accessories, bags and everyday household objects.
Attributes: {attrs}.
A value marked `~` is "sometimes" true; an attribute an object does not list is unknown for it.
Neither is ever used to make an object a wrong answer.

**Templates.** `attribute_to_object` ("Which of these is usually made of denim?", options are
objects) and `object_to_attribute` ("What are jeans usually made of?", options are attribute
values; the gold is the object's primary value). With 4 options: {len(facts)} askable facts,
{n_fwd} of the first kind and {len(facts) - n_fwd} of the second. Each (question, correct answer)
pair occurs at most once in a build.

**Options and gold.** Distractors are drawn with a seeded generator from the objects (or values)
that the table says plainly do *not* have the asked value; an object named in the question is never
a distractor. Gold letters cycle through the positions within each split (balanced to ±1).
`check_item_against_facts` re-checks every item against the table.

**Splits and clusters.** `cluster_id` is the object the question is about; whole objects go to
`calib` or `test` (in proportion to the requested counts), so bootstrap resampling by cluster and
calibration on `calib` are honest about facts shared by one object.

**Limitations.** The facts are everyday knowledge written by the project's authors, not a published
benchmark, and were not validated by independent annotators; "usually" is a judgement for some
entries. Questions are English only and concern one domain. Difficulty is low for large models and
is meant to be partly answerable by a 135M-parameter model.
"""


@register("text_mcq")
def build_text_mcq(name: str, cfg: dict, out_dir: Path, context: BuildContext) -> list[MCItem]:
    """Config adapter: ``splits`` (calib / test counts) and ``n_options``."""
    splits = cfg.get("splits") or {}
    return build_text_mcq_items(
        n_calib=int(splits.get("calib", 0)),
        n_test=int(splits.get("test", 0)),
        n_options=int(cfg.get("n_options", 4)),
        seed=context.seed,
        dataset=name,
    )
