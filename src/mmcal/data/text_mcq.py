"""Text-only multiple-choice questions for the "base LLM vs MLLM" scenario.

No package on the reachable registries (PyPI, Debian, npm) ships a standard text multiple-choice
benchmark (MMLU, ARC, OpenBookQA, SciQ, CommonsenseQA, ... all download from the Hugging Face hub at
run time), so this set is generated from a small hand-written knowledge base about clothing,
accessories and everyday household objects: the domain of the Fashion-MNIST classes, which are all
included as objects. :func:`text_mcq_card` documents the construction; the README cites it.

The knowledge base (:data:`FACTS`) lists, for each object, the values of a few attributes
(category, body part, material, use, occasion, weather, parts). A value prefixed with ``~`` means
"sometimes": true for some such objects, so it may never be used to make the object a wrong answer.
An attribute an object does not list at all is *unknown* for it, and the object is then never used
in a question about that attribute. Two templates turn facts into questions:

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
from pathlib import Path

import numpy as np

from mmcal.data.registry import BuildContext, register
from mmcal.errors import DataError
from mmcal.items import MCItem

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


ATTRIBUTES: dict[str, Attribute] = {
    a.name: a
    for a in (
        Attribute(
            "category",
            {
                "footwear": ("Which of these is a kind of footwear?", "footwear"),
                "headwear": ("Which of these is a kind of headwear?", "headwear"),
                "handwear": ("Which of these is a kind of handwear?", "handwear"),
                "neckwear": ("Which of these is a kind of neckwear?", "neckwear"),
                "eyewear": ("Which of these is a kind of eyewear?", "eyewear"),
                "jewellery": ("Which of these is a piece of jewellery?", "jewellery"),
                "bag": ("Which of these is a kind of bag?", "a bag"),
                "outerwear": ("Which of these is outerwear, worn over other clothes?", "outerwear"),
                "top": ("Which of these is a top?", "a top"),
                "bottoms": (
                    "Which of these is a garment for the lower body?",
                    "a garment for the lower body",
                ),
                "onepiece": ("Which of these is a one-piece garment?", "a one-piece garment"),
                "swimwear": ("Which of these is swimwear?", "swimwear"),
                "nightwear": ("Which of these is nightwear?", "nightwear"),
                "household": ("Which of these is a household item?", "a household item"),
                "personal_care": (
                    "Which of these is a personal care item?",
                    "a personal care item",
                ),
                "sewing": ("Which of these is a sewing tool?", "a sewing tool"),
            },
            "What kind of thing {be} {name}?",
        ),
        Attribute(
            "body",
            {
                "feet": ("Which of these is usually worn on the feet?", "on the feet"),
                "head": ("Which of these is usually worn on the head?", "on the head"),
                "hands": ("Which of these is usually worn on the hands?", "on the hands"),
                "neck": ("Which of these is usually worn around the neck?", "around the neck"),
                "upper_body": (
                    "Which of these is usually worn on the upper body, covering the chest?",
                    "on the upper body",
                ),
                "legs": ("Which of these is usually worn on the legs?", "on the legs"),
                "waist": ("Which of these is usually worn around the waist?", "around the waist"),
                "wrist": ("Which of these is usually worn on the wrist?", "on the wrist"),
                "finger": ("Which of these is usually worn on a finger?", "on a finger"),
                "ears": ("Which of these is usually worn on the ears?", "on the ears"),
                "eyes": ("Which of these is usually worn over the eyes?", "over the eyes"),
                # "carried": a coat also covers the back, but nobody carries it there.
                "back": ("Which of these is usually carried on the back?", "carried on the back"),
            },
            "Where on the body {be} {name} usually worn?",
        ),
        Attribute(
            "material",
            {
                m: (f"Which of these is usually made of {m}?", m)
                for m in (
                    "cotton",
                    "denim",
                    "wool",
                    "leather",
                    "rubber",
                    "silk",
                    "straw",
                    "metal",
                    "canvas",
                    "plastic",
                    "nylon",
                    "wood",
                )
            }
            | {"down": ("Which of these is usually filled with down feathers?", "down feathers")},
            "What {be} {name} usually made of?",
        ),
        Attribute(
            "use",
            {
                "warm_body": (
                    "Which of these do you wear mainly to keep your body warm?",
                    "keeping the body warm",
                ),
                "warm_hands": (
                    "Which of these do you wear to keep your hands warm?",
                    "keeping the hands warm",
                ),
                "warm_head": (
                    "Which of these do you wear to keep your head warm?",
                    "keeping the head warm",
                ),
                "warm_neck": (
                    "Which of these do you wear to keep your neck warm?",
                    "keeping the neck warm",
                ),
                "dry_rain": (
                    "Which of these do you use to stay dry in the rain?",
                    "staying dry in the rain",
                ),
                "dry_feet": (
                    "Which of these do you wear to keep your feet dry in puddles?",
                    "keeping the feet dry in puddles",
                ),
                "sun_eyes": (
                    "Which of these do you wear to protect your eyes from bright sun?",
                    "protecting the eyes from bright sun",
                ),
                "sun_shade": (
                    "Which of these do you wear to shade your head from the sun?",
                    "shading the head from the sun",
                ),
                "head_falling": (
                    "Which of these do you wear to protect your head from falling objects?",
                    "protecting the head from falling objects",
                ),
                "head_cycling": (
                    "Which of these do you wear to protect your head when riding a bike?",
                    "protecting the head when riding a bike",
                ),
                "hold_trousers": (
                    "Which of these do you use to hold up your trousers?",
                    "holding up trousers",
                ),
                "time": ("Which of these do you use to tell the time?", "telling the time"),
                "carry_books": (
                    "Which of these do you use to carry books to school?",
                    "carrying books to school",
                ),
                "carry_trip": (
                    "Which of these do you use to carry clothes on a trip?",
                    "carrying clothes on a trip",
                ),
                "carry_money": (
                    "Which of these do you use to carry money and cards?",
                    "carrying money and cards",
                ),
                "carry_personal": (
                    "Which of these do you use to carry small things like keys and a phone?",
                    "carrying small things like keys and a phone",
                ),
                "creases": (
                    "Which of these do you use to remove creases from clothes?",
                    "removing creases from clothes",
                ),
                "hang_clothes": (
                    "Which of these do you use to hang clothes in a wardrobe?",
                    "hanging clothes up",
                ),
                "wash_clothes": ("Which of these do you use to wash clothes?", "washing clothes"),
                "sew": ("Which of these do you use to sew on a button?", "sewing"),
                "cut": (
                    "Which of these do you use to cut paper or cloth?",
                    "cutting paper or cloth",
                ),
                "dry_body": (
                    "Which of these do you use to dry yourself after a shower?",
                    "drying yourself after a shower",
                ),
                "store_clothes": (
                    "Which of these do you keep clothes in at home?",
                    "storing clothes at home",
                ),
                "hair": ("Which of these do you use to tidy your hair?", "tidying the hair"),
                "teeth": ("Which of these do you use to clean your teeth?", "cleaning the teeth"),
                "decoration": ("Which of these is worn mainly as decoration?", "decoration"),
                "protect_feet": (
                    "Which of these do you wear to protect your feet when walking?",
                    "protecting the feet when walking",
                ),
                "protect_clothes": (
                    "Which of these do you wear to keep your clothes clean while cooking?",
                    "keeping clothes clean while cooking",
                ),
            },
            "What {be} {name} mainly used for?",
        ),
        Attribute(
            "occasion",
            {
                "swimming": ("Which of these is usually worn for swimming?", "for swimming"),
                "sleeping": ("Which of these is usually worn in bed for sleeping?", "for sleeping"),
                "sport": (
                    "Which of these is usually worn for running and sport?",
                    "for running and sport",
                ),
                "formal": (
                    "Which of these is usually worn at formal events such as weddings?",
                    "at formal events",
                ),
                "hiking": (
                    "Which of these is usually worn for hiking in the mountains?",
                    "for hiking in the mountains",
                ),
                "building": (
                    "Which of these is usually worn on a building site?",
                    "on a building site",
                ),
                "cooking": ("Which of these is usually worn while cooking?", "while cooking"),
                "cycling": (
                    "Which of these is usually worn when riding a bike?",
                    "when riding a bike",
                ),
                "beach": ("Which of these is usually worn at the beach?", "at the beach"),
                "home": ("Which of these is usually worn at home to relax?", "at home to relax"),
            },
            "When or where {be} {name} usually worn?",
        ),
        Attribute(
            "weather",
            {
                "hot": ("Which of these is mostly worn in hot weather?", "in hot weather"),
                "cold": ("Which of these is mostly worn in cold weather?", "in cold weather"),
                "rainy": ("Which of these is mostly used in rainy weather?", "in rainy weather"),
            },
            None,  # three values only: too few distractors for a reverse question
        ),
        Attribute(
            "parts",
            {
                "sleeves": ("Which of these usually has sleeves?", "sleeves"),
                "collar": ("Which of these usually has a collar?", "a collar"),
                "buttons": ("Which of these usually has buttons?", "buttons"),
                "laces": ("Which of these usually has laces?", "laces"),
                "buckle": ("Which of these usually has a buckle?", "a buckle"),
                "zipper": ("Which of these usually has a zipper?", "a zipper"),
                "hood": ("Which of these usually has a hood?", "a hood"),
                "brim": ("Which of these usually has a brim or peak to shade the eyes?", "a brim"),
                "sole": ("Which of these usually has a sole?", "a sole"),
                "fingers": (
                    "Which of these usually has a separate place for each finger?",
                    "a separate place for each finger",
                ),
                "strap": ("Which of these usually has a strap?", "a strap"),
                "handle": ("Which of these usually has a handle?", "a handle"),
                "pockets": ("Which of these usually has pockets?", "pockets"),
                "lenses": ("Which of these usually has lenses?", "lenses"),
                "dial": ("Which of these usually has a dial with hands?", "a dial with hands"),
                "bristles": ("Which of these usually has bristles?", "bristles"),
                "blades": ("Which of these usually has blades?", "blades"),
                "wheels": ("Which of these usually has wheels?", "wheels"),
                "hook": ("Which of these usually has a hook?", "a hook"),
            },
            "Which of these {do} {name} usually have?",
        ),
    )
}


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


def _concept(key, name, plural=False, fmnist=None, **facts: str) -> Concept:
    """Facts are written as space-separated value keys, e.g. material="leather ~canvas"."""
    return Concept(key, name, plural, fmnist, {a: tuple(v.split()) for a, v in facts.items()})


# The hand-written knowledge base. Generous "~" marks keep distractors uncontroversial: an object is
# a wrong answer only where the table says it plainly does not have the value.
FACTS: tuple[Concept, ...] = (
    # --- the ten Fashion-MNIST classes ---
    _concept(
        "tshirt",
        "a T-shirt",
        fmnist="T-shirt/top",
        category="top",
        body="upper_body",
        material="cotton ~wool ~nylon ~silk",
        use="~warm_body",
        occasion="~sport ~sleeping ~beach ~home ~hiking ~cycling ~building",
        weather="~hot",
        parts="sleeves ~collar ~pockets ~buttons",
    ),
    _concept(
        "trousers",
        "trousers",
        plural=True,
        fmnist="Trouser",
        category="bottoms",
        body="legs ~waist",
        material="cotton wool ~denim ~nylon ~leather ~silk ~canvas",
        use="~warm_body ~carry_money",
        occasion="~formal ~hiking ~building ~home ~sport ~cycling",
        parts="pockets ~zipper ~buttons ~laces",
    ),
    _concept(
        "pullover",
        "a pullover",
        fmnist="Pullover",
        category="top ~outerwear",
        body="upper_body",
        material="wool ~cotton ~nylon ~silk",
        use="warm_body ~warm_neck",
        occasion="~home ~formal ~hiking",
        weather="cold",
        parts="sleeves ~collar ~hood ~zipper ~buttons ~pockets",
    ),
    _concept(
        "dress",
        "a dress",
        fmnist="Dress",
        category="onepiece",
        body="~upper_body ~legs ~waist",
        material="cotton silk ~wool ~nylon ~denim ~leather",
        use="~decoration ~warm_body",
        occasion="~formal ~beach ~home",
        weather="~hot",
        parts="~sleeves ~collar ~buttons ~zipper ~pockets ~strap ~buckle",
    ),
    _concept(
        "coat",
        "a coat",
        fmnist="Coat",
        category="outerwear ~top ~onepiece",
        body="upper_body ~legs ~head",
        material="wool ~leather ~cotton ~nylon ~down ~denim ~canvas",
        use="warm_body ~dry_rain ~carry_money ~warm_head ~warm_neck",
        occasion="~formal ~hiking ~building",
        weather="cold ~rainy",
        parts="sleeves pockets collar ~buttons ~zipper ~hood ~buckle ~strap",
    ),
    _concept(
        "sandals",
        "sandals",
        plural=True,
        fmnist="Sandal",
        category="footwear",
        body="feet",
        material="leather rubber ~plastic ~canvas ~wood ~cotton ~nylon ~straw",
        use="protect_feet",
        occasion="beach ~home ~hiking",
        weather="hot",
        parts="sole strap ~buckle ~laces",
    ),
    _concept(
        "shirt",
        "a shirt",
        fmnist="Shirt",
        category="top",
        body="upper_body",
        material="cotton ~silk ~denim ~wool ~nylon",
        use="~warm_body",
        occasion="~formal ~building ~home",
        parts="sleeves collar buttons ~pockets",
    ),
    _concept(
        "sneakers",
        "sneakers",
        plural=True,
        fmnist="Sneaker",
        category="footwear",
        body="feet",
        material="canvas rubber leather ~nylon ~plastic ~cotton",
        use="protect_feet",
        occasion="sport ~hiking ~cycling ~beach ~home",
        parts="sole laces ~strap ~zipper",
    ),
    _concept(
        "handbag",
        "a handbag",
        fmnist="Bag",
        category="bag",
        material="leather ~canvas ~nylon ~plastic ~cotton ~straw ~silk ~denim ~metal",
        use="carry_personal ~carry_money ~carry_books ~decoration",
        occasion="~formal",
        parts="handle ~strap ~zipper ~buckle ~pockets ~buttons ~hook",
    ),
    _concept(
        "ankle_boots",
        "ankle boots",
        plural=True,
        fmnist="Ankle boot",
        category="footwear",
        body="feet",
        material="leather ~rubber ~canvas ~nylon ~wool ~plastic",
        use="protect_feet ~dry_feet ~warm_body",
        occasion="~hiking ~building ~formal",
        weather="~cold ~rainy",
        parts="sole ~laces ~zipper ~buckle ~strap ~hook",
    ),
    # --- more clothing ---
    _concept(
        "jeans",
        "jeans",
        plural=True,
        category="bottoms",
        body="legs ~waist",
        material="denim ~cotton",
        use="~warm_body ~carry_money",
        occasion="~building ~hiking ~home ~cycling",
        parts="pockets buttons ~zipper",
    ),
    _concept(
        "shorts",
        "shorts",
        plural=True,
        category="bottoms",
        body="legs ~waist",
        material="cotton ~denim ~nylon",
        occasion="~sport ~beach ~swimming ~sleeping ~home ~hiking ~cycling",
        weather="hot",
        parts="~pockets ~buttons ~zipper ~laces",
    ),
    _concept(
        "skirt",
        "a skirt",
        category="bottoms",
        body="~waist ~legs",
        material="cotton ~denim ~wool ~silk ~leather ~nylon",
        use="~decoration",
        occasion="~formal ~beach",
        weather="~hot",
        parts="~zipper ~buttons ~pockets ~buckle",
    ),
    _concept(
        "leggings",
        "leggings",
        plural=True,
        category="bottoms",
        body="legs ~waist",
        material="cotton nylon ~wool",
        use="~warm_body",
        occasion="~sport ~home ~cycling ~sleeping ~hiking",
        weather="~cold",
        parts="~pockets",
    ),
    _concept(
        "hoodie",
        "a hoodie",
        category="top ~outerwear",
        body="upper_body ~head",
        material="cotton ~wool ~nylon",
        use="warm_body ~dry_rain ~warm_head ~sun_shade",
        occasion="~sport ~home ~hiking ~cycling ~building",
        weather="~cold",
        parts="sleeves hood ~pockets ~zipper ~laces",
    ),
    _concept(
        "cardigan",
        "a cardigan",
        category="top ~outerwear",
        body="upper_body",
        material="wool ~cotton ~nylon ~silk",
        use="warm_body",
        occasion="~home ~formal",
        weather="~cold",
        parts="sleeves buttons ~pockets ~zipper ~collar",
    ),
    _concept(
        "blouse",
        "a blouse",
        category="top",
        body="upper_body",
        material="silk cotton ~nylon",
        use="~decoration",
        occasion="~formal",
        weather="~hot",
        parts="~sleeves ~buttons ~collar ~zipper ~pockets",
    ),
    _concept(
        "tank_top",
        "a tank top",
        category="top",
        body="upper_body",
        material="cotton ~nylon ~silk ~wool",
        occasion="~sport ~beach ~sleeping ~home ~swimming ~hiking",
        weather="hot",
        parts="~strap ~pockets",
    ),
    _concept(
        "raincoat",
        "a raincoat",
        category="outerwear ~top ~onepiece",
        body="upper_body ~legs ~head",
        material="nylon plastic ~rubber ~cotton ~canvas",
        use="dry_rain ~warm_body",
        occasion="~hiking ~cycling ~building",
        weather="rainy ~cold",
        parts="sleeves ~hood ~pockets ~zipper ~buttons ~collar ~buckle ~strap",
    ),
    _concept(
        "puffer",
        "a puffer jacket",
        category="outerwear ~top",
        body="upper_body ~head",
        material="nylon down ~cotton",
        use="warm_body ~dry_rain ~warm_head ~warm_neck",
        occasion="~hiking ~building",
        weather="cold",
        parts="sleeves zipper ~hood ~pockets ~collar ~buttons",
    ),
    _concept(
        "suit_jacket",
        "a suit jacket",
        category="~outerwear ~top",
        body="upper_body",
        material="wool ~cotton ~silk ~nylon",
        use="~warm_body ~decoration",
        occasion="formal",
        parts="sleeves buttons collar pockets",
    ),
    _concept(
        "necktie",
        "a necktie",
        category="neckwear",
        body="neck ~upper_body",
        material="silk ~wool ~cotton ~nylon",
        use="~decoration",
        occasion="formal",
        parts="",
    ),
    _concept(
        "pyjamas",
        "pyjamas",
        plural=True,
        category="nightwear ~top ~bottoms ~onepiece",
        body="~upper_body ~legs ~waist",
        material="cotton ~silk ~wool ~nylon",
        use="~warm_body",
        occasion="sleeping ~home",
        parts="~sleeves ~buttons ~collar ~pockets ~laces",
    ),
    _concept(
        "bathrobe",
        "a bathrobe",
        category="~nightwear ~outerwear ~onepiece",
        body="~upper_body ~legs ~waist",
        material="cotton ~silk ~wool ~nylon",
        use="~dry_body ~warm_body",
        occasion="home ~sleeping",
        parts="sleeves ~pockets ~hood ~collar ~laces ~hook",
    ),
    _concept(
        "swimsuit",
        "a swimsuit",
        category="swimwear ~onepiece ~top ~bottoms",
        body="~upper_body ~legs ~waist",
        material="nylon ~cotton",
        occasion="swimming ~beach ~sport",
        weather="~hot",
        parts="~strap ~zipper ~laces ~sleeves",
    ),
    _concept(
        "swim_trunks",
        "swimming trunks",
        plural=True,
        category="swimwear ~bottoms",
        body="~legs ~waist",
        material="nylon ~cotton",
        occasion="swimming ~beach ~sport",
        weather="~hot",
        parts="~pockets ~laces",
    ),
    _concept(
        "socks",
        "socks",
        plural=True,
        category="~footwear",
        body="feet ~legs",
        material="cotton wool ~nylon ~silk",
        use="~warm_body ~protect_feet",
        occasion="~sleeping ~sport ~home ~hiking",
        weather="~cold",
        parts="~sole",
    ),
    _concept(
        "apron",
        "an apron",
        body="~upper_body ~waist ~legs",
        material="cotton ~canvas ~plastic ~leather ~denim ~nylon",
        use="protect_clothes",
        occasion="cooking",
        parts="~pockets ~strap ~laces ~buckle",
    ),
    # --- footwear ---
    _concept(
        "flip_flops",
        "flip-flops",
        plural=True,
        category="footwear",
        body="feet",
        material="rubber plastic ~leather ~canvas ~nylon",
        use="protect_feet",
        occasion="beach ~home ~swimming",
        weather="hot",
        parts="sole strap",
    ),
    _concept(
        "rain_boots",
        "rain boots",
        plural=True,
        category="footwear",
        body="feet ~legs",
        material="rubber ~plastic",
        use="dry_feet protect_feet ~dry_rain ~warm_body",
        occasion="~hiking ~building",
        weather="rainy ~cold",
        parts="sole ~handle ~strap ~buckle",
    ),
    _concept(
        "slippers",
        "slippers",
        plural=True,
        category="footwear ~nightwear",
        body="feet",
        material="~cotton ~wool ~leather ~rubber ~nylon ~plastic ~canvas",
        use="protect_feet ~warm_body",
        occasion="home ~sleeping",
        weather="~cold",
        parts="sole ~strap",
    ),
    _concept(
        "high_heels",
        "high heels",
        plural=True,
        category="footwear",
        body="feet",
        material="leather ~plastic ~silk ~rubber ~metal ~wood ~canvas ~nylon ~cotton",
        use="~protect_feet ~decoration",
        occasion="formal",
        parts="sole ~strap ~buckle ~laces ~zipper",
    ),
    _concept(
        "hiking_boots",
        "hiking boots",
        plural=True,
        category="footwear",
        body="feet",
        material="leather rubber ~nylon ~canvas",
        use="protect_feet ~dry_feet ~warm_body",
        occasion="hiking ~building ~sport",
        weather="~cold ~rainy",
        parts="sole laces ~buckle ~strap ~zipper ~hook",
    ),
    # --- headwear ---
    _concept(
        "baseball_cap",
        "a baseball cap",
        category="headwear",
        body="head",
        material="cotton ~nylon ~wool ~plastic ~leather ~canvas ~denim",
        use="sun_shade ~sun_eyes ~dry_rain ~warm_head ~decoration",
        occasion="~sport ~beach ~hiking ~cycling",
        weather="~hot",
        parts="brim ~buckle ~strap ~buttons",
    ),
    _concept(
        "beanie",
        "a woolly hat",
        category="headwear",
        body="head ~ears",
        material="wool ~cotton ~nylon",
        use="warm_head ~warm_body",
        occasion="~hiking ~building",
        weather="cold",
        parts="",
    ),
    _concept(
        "sun_hat",
        "a sun hat",
        category="headwear",
        body="head",
        material="straw ~cotton ~canvas ~nylon",
        use="sun_shade ~sun_eyes",
        occasion="~beach ~hiking",
        weather="hot",
        parts="brim ~strap",
    ),
    _concept(
        "hard_hat",
        "a hard hat",
        category="headwear",
        body="head",
        material="plastic ~metal",
        use="head_falling ~head_cycling ~sun_shade",
        occasion="building",
        parts="~brim ~strap ~buckle",
    ),
    _concept(
        "helmet",
        "a bicycle helmet",
        category="headwear",
        body="head",
        material="plastic ~nylon ~metal",
        use="head_cycling ~head_falling",
        occasion="cycling ~sport",
        parts="strap buckle ~brim",
    ),
    # --- hands, neck, accessories ---
    _concept(
        "gloves",
        "gloves",
        plural=True,
        category="handwear",
        body="hands ~wrist ~finger",
        material="leather wool ~cotton ~rubber ~nylon ~plastic ~silk",
        use="warm_hands ~warm_body",
        occasion="~building ~cycling ~hiking ~formal ~sport",
        weather="cold",
        parts="fingers ~buckle ~strap ~buttons ~zipper",
    ),
    _concept(
        "mittens",
        "mittens",
        plural=True,
        category="handwear",
        body="hands ~wrist ~finger",
        material="wool ~cotton ~nylon ~leather",
        use="warm_hands ~warm_body",
        occasion="~hiking",
        weather="cold",
        parts="~strap ~zipper ~buttons",
    ),
    _concept(
        "scarf",
        "a scarf",
        category="neckwear ~headwear",
        body="neck ~head ~upper_body",
        material="wool silk ~cotton ~nylon",
        use="warm_neck ~decoration ~warm_head ~warm_body ~sun_shade",
        occasion="~formal ~hiking",
        weather="~cold",
        parts="",
    ),
    _concept(
        "belt",
        "a belt",
        body="waist",
        material="leather ~canvas ~nylon ~metal ~plastic ~rubber ~cotton",
        use="hold_trousers ~decoration",
        occasion="~formal",
        parts="buckle ~strap ~hook",
    ),
    _concept(
        "sunglasses",
        "sunglasses",
        plural=True,
        category="eyewear",
        body="eyes ~head ~ears",
        material="plastic ~metal ~wood",
        use="sun_eyes ~decoration",
        occasion="~beach ~hiking ~cycling ~sport ~building",
        weather="hot",
        parts="lenses ~hook ~strap",
    ),
    _concept(
        "wristwatch",
        "a wristwatch",
        category="~jewellery",
        body="wrist ~hands ~upper_body",
        material="metal ~leather ~plastic ~rubber ~nylon ~silk ~canvas ~wood",
        use="time ~decoration",
        occasion="~formal ~sport",
        parts="dial ~strap ~buckle ~buttons",
    ),
    _concept(
        "ring",
        "a ring",
        category="jewellery ~handwear",
        body="finger ~hands",
        material="metal ~plastic ~wood",
        use="decoration",
        occasion="~formal",
        parts="",
    ),
    _concept(
        "necklace",
        "a necklace",
        category="jewellery ~neckwear",
        body="neck ~upper_body",
        material="metal ~plastic ~leather ~wood ~cotton ~silk",
        use="decoration",
        occasion="~formal",
        parts="~buckle ~hook",
    ),
    _concept(
        "earrings",
        "earrings",
        plural=True,
        category="jewellery",
        body="ears ~head",
        material="metal ~plastic ~wood ~leather",
        use="decoration",
        occasion="~formal",
        parts="~hook",
    ),
    _concept(
        "bracelet",
        "a bracelet",
        category="jewellery",
        body="wrist ~hands ~upper_body",
        material="metal ~leather ~plastic ~wood ~rubber ~cotton ~silk",
        use="decoration",
        occasion="~formal",
        parts="~buckle ~strap ~hook",
    ),
    # --- bags and carried things ---
    _concept(
        "backpack",
        "a backpack",
        category="bag",
        body="back ~upper_body",
        material="nylon canvas ~leather ~cotton ~plastic ~denim",
        use="carry_books ~carry_trip ~carry_personal ~carry_money",
        occasion="~hiking ~cycling",
        parts="strap zipper ~pockets ~handle ~buckle ~buttons ~hook",
    ),
    _concept(
        "suitcase",
        "a suitcase",
        category="~bag",
        material="plastic ~leather ~nylon ~metal ~canvas",
        use="carry_trip ~store_clothes ~carry_personal",
        parts="handle wheels ~zipper ~strap ~pockets ~buckle",
    ),
    _concept(
        "wallet",
        "a wallet",
        material="leather ~nylon ~canvas ~plastic ~cotton ~metal",
        use="carry_money ~carry_personal",
        parts="~zipper ~buttons ~pockets ~strap",
    ),
    _concept(
        "umbrella",
        "an umbrella",
        material="nylon metal ~plastic ~wood ~cotton ~silk ~canvas",
        use="dry_rain ~sun_shade",
        weather="rainy ~hot",
        parts="handle ~buttons ~strap ~hook",
    ),
    # --- everyday household objects ---
    _concept(
        "iron",
        "an iron",
        category="household",
        material="metal plastic",
        use="creases",
        parts="handle ~buttons ~dial ~sole",
    ),
    _concept(
        "hanger",
        "a coat hanger",
        category="household",
        material="plastic wood metal",
        use="hang_clothes",
        parts="hook",
    ),
    _concept(
        "washing_machine",
        "a washing machine",
        category="household",
        material="metal plastic ~rubber",
        use="wash_clothes ~store_clothes",
        parts="~buttons ~handle ~dial",
    ),
    _concept(
        "needle",
        "a sewing needle",
        category="sewing ~household",
        material="metal",
        use="sew",
        parts="",
    ),
    _concept(
        "scissors",
        "scissors",
        plural=True,
        category="~sewing ~household ~personal_care",
        material="metal ~plastic",
        use="cut ~sew",
        parts="blades ~handle",
    ),
    _concept(
        "towel",
        "a towel",
        category="~household ~personal_care",
        material="cotton ~nylon",
        use="dry_body",
        parts="~hook",
    ),
    _concept(
        "wardrobe",
        "a wardrobe",
        category="household",
        material="wood ~metal ~plastic",
        use="store_clothes ~hang_clothes",
        parts="~handle ~hook",
    ),
    _concept(
        "comb",
        "a comb",
        category="personal_care ~household",
        material="plastic ~wood ~metal ~rubber",
        use="hair",
    ),
    _concept(
        "toothbrush",
        "a toothbrush",
        category="personal_care ~household",
        material="plastic ~wood ~nylon",
        use="teeth",
        parts="bristles handle ~buttons",
    ),
)

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
            if c.knows(attribute.name)
            and value not in c.mentioned(attribute.name)
            and not _named_in(c, question)
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
    item_id = f"{dataset}-{fact.concept}-{fact.attribute}" + (
        f"-{fact.value}" if fact.template == FORWARD else ""
    )
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


def _holds(
    template: str, attribute: str, key: str, concept_key: str, value: str
) -> tuple[bool, bool]:
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
base in `mmcal/data/text_mcq.py`, in the domain of the Fashion-MNIST classes.

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
        n_calib=int(splits.get("calib", 0)), n_test=int(splits.get("test", 0)),
        n_options=int(cfg.get("n_options", 4)), seed=context.seed, dataset=name,
    )
