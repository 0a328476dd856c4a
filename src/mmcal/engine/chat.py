"""Rendering chat prompts with each model's own template.

Scoring and training both go through :func:`render_prompt`, so the tiny-LLaVA is trained on exactly
the text the scoring engine later shows it.
"""

from __future__ import annotations

from mmcal.engine.prompts import flatten_for_text_model

# ChatML, as SmolLM2 uses, with image parts and no default system prompt (SmolLM2's own template
# only takes string content and always adds a long system prompt, which costs tokens on 2 cores).
TINY_LLAVA_CHAT_TEMPLATE = (
    "{% for message in messages %}"
    "{{ '<|im_start|>' + message['role'] + '\n' }}"
    "{% if message['content'] is string %}{{ message['content'] }}"
    "{% else %}{% for part in message['content'] %}"
    "{% if part['type'] == 'image' %}{{ '<image>\n' }}"
    "{% elif part['type'] == 'text' %}{{ part['text'] }}{% endif %}"
    "{% endfor %}{% endif %}"
    "{{ '<|im_end|>\n' }}"
    "{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}"
)


def render_prompt(processor_or_tokenizer, messages: list[dict], multimodal: bool) -> str:
    """Text of the chat up to the opened assistant turn, via the model's own chat template."""
    if not multimodal:
        messages = flatten_for_text_model(messages)
    return processor_or_tokenizer.apply_chat_template(messages, add_generation_prompt=True, tokenize=False)
