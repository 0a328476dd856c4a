"""Paraphrasing with the local SmolLM2-135M-Instruct checkpoint (offline default).

The model is loaded lazily on the first sample, so a search replayed from the cache never loads it,
and at most once per paraphraser object.
"""

from __future__ import annotations

from pathlib import Path

from mmcal.promptopt.base import Paraphraser, ParaphraserError, instruction_settings, paraphrase_messages

DEFAULT_MODEL_PATH = "data/models/smollm2-135m-instruct"


def load_paraphrase_model(model_path: str | Path):
    """(tokenizer, model) from a Hugging Face checkpoint folder, in eval mode on the CPU."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    path = Path(model_path)
    if not (path / "config.json").exists():
        raise ParaphraserError(
            f"no model checkpoint at {path}: build it with "
            "mmcal.tinyllava.smollm2.convert_smollm2 (the workflow's models rule does this)"
        )
    tokenizer = AutoTokenizer.from_pretrained(path)
    model = AutoModelForCausalLM.from_pretrained(path, dtype=torch.float32)
    model.eval()
    return tokenizer, model


class SmolLM2Paraphraser(Paraphraser):
    kind = "smollm2"

    def __init__(
        self,
        model_path: str | Path = DEFAULT_MODEL_PATH,
        temperature: float = 1.2,
        top_p: float = 0.95,
        max_new_tokens: int = 20,
        max_attempts: int = 3,
    ):
        self.model_path = Path(model_path)
        self.temperature = float(temperature)
        self.top_p = float(top_p)
        self.max_new_tokens = int(max_new_tokens)
        self.max_attempts = int(max_attempts)
        self._tokenizer = None
        self._model = None
        self.loads = 0  # how often the model was loaded (tests check replay loads nothing)

    def settings(self) -> dict:
        # The folder name, not the full path: the same converted checkpoint may live elsewhere.
        return {
            "model": self.model_path.name,
            "temperature": self.temperature,
            "top_p": self.top_p,
            "max_new_tokens": self.max_new_tokens,
            **instruction_settings(),
        }

    def _ensure_loaded(self) -> None:
        if self._model is None:
            self._tokenizer, self._model = load_paraphrase_model(self.model_path)
            self.loads += 1

    def sample(self, parent: str, sample_seed: int) -> str | None:
        import torch

        self._ensure_loaded()
        tok = self._tokenizer
        text = tok.apply_chat_template(paraphrase_messages(parent), add_generation_prompt=True, tokenize=False)
        inputs = tok(text, return_tensors="pt")
        # generate() in transformers 5.x takes no torch.Generator; seeding the global RNG inside
        # fork_rng gives the same reproducibility and leaves the caller's RNG state untouched.
        with torch.random.fork_rng(devices=[]), torch.no_grad():
            torch.manual_seed(sample_seed)
            out = self._model.generate(
                **inputs,
                max_new_tokens=self.max_new_tokens,
                do_sample=True,
                temperature=self.temperature,
                top_p=self.top_p,
                pad_token_id=tok.pad_token_id,
            )
        new_tokens = out[0, inputs["input_ids"].shape[1] :]
        return tok.decode(new_tokens, skip_special_tokens=True)

    def close(self) -> None:
        self._tokenizer = self._model = None
