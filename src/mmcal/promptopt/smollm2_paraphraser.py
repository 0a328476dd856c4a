"""Paraphrasing with a local chat LM: any Hugging Face causal LM with a chat template (``kind: hf``, e.g. the
paper study's Qwen2-7B-Instruct, fetched by the download job and run on the search job's device), and the
DAG's own SmolLM2-135M-Instruct checkpoint (``kind: smollm2``, the offline default).

The model is loaded lazily on the first sample, so a search replayed from the cache never loads it,
and at most once per paraphraser object.
"""

from __future__ import annotations

from pathlib import Path

from mmcal.promptopt.base import Paraphraser, ParaphraserError, instruction_settings, paraphrase_messages

DEFAULT_MODEL_PATH = "data/models/smollm2-135m-instruct"


def load_paraphrase_model(model_path: str | Path, revision: str | None = None, device: str = "cpu", dtype="auto"):
    """(tokenizer, model) from a Hugging Face checkpoint (a folder, or a hub id at ``revision``), in eval mode."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from mmcal.torch_device import resolve_device, resolve_dtype

    path = Path(model_path)
    if path.exists() or "/" not in str(model_path) or str(model_path).startswith(("data/", "/", ".")):
        if not (path / "config.json").exists():
            raise ParaphraserError(
                f"no model checkpoint at {path}: build it with mmcal.tinyllava.smollm2.convert_smollm2 "
                "(the workflow's models rule does this), or name a hub model"
            )
    device = resolve_device(device)
    try:
        tokenizer = AutoTokenizer.from_pretrained(str(model_path), revision=revision)
        model = AutoModelForCausalLM.from_pretrained(
            str(model_path), revision=revision, dtype=resolve_dtype(dtype, device)
        )
    except OSError as exc:
        raise ParaphraserError(f"paraphraser model {model_path} (revision {revision}): {exc}") from None
    model.to(device)
    model.eval()
    return tokenizer, model


class LocalLMParaphraser(Paraphraser):
    """A local chat LM, ``{kind: hf, model, revision, device, dtype}``: no network at search time (the download
    job puts a hub model in the cache first)."""

    kind = "hf"

    def __init__(
        self,
        model: str | Path,
        revision: str | None = None,
        device: str = "auto",
        dtype: str = "auto",
        temperature: float = 1.2,
        top_p: float = 0.95,
        max_new_tokens: int = 20,
        max_attempts: int = 3,
    ):
        self.model_path = model
        self.revision = revision
        self.device, self.dtype = device, dtype
        self.temperature = float(temperature)
        self.top_p = float(top_p)
        self.max_new_tokens = int(max_new_tokens)
        self.max_attempts = int(max_attempts)
        self._tokenizer = None
        self._model = None
        self.loads = 0  # how often the model was loaded (tests check replay loads nothing)

    def settings(self) -> dict:
        return {
            "model": str(self.model_path),
            "revision": self.revision,
            "temperature": self.temperature,
            "top_p": self.top_p,
            "max_new_tokens": self.max_new_tokens,
            **instruction_settings(),
        }

    def _ensure_loaded(self) -> None:
        if self._model is None:
            self._tokenizer, self._model = load_paraphrase_model(
                self.model_path, self.revision, self.device, self.dtype
            )
            self.loads += 1

    def sample(self, parent: str, sample_seed: int) -> str | None:
        import torch

        self._ensure_loaded()
        tok = self._tokenizer
        text = tok.apply_chat_template(paraphrase_messages(parent), add_generation_prompt=True, tokenize=False)
        inputs = tok(text, return_tensors="pt").to(self._model.device)
        # generate() in transformers 5.x takes no torch.Generator; seeding the global RNG inside
        # fork_rng gives the same reproducibility and leaves the caller's RNG state untouched.
        devices = [self._model.device] if self._model.device.type == "cuda" else []
        with torch.random.fork_rng(devices=devices), torch.no_grad():
            torch.manual_seed(sample_seed)
            out = self._model.generate(
                **inputs,
                max_new_tokens=self.max_new_tokens,
                do_sample=True,
                temperature=self.temperature,
                top_p=self.top_p,
                pad_token_id=tok.pad_token_id if tok.pad_token_id is not None else tok.eos_token_id,
            )
        new_tokens = out[0, inputs["input_ids"].shape[1] :]
        return tok.decode(new_tokens, skip_special_tokens=True)

    def close(self) -> None:
        self._tokenizer = self._model = None


class SmolLM2Paraphraser(LocalLMParaphraser):
    """The DAG's converted SmolLM2-135M-Instruct on the CPU (the default study, offline)."""

    kind = "smollm2"

    def __init__(
        self,
        model_path: str | Path = DEFAULT_MODEL_PATH,
        temperature: float = 1.2,
        top_p: float = 0.95,
        max_new_tokens: int = 20,
        max_attempts: int = 3,
    ):
        super().__init__(Path(model_path), None, "cpu", "float32", temperature, top_p, max_new_tokens, max_attempts)

    def settings(self) -> dict:
        # the folder name, not the full path (the same converted checkpoint may live elsewhere), and no revision:
        # the settings, so the cached paraphrases of earlier runs, stay as they were
        settings = {**super().settings(), "model": Path(self.model_path).name}
        del settings["revision"]
        return settings
