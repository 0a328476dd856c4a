"""Replicas of the remote tokenizers of Qwen-7B and Qwen-VL-Chat (``QWenTokenizer`` of their ``tokenization_qwen.py``),
made from the qwen-7b replica's fast tokenizer (tests/replicas: the real qwen.tiktoken, the remote specials' ids).

What they reproduce is what the remote code does, checked id for id against it in tests/oracles
(tests/oracles/fixtures/qwen_tokenizers.json, made by running that code): the whole text NFC-normalised; every
special token's text (``<|endoftext|>``, ``<|im_start|>``, …) read as that special; Qwen-VL-Chat's nine more
specials (``<ref>`` … ``<imgpad>``, 151851..151859) and its image spans: ``<img>PATH</img>`` becomes ``<img>``, the
path's UTF-8 bytes as ids (byte value = id), ``<imgpad>`` up to 256 positions, ``</img>``; a path over 256 bytes
is refused. Not the remote code itself (which is in no registry and is not copied here).
"""

from __future__ import annotations

import re
import unicodedata
from pathlib import Path

VL_SPECIALS = ["<ref>", "</ref>", "<box>", "</box>", "<quad>", "</quad>", "<img>", "</img>", "<imgpad>"]
IMG_SPAN = 256
_IMAGE = re.compile(r"(<img>.*?</img>)", re.DOTALL)


class QwenTokenizerReplica:
    """Qwen-7B's ``QWenTokenizer`` encoding interface (``__call__``, ``encode``, ``decode``, its id attributes)."""

    bos_token = None
    eos_token = None
    pad_token = None
    vl = False

    def __init__(self, folder: str | Path):
        from transformers import PreTrainedTokenizerFast

        self.fast = PreTrainedTokenizerFast.from_pretrained(str(folder))
        self.eod_id, self.im_start_id, self.im_end_id = self.fast.convert_tokens_to_ids(
            ["<|endoftext|>", "<|im_start|>", "<|im_end|>"]
        )

    def __len__(self) -> int:
        return self.fast.backend_tokenizer.get_vocab_size(with_added_tokens=True)

    def encode(self, text: str) -> list[int]:
        text = unicodedata.normalize("NFC", text)
        if not self.vl:
            return self.fast(text, add_special_tokens=False)["input_ids"]
        ids = []
        for piece in _IMAGE.split(text):
            if piece.startswith("<img>") and piece.endswith("</img>"):
                url = list(piece[len("<img>") : -len("</img>")].encode("utf-8"))
                if len(url) > IMG_SPAN:
                    raise ValueError("The content in <img>..</img> is too long")
                ids += [self.img_start_id, *url, *[self.img_pad_id] * (IMG_SPAN - len(url)), self.img_end_id]
            elif piece:
                ids += self.fast(piece, add_special_tokens=False)["input_ids"]
        return ids

    def __call__(self, text, add_special_tokens=True, return_tensors=None):
        texts = [text] if isinstance(text, str) else text
        ids = [self.encode(t) for t in texts]
        if return_tensors == "pt":
            import torch

            t = torch.tensor(ids)
            return {"input_ids": t, "attention_mask": torch.ones_like(t)}
        out = ids[0] if isinstance(text, str) else ids
        return {"input_ids": out, "attention_mask": [[1] * len(i) for i in ids]}

    def decode(self, ids, skip_special_tokens: bool = False) -> str:
        return self.fast.decode(ids, skip_special_tokens=skip_special_tokens)


class QwenVLTokenizerReplica(QwenTokenizerReplica):
    """Qwen-VL-Chat's ``QWenTokenizer``: Qwen-7B's plus nine specials, image spans and ``from_list_format``."""

    vl = True

    def __init__(self, folder: str | Path, list_format_space: bool = True):
        from tokenizers import AddedToken

        super().__init__(folder)
        self.fast.backend_tokenizer.add_special_tokens([AddedToken(t, normalized=False) for t in VL_SPECIALS])
        ids = dict(zip(VL_SPECIALS, self.fast.convert_tokens_to_ids(VL_SPECIALS)))
        self.img_start_id, self.img_end_id, self.img_pad_id = ids["<img>"], ids["</img>"], ids["<imgpad>"]
        self.space = " " if list_format_space else ""

    def from_list_format(self, list_format: list[dict]) -> str:
        """ "Picture k: <img>PATH</img>\\n" as hub revisions after QwenLM/Qwen-VL#184 write it (without the space, as
        x1ngzai/Qwen-VL-Chat-Int4@1cd721a2 writes it, when ``list_format_space`` is False), then the text."""
        text, n = "", 0
        for ele in list_format:
            if "image" in ele:
                n += 1
                text += f"Picture {n}:{self.space}<img>{ele['image']}</img>\n"
            elif "text" in ele:
                text += ele["text"]
            else:
                raise ValueError(f"Unsupport element: {ele}")
        return text


def replica(vl: bool, list_format_space: bool = True) -> QwenTokenizerReplica:
    """The replica on the built qwen-7b tokenizer (raises build.ReplicaMissing when its sources are not fetched)."""
    import build

    folder = build.build("qwen-7b")
    return QwenVLTokenizerReplica(folder, list_format_space) if vl else QwenTokenizerReplica(folder)
