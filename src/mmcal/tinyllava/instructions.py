"""Training examples of the two LLaVA stages, tokenised exactly as the scoring engine does.

An example is one image index plus a token sequence whose tail is the target. The sequence is
built like the scoring engine builds what it scores: the chat prompt rendered with the processor's
template (``<image>`` expanded to one token per patch, tokenised as the processor tokenises it),
then a continuation tokenised on its own and appended.

- Stage 1 (feature alignment): the image's class name as a caption, asked two ways:
  "<image> + a brief-description request" -> "A photo of a Trouser." (LLaVA's stage-1 form), and
  "<image> + the study's question with its options" -> "Answer:" + " Trouser" (the form the
  ``option_loglik`` readout scores). Captions use the exact class names, as the options spell them.
- Stage 2 (visual instruction tuning): the scoring prompt of a multiple-choice item + the answer
  prefix "Answer: (" -> the gold letter, ")" and ``<|im_end|>``.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from mmcal import LETTERS
from mmcal.data.fashion_mnist import CLASSES, QUESTION, make_options
from mmcal.engine.chat import render_prompt
from mmcal.engine.prompts import PromptVariant, build_messages
from mmcal.engine.readouts import encode_ids, letter_token_ids
from mmcal.items import MCItem
from mmcal.tinyllava.model import IMAGE_TOKEN

CAPTION_REQUESTS = (
    "Describe the image briefly.",
    "What is in this picture?",
    "Give a short caption for the image.",
    "What is shown in the image?",
)
CAPTIONS = (
    "A photo of a {name}.",
    "This is a {name}.",
    "A picture of a {name}.",
    "{name}",
)


@dataclass
class Example:
    image_index: int  # row of the stage's feature cache
    ids: list[int]
    target_from: int  # ids[target_from:] are the target tokens


class PromptTokenizer:
    """Renders chat prompts and tokenises them the way the processor + scoring engine do."""

    def __init__(self, processor, n_image_tokens: int):
        self.processor = processor
        self.tok = processor.tokenizer
        self.n_image_tokens = n_image_tokens
        self.end_id = self.tok.convert_tokens_to_ids("<|im_end|>")

    def prefix_ids(self, messages: list[dict]) -> list[int]:
        """Token ids of the rendered prompt, with ``<image>`` expanded as the processor expands it."""
        text = render_prompt(self.processor, messages, multimodal=True)
        bos = self.tok.bos_token
        special = not (bos and text.startswith(bos))  # the engine's rule
        text = text.replace(IMAGE_TOKEN, IMAGE_TOKEN * self.n_image_tokens)
        return self.tok(text, add_special_tokens=special)["input_ids"]

    def caption_example(self, image_index: int, label: int, rng: np.random.Generator) -> Example:
        request = CAPTION_REQUESTS[rng.integers(len(CAPTION_REQUESTS))]
        caption = CAPTIONS[rng.integers(len(CAPTIONS))].format(name=CLASSES[label])
        messages = [{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": request}]}]
        prefix = self.prefix_ids(messages)
        target = encode_ids(self.tok, caption) + [self.end_id]
        return Example(image_index, prefix + target, len(prefix))

    def answer_caption_example(self, image_index: int, item: MCItem, prompt: PromptVariant) -> Example:
        """The gold option's text after ``prompt.option_prefix``: what option_loglik scores."""
        prefix = self.prefix_ids(build_messages(item, prompt, with_image=True))
        head = encode_ids(self.tok, prompt.option_prefix)
        target = encode_ids(self.tok, " " + item.options[item.gold]) + [self.end_id]
        return Example(image_index, prefix + head + target, len(prefix) + len(head))

    def instruction_example(self, image_index: int, item: MCItem, prompt: PromptVariant) -> Example:
        prefix = self.prefix_ids(build_messages(item, prompt, with_image=True))
        answer = encode_ids(self.tok, prompt.answer_prefix)
        letter = letter_token_ids(self.tok, prompt.answer_prefix, len(item.options))[item.gold]
        target = [letter] + encode_ids(self.tok, ")") + [self.end_id]
        return Example(image_index, prefix + answer + target, len(prefix) + len(answer))


def mc_item(
    label: int,
    candidates: list[int],
    n_classes: int,
    gold_pos: int,
    rng: np.random.Generator,
    idk_text: str | None = None,
    item_id: str = "train",
) -> MCItem:
    """A "What is shown in the image?" item with ``n_classes`` class options.

    A ``label`` among ``candidates`` is gold at ``gold_pos`` with distractors drawn from the
    other candidates (the data set builder's rule). With ``idk_text`` an "I don't know" option is
    appended last; it is gold when ``label`` is not a candidate (an unknown class), and then all
    class options are distractors.
    """
    if label in candidates:
        classes = make_options(label, candidates, n_classes, gold_pos, rng)
        gold = gold_pos
    elif idk_text is not None:
        classes = [int(c) for c in rng.choice(candidates, size=n_classes, replace=False)]
        gold = n_classes
    else:
        raise ValueError(f"class {label} is not among the option classes and there is no IDK option")
    options = [CLASSES[c] for c in classes]
    meta = {"label": int(label), "class": CLASSES[int(label)], "option_classes": classes}
    if idk_text is not None:
        options.append(idk_text)
        meta["idk_index"] = len(options) - 1
    if len(options) > len(LETTERS):
        raise ValueError(f"{len(options)} options: more than the {len(LETTERS)} letters")
    return MCItem(
        item_id=item_id,
        cluster_id=item_id,
        question=QUESTION,
        options=options,
        gold=int(gold),
        split="train",
        source="fashion-mnist/train",
        metadata=meta,
    )
