"""Loading options per model family (issue 13, points 3-5): trust_remote_code on every loading path,
the Qwen-VL-Chat adapter (driven by a labelled stand-in of its documented remote interface), the
image-processor backend chosen and recorded, and fingerprints from the files' contents."""

from __future__ import annotations

import hashlib
import json
import os
import re
import shutil
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pandas as pd
import pytest
import torch
from PIL import Image

from mmcal import hashing
from mmcal.engine import build as build_mod
from mmcal.engine import qwen_vl
from mmcal.engine.build import build_engine, engine_fingerprint
from mmcal.engine.job import score_to_records, shard_dir_for
from mmcal.engine.loading import load_model, model_fingerprint
from mmcal.engine.prompts import PromptVariant
from mmcal.engine.scenarios import Scenario
from mmcal.errors import ConfigError
from mmcal.items import MCItem, read_items, write_items


@pytest.fixture(autouse=True)
def _hash_cache(tmp_path, monkeypatch):
    monkeypatch.setenv(hashing.HASH_CACHE_ENV, str(tmp_path / "file_hashes.jsonl"))


def _image_items(folder: Path, n: int = 3) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    items = []
    for i in range(n):
        Image.new("RGB", (16, 16), (40 * i, 200 - 30 * i, 90)).save(folder / f"im{i}.png")
        items.append(
            MCItem(
                f"i{i}",
                f"i{i}",
                f"Which colour is {i}?",
                ["red", "green", "blue"],
                i % 3,
                "test",
                "toy",
                image=f"im{i}.png",
            )
        )
    write_items(items, folder / "items.jsonl")
    return folder / "items.jsonl"


def _score(entry, items, out, scenario=None, **kw):
    return score_to_records(
        "m",
        entry,
        "toy",
        items,
        out,
        scenario or Scenario(),
        PromptVariant(),
        readouts=["letter_restricted", "letter_full_vocab"],
        splits=["test"],
        device="cpu",
        dtype="float32",
        batch_size=2,
        progress=False,
        **kw,
    )


# ---- hashing ------------------------------------------------------------------------------------------
def test_file_hash_is_sha256_and_read_once_per_size_and_mtime(tmp_path, monkeypatch):
    f = tmp_path / "shard.bin"
    f.write_bytes(b"weights" * 1000)
    assert hashing.file_sha256(f) == hashlib.sha256(b"weights" * 1000).hexdigest()
    lines = Path(os.environ[hashing.HASH_CACHE_ENV]).read_text().splitlines()
    assert [json.loads(line)[0] for line in lines] == [str(f.resolve())]
    assert json.loads(lines[0])[1]["size"] == 7000

    def no_read(path):
        raise AssertionError(f"{path} read again")

    monkeypatch.setattr(hashing, "_sha256_of", no_read)
    assert hashing.file_sha256(f) == hashlib.sha256(b"weights" * 1000).hexdigest()
    monkeypatch.undo()
    monkeypatch.setenv(hashing.HASH_CACHE_ENV, str(tmp_path / "file_hashes.jsonl"))
    f.write_bytes(b"other" * 1000)
    assert hashing.file_sha256(f) == hashlib.sha256(b"other" * 1000).hexdigest()


def test_hash_cache_sees_other_jobs_entries_and_survives_damage(tmp_path, monkeypatch):
    """Entries another job appended are used; a damaged or half-written line
    costs only a re-hash; superseded lines are compacted away."""
    cache = Path(os.environ[hashing.HASH_CACHE_ENV])
    a, b = tmp_path / "a.bin", tmp_path / "b.bin"
    a.write_bytes(b"a" * 100)
    b.write_bytes(b"b" * 100)
    assert hashing.file_sha256(a) == hashlib.sha256(b"a" * 100).hexdigest()
    st = b.stat()
    entry = {"size": st.st_size, "mtime_ns": st.st_mtime_ns, "sha256": "f" * 64}  # a fake digest proves reuse
    with cache.open("a") as fh:  # what another job appends, a damaged line, a line still being written
        fh.write(json.dumps([str(b.resolve()), entry]) + "\nnot json\n7\n" + '["half')
    assert hashing.file_sha256(b) == "f" * 64
    monkeypatch.setattr(hashing, "_sha256_of", lambda path: pytest.fail(f"{path} read again"))
    assert hashing.file_sha256(a) == hashlib.sha256(b"a" * 100).hexdigest()
    monkeypatch.undo()
    monkeypatch.setenv(hashing.HASH_CACHE_ENV, str(cache))
    for i in range(3):  # rewrites: each re-hash appends a superseding line
        a.write_bytes(b"x" * (101 + i))
        assert hashing.file_sha256(a) == hashlib.sha256(b"x" * (101 + i)).hexdigest()
    view = hashing._caches[cache]
    view.compact()
    keys = [json.loads(line)[0] for line in cache.read_text().splitlines()]
    assert sorted(keys) == sorted([str(a.resolve()), str(b.resolve())])


def test_tree_hash_covers_every_file_and_name(tmp_path):
    a = tmp_path / "a"
    (a / "sub").mkdir(parents=True)
    (a / "x.json").write_text("{}")
    (a / "sub" / "w.safetensors").write_bytes(b"\0" * 10)
    expected = hashlib.sha256()
    for rel, data in (("sub/w.safetensors", b"\0" * 10), ("x.json", b"{}")):
        expected.update(f"{rel}\0{hashlib.sha256(data).hexdigest()}\n".encode())
    assert hashing.tree_sha256(a) == expected.hexdigest()
    b = tmp_path / "b"
    shutil.copytree(a, b)
    assert hashing.tree_sha256(b) == hashing.tree_sha256(a)  # where the folder lives does not matter
    (b / "sub" / "w.safetensors").write_bytes(b"\1" + b"\0" * 9)  # same size, other byte
    assert hashing.tree_sha256(b) != hashing.tree_sha256(a)


def test_hub_fingerprint_is_the_resolved_commit_and_the_small_files(tmp_path, monkeypatch):
    """A hub cache laid out as huggingface_hub lays it out; offline resolution of refs/main."""
    import huggingface_hub.constants as hc

    def snapshot(commit: str, config: str) -> None:
        repo = tmp_path / "hub" / "models--org--model"
        (repo / "refs").mkdir(parents=True, exist_ok=True)
        (repo / "refs" / "main").write_text(commit)
        snap = repo / "snapshots" / commit
        snap.mkdir(parents=True, exist_ok=True)
        (snap / "config.json").write_text(config)

    monkeypatch.setattr(hc, "HF_HUB_CACHE", str(tmp_path / "hub"))
    monkeypatch.setattr(hc, "HF_HUB_OFFLINE", True)
    snapshot("a" * 40, '{"model_type": "llava"}')
    first = model_fingerprint("org/model")
    assert first == model_fingerprint("org/model", "a" * 40)
    snapshot("b" * 40, '{"model_type": "llava"}')  # main moved to another commit: other weights
    second = model_fingerprint("org/model")
    assert second != first
    (tmp_path / "hub" / "models--org--model" / "snapshots" / ("b" * 40) / "config.json").write_text("{}")
    assert model_fingerprint("org/model") != second


def test_resume_refuses_shards_of_a_changed_local_model(tiny_llava_dir, tmp_path):
    ckpt = tmp_path / "ckpt"
    shutil.copytree(tiny_llava_dir, ckpt)
    items = _image_items(tmp_path / "data")
    out = tmp_path / "r.parquet"
    entry = {"path": str(ckpt)}
    _score(entry, items, out)
    before = pd.read_parquet(out)
    shards = shard_dir_for(out)
    shards.mkdir()
    before.to_parquet(shards / "shard-00000.parquet")
    (ckpt / "generation_config.json").write_text(json.dumps({"note": "changed"}))  # any file changes it
    assert engine_fingerprint("m", entry) != before["model_fingerprint"].iloc[0]
    stats = _score(entry, items, out)
    assert stats["resumed"] == 0 and stats["scored_now"] == 3


# ---- image-processor backend -------------------------------------------------------------------------
def _torchvision_imports() -> bool:
    """torchvision imports in .venv-families (and on a GPU machine), not in .venv: PyPI's wheel does not load
    beside the local CPU torch build (pyproject.toml, the families extra)."""
    try:
        import torchvision  # noqa: F401
    except Exception:
        return False
    return True


TORCHVISION = _torchvision_imports()
needs_torchvision = pytest.mark.skipif(
    not TORCHVISION, reason="torchvision does not import here: run in .venv-families"
)
without_torchvision = pytest.mark.skipif(TORCHVISION, reason="torchvision imports here: its backend works")


def test_backend_is_explicit_checked_and_recorded(tiny_llava_dir, tmp_path):
    lm = load_model("tiny", str(tiny_llava_dir), device="cpu", dtype="float32")
    assert lm.image_processor_backend == "pil"
    assert lm.processor.image_processor.backend == "pil"
    with pytest.raises(ConfigError, match="'fast' is not one of pil, torchvision"):
        load_model("tiny", str(tiny_llava_dir), image_processor_backend="fast")
    fp = engine_fingerprint("m", {"path": str(tiny_llava_dir)})
    assert fp.endswith("/pil")
    assert engine_fingerprint("m", {"path": str(tiny_llava_dir), "image_processor_backend": "torchvision"}) == (
        fp[:-3] + "torchvision"
    )
    assert "/" not in engine_fingerprint("m", {"path": str(tiny_llava_dir), "kind": "llm"})


@without_torchvision
def test_torchvision_backend_is_refused_where_it_cannot_import(tiny_llava_dir):
    from mmcal.data import describe

    with pytest.raises(ConfigError, match="image_processor_backend: torchvision requested but it cannot be imported"):
        load_model("tiny", str(tiny_llava_dir), image_processor_backend="torchvision")
    with pytest.raises(ConfigError, match="torchvision requested"):
        describe.CaptionDescriber("org/captioner", image_processor_backend="torchvision")._load()


@needs_torchvision
def test_torchvision_backend_loads_scores_and_is_recorded(tiny_llava_dir, tmp_path):
    """``image_processor_backend: torchvision``: the processor runs on torchvision, its pixels are PIL's up to
    resampling differences, and the records name the backend (a fingerprint of their own)."""
    pil = load_model("tiny", str(tiny_llava_dir), device="cpu", dtype="float32")
    tv = load_model("tiny", str(tiny_llava_dir), device="cpu", dtype="float32", image_processor_backend="torchvision")
    assert tv.image_processor_backend == "torchvision" and tv.processor.image_processor.backend == "torchvision"
    image = Image.new("RGB", (40, 30), (200, 40, 90))
    a = pil.processor.image_processor(image, return_tensors="pt")["pixel_values"]
    b = tv.processor.image_processor(image, return_tensors="pt")["pixel_values"]
    assert a.shape == b.shape and torch.allclose(a, b, atol=0.05)
    items = _image_items(tmp_path / "data")
    entry = {"path": str(tiny_llava_dir), "image_processor_backend": "torchvision"}
    stats = _score(entry, items, tmp_path / "tv.parquet")
    df = pd.read_parquet(tmp_path / "tv.parquet")
    assert stats["ok"] == 3 and (df["status"] == "ok").all()
    assert set(df["model_fingerprint"]) == {engine_fingerprint("m", entry)}
    assert engine_fingerprint("m", entry).endswith("/torchvision")


def test_shards_of_another_backend_are_not_mixed(tiny_llava_dir, tmp_path):
    items = _image_items(tmp_path / "data")
    out = tmp_path / "r.parquet"
    entry = {"path": str(tiny_llava_dir)}
    _score(entry, items, out)
    df = pd.read_parquet(out)
    assert set(df["model_fingerprint"].str.split("/").str[1]) == {"pil"}  # records say which backend
    shards = shard_dir_for(out)
    shards.mkdir()
    other = df.assign(model_fingerprint=df["model_fingerprint"].str.replace("/pil", "/torchvision"))
    other.to_parquet(shards / "shard-00000.parquet")
    stats = _score(entry, items, out)
    assert stats["resumed"] == 0 and stats["scored_now"] == 3
    pd.testing.assert_frame_equal(pd.read_parquet(out), df)


# ---- trust_remote_code everywhere -------------------------------------------------------------------
def test_trust_remote_code_reaches_every_from_pretrained(tiny_llava_dir, monkeypatch):
    import transformers

    seen = []
    for cls in ("AutoConfig", "AutoProcessor", "AutoModelForImageTextToText"):
        real = getattr(transformers, cls).from_pretrained

        def spy(*a, _real=real, _cls=cls, **kw):
            seen.append((_cls, kw.get("trust_remote_code"), kw.get("backend")))
            return _real(*a, **kw)

        monkeypatch.setattr(getattr(transformers, cls), "from_pretrained", spy)
    load_model("tiny", str(tiny_llava_dir), trust_remote_code=True)
    assert {c for c, _, _ in seen} == {"AutoConfig", "AutoProcessor", "AutoModelForImageTextToText"}
    assert all(t is True for _, t, _ in seen)  # the processor's own nested config loads too
    assert [b for c, _, b in seen if c == "AutoProcessor"] == ["pil"]


@pytest.fixture
def load_calls(monkeypatch):
    """The keyword arguments every engine build loads with (the real loader still runs)."""
    calls = []
    real = build_mod.load_model

    def spy(*a, **kw):
        calls.append(kw)
        return real(*a, **kw)

    monkeypatch.setattr(build_mod, "load_model", spy)
    return calls


def test_scoring_prompt_search_and_cli_pass_trust_remote_code(tiny_llava_dir, tmp_path, load_calls, mmcal_cli):
    from mmcal.promptopt.job import search_engine

    main = mmcal_cli

    items = _image_items(tmp_path / "data", n=2)
    entry = {"path": str(tiny_llava_dir), "trust_remote_code": True}
    _score(entry, items, tmp_path / "a.parquet")
    search_engine("m", entry, device="cpu", dtype="float32", batch_size=1, image_root=tmp_path)
    main(
        [
            "score",
            "--model-path",
            str(tiny_llava_dir),
            "--items",
            str(items),
            "--out",
            str(tmp_path / "c.parquet"),
            "--splits",
            "test",
            "--readouts",
            "letter_restricted",
            "--device",
            "cpu",
            "--trust-remote-code",
        ]
    )
    main(
        [
            "score",
            "--model-path",
            str(tiny_llava_dir),
            "--items",
            str(items),
            "--out",
            str(tmp_path / "d.parquet"),
            "--splits",
            "test",
            "--readouts",
            "letter_restricted",
            "--device",
            "cpu",
        ]
    )
    assert [c["trust_remote_code"] for c in load_calls] == [True, True, True, False]
    assert {c["image_processor_backend"] for c in load_calls} == {"pil"}


def test_describer_passes_its_loading_keys(monkeypatch, tmp_path):
    import transformers

    from mmcal.data import describe

    seen = {}

    class Stop(Exception):
        pass

    def spy(path, **kw):
        seen.update(kw)
        raise Stop

    monkeypatch.setattr(transformers.AutoProcessor, "from_pretrained", spy)
    cap = describe.CaptionDescriber("org/captioner", trust_remote_code=True, revision="abc")
    with pytest.raises(Stop):
        cap._load()
    assert seen == {"backend": "pil", "revision": "abc", "trust_remote_code": True}


# ---- Qwen-VL-Chat and Qwen-7B adapters --------------------------------------------------------------------
# Stand-ins of the remote interface of Qwen-VL-Chat / Qwen-7B (tokenization_qwen.py and modeling_qwen.py of
# x1ngzai/Qwen-VL-Chat-Int4@1cd721a2 and zhangningboo/Qwen-7B@ffe04dd; not copied). NOT the remote code. The
# tokenizers are either a byte stand-in or the replicas of tests/replicas/qwen_remote.py, whose ids equal the real
# remote tokenizers' (tests/oracles/test_oracle_qwen_tokenizer.py).
SPECIALS = ["<|endoftext|>", "<|im_start|>", "<|im_end|>", *(f"<|extra_{i}|>" for i in range(205))]
SPECIALS += ["<ref>", "</ref>", "<box>", "</box>", "<quad>", "</quad>", "<img>", "</img>", "<imgpad>"]
N_RANKS = 151643


def _replica_tokenizer(vl: bool = True, list_format_space: bool = True):
    import build
    import qwen_remote

    try:
        return qwen_remote.replica(vl=vl, list_format_space=list_format_space)
    except build.ReplicaMissing as exc:
        pytest.skip(f"replica sources not fetched: {exc}")


class StandInQwenTokenizer:
    """Stand-in of QWenTokenizer's documented behaviour with a stand-in vocabulary (one id per byte): specials
    numbered from 151643, ``<img>PATH</img>`` becoming <img>, the path's bytes as ids, <imgpad> up to 256, </img>.
    It has no from_list_format: the adapter then writes the text itself."""

    bos_token = None

    def __init__(self):
        self.special = {s: N_RANKS + i for i, s in enumerate(SPECIALS)}
        self.img_start_id, self.img_end_id, self.img_pad_id = (self.special[t] for t in ("<img>", "</img>", "<imgpad>"))
        self.eod_id = self.special["<|endoftext|>"]

    def encode(self, text: str) -> list[int]:
        ids = []
        for piece in re.split(r"(<img>.*?</img>)", text):
            if piece.startswith("<img>") and piece.endswith("</img>"):
                url = list(piece[5:-6].encode("utf-8"))
                if len(url) > 256:
                    raise ValueError("The content in <img>..</img> is too long")
                ids += [self.img_start_id, *url, *[self.img_pad_id] * (256 - len(url)), self.img_end_id]
            elif piece:
                ids += list(piece.encode("utf-8"))
        return ids

    def __call__(self, text, add_special_tokens=True, return_tensors=None):
        texts = [text] if isinstance(text, str) else text
        ids = [self.encode(t) for t in texts]
        if return_tensors == "pt":
            ids = torch.tensor(ids)
            return {"input_ids": ids, "attention_mask": torch.ones_like(ids)}
        out = ids[0] if isinstance(text, str) else ids
        return {"input_ids": out, "attention_mask": [[1] * len(i) for i in ids]}


class StandInQwenVLModel(torch.nn.Module):
    """Stand-in of QWenLMHeadModel's documented forward: reads each image path from input_ids between
    <img> and the first <imgpad>, opens the file, puts its (here: 8-number) features on the 256
    positions after <img>. Its forward takes no ``logits_to_keep`` and no cache objects, like the real one."""

    def __init__(self):
        super().__init__()
        self.config = SimpleNamespace(
            model_type="qwen", visual={"image_start_id": 151857}, max_position_embeddings=8192
        )
        with torch.random.fork_rng(devices=[]):  # seeded weights; the global generator left as it was
            torch.manual_seed(0)
            self.wte = torch.nn.Embedding(151936, 8)
            self.visual = torch.nn.Linear(3, 8)
            self.lm_head = torch.nn.Linear(8, 151936)
        self.opened: list[str] = []

    @property
    def dtype(self):
        return torch.float32

    def forward(
        self,
        input_ids=None,
        past_key_values=None,
        attention_mask=None,
        token_type_ids=None,
        position_ids=None,
        head_mask=None,
        inputs_embeds=None,
        use_cache=None,
        return_dict=None,
    ):
        start = self.config.visual["image_start_id"]
        emb = self.wte(input_ids)
        for b, row in enumerate(input_ids.tolist()):
            for a, e in qwen_vl.image_spans(row):
                inner = row[a + 1 : e - 1]  # as modeling_qwen.py reads it: input_ids[a + 1 : b - 1], up to <imgpad>
                path = bytes(inner[: inner.index(start + 2)]).decode("utf-8")
                self.opened.append(path)
                with Image.open(path) as im:
                    pixels = torch.tensor(np.asarray(im.convert("RGB")), dtype=torch.float32).mean((0, 1)) / 255
                emb[b, a + 1 : e] = self.visual(pixels)
        causal = emb.cumsum(1) / torch.arange(1, emb.shape[1] + 1)[None, :, None]
        return SimpleNamespace(logits=self.lm_head(torch.tanh(causal)))


def test_reference_prompt_is_from_list_format_then_the_text():
    messages = [{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": "Q?\n(A) x"}]}]
    assert qwen_vl.reference_prompt(messages, ["/d/im.png"]) == "Picture 1: <img>/d/im.png</img>\nQ?\n(A) x"
    system = [{"role": "system", "content": [{"type": "text", "text": "S."}]}] + messages
    assert qwen_vl.reference_prompt(system, ["p"]) == "S.\nPicture 1: <img>p</img>\nQ?\n(A) x"
    assert qwen_vl.reference_prompt(messages, ["p"], lambda parts: repr(parts)) == repr(
        [{"image": "p"}, {"text": "Q?\n(A) x"}]
    )


def test_real_qwen_ids_letters_and_image_span():
    """With the replica of the real tokenizer: letters A-E are single tokens after "Answer: (", and the image span
    is 258 ids (<img>, 256 positions, </img>) that the model reads back."""
    tok = _replica_tokenizer()
    head = tok.encode("Please provide the option letter directly.\nAnswer: (")
    for k, letter in enumerate("ABCDE"):
        full = tok.encode("Please provide the option letter directly.\nAnswer: (" + letter)
        assert full[: len(head)] == head and full[len(head) :] == [32 + k]  # byte-level ranks: "A" = 65 - 33
    ids = tok.encode(tok.from_list_format([{"image": "/tmp/a.png"}, {"text": "Q"}]))
    s, e = qwen_vl.image_spans(ids)[0]
    assert (ids[s], ids[e], e - s - 1) == (151857, 151858, 256)
    assert qwen_vl.path_in_ids(ids, s, e) == "/tmp/a.png"


def _load_stand_ins(monkeypatch, tok, model, seen: list | None = None):
    """The stand-ins in place of the remote tokenizer and of the remote model as ``qwen_remote_compat`` loads it
    (its fixes and checks are tested on their own in tests/test_qwen_remote_compat.py)."""
    import transformers

    from mmcal.engine import qwen_remote_compat

    def tokenizer_from(path, **kw):
        if seen is not None:
            seen.append(kw["trust_remote_code"])
        return tok

    def model_from(name, path, revision, dtype):
        if seen is not None:
            seen.append(True)  # load_causal_lm runs the remote code (trust_remote_code=True)
        return model, []

    monkeypatch.setattr(transformers.AutoTokenizer, "from_pretrained", tokenizer_from)
    monkeypatch.setattr(qwen_remote_compat, "load_causal_lm", model_from)


def _letter_logprobs(model, tok, text: str, n: int):
    """Independent computation: the reference's whole text tokenised at once, last-position letter logits."""
    with torch.no_grad():
        logits = model(input_ids=torch.tensor([tok.encode(text)])).logits[0, -1]
    letters = [tok.encode("Answer: (" + c)[-1] for c in "ABCDE"[:n]]
    return (
        torch.log_softmax(logits[letters].double(), -1).tolist(),
        torch.log_softmax(logits.double(), -1)[letters].tolist(),
    )


@pytest.mark.parametrize("tokenizer", ["byte stand-in", "replica", "replica, GitHub upload's from_list_format"])
def test_adapter_scores_through_the_engine_with_a_stand_in_model(tmp_path, monkeypatch, tokenizer):
    if tokenizer == "byte stand-in":
        tok = StandInQwenTokenizer()  # no from_list_format: the adapter writes "Picture 1: <img>" itself
    else:
        tok = _replica_tokenizer(list_format_space=tokenizer == "replica")
    model = StandInQwenVLModel()
    seen = []
    _load_stand_ins(monkeypatch, tok, model, seen)
    ckpt = tmp_path / "qwen-vl-chat"
    ckpt.mkdir()
    (ckpt / "config.json").write_text("{}")
    items = _image_items(tmp_path / "data")
    entry = {"path": str(ckpt), "adapter": "qwen-vl-chat"}
    with pytest.raises(ConfigError, match="trust_remote_code: true"):
        _score(entry, items, tmp_path / "x.parquet")
    entry["trust_remote_code"] = True
    stats = _score(entry, items, tmp_path / "r.parquet")
    assert stats["ok"] == 3 and seen == [True, True]
    df = pd.read_parquet(tmp_path / "r.parquet")
    assert "/" not in df["model_fingerprint"].iloc[0]  # no image processor: the model reads the file
    assert model.opened == [str((tmp_path / "data" / f"im{i}.png").resolve()) for i in range(3)]
    tag = "Picture 1:<img>" if tokenizer.endswith("from_list_format") else "Picture 1: <img>"  # the tokenizer's own
    for i in range(3):
        path = str((tmp_path / "data" / f"im{i}.png").resolve())
        text = (
            f"{tag}{path}</img>\nWhich colour is {i}?\n(A) red\n(B) green\n(C) blue\n"
            "Please provide the option letter directly.\nAnswer: ("
        )
        restricted, full = _letter_logprobs(model, tok, text, 3)
        row = df[(df["item_id"] == f"i{i}") & (df["readout"] == "letter_restricted")].iloc[0]
        assert row["option_scores"] == pytest.approx(restricted, abs=1e-5)
        row = df[(df["item_id"] == f"i{i}") & (df["readout"] == "letter_full_vocab")].iloc[0]
        assert row["option_scores"] == pytest.approx(full, abs=1e-5)


class StandInQwenLM(StandInQwenVLModel):
    """Stand-in of Qwen-7B's QWenLMHeadModel: the same forward, no visual part (config without ``visual``)."""

    def __init__(self):
        super().__init__()
        self.config = SimpleNamespace(model_type="qwen", max_position_embeddings=8192)

    def forward(self, input_ids=None, **kwargs):
        assert not qwen_vl.image_spans(input_ids[0].tolist()), "an LLM is given image ids"
        emb = self.wte(input_ids)
        causal = emb.cumsum(1) / torch.arange(1, emb.shape[1] + 1)[None, :, None]
        return SimpleNamespace(logits=self.lm_head(torch.tanh(causal)))


def test_qwen_lm_adapter_scores_qwen7b_text_only(tmp_path, monkeypatch):
    """Qwen-7B through adapter qwen-lm: its remote interface (stand-in model, replica tokenizer), the text the
    text-only Qwen-VL-Chat sees, scores equal to an independent computation."""
    tok, model = _replica_tokenizer(vl=False), StandInQwenLM()
    seen = []
    _load_stand_ins(monkeypatch, tok, model, seen)
    (tmp_path / "ckpt").mkdir()
    items = _image_items(tmp_path / "data")
    entry = {"path": str(tmp_path / "ckpt"), "adapter": "qwen-lm", "trust_remote_code": True, "kind": "llm"}
    with pytest.raises(ConfigError, match="no chat template of its own"):  # the raw prompt must be asked for
        _score(entry, items, tmp_path / "x.parquet", scenario=Scenario("text", image=False))
    entry["chat_template"] = "raw"
    with pytest.raises(ConfigError, match="adapter qwen-lm is a text LLM"):
        _score({**entry, "kind": "mllm"}, items, tmp_path / "x.parquet", scenario=Scenario("text", image=False))
    stats = _score(entry, items, tmp_path / "r.parquet", scenario=Scenario("text", image=False))
    assert stats["ok"] == 3 and seen == [True, True]
    df = pd.read_parquet(tmp_path / "r.parquet")
    assert "/" not in df["model_fingerprint"].iloc[0]
    for i in range(3):
        text = (
            f"Which colour is {i}?\n(A) red\n(B) green\n(C) blue\nPlease provide the option letter directly.\nAnswer: ("
        )
        restricted, full = _letter_logprobs(model, tok, text, 3)
        row = df[(df["item_id"] == f"i{i}") & (df["readout"] == "letter_restricted")].iloc[0]
        assert row["option_scores"] == pytest.approx(restricted, abs=1e-5)
        row = df[(df["item_id"] == f"i{i}") & (df["readout"] == "letter_full_vocab")].iloc[0]
        assert row["option_scores"] == pytest.approx(full, abs=1e-5)


def test_qwen_lm_and_qwen_vl_chat_see_the_same_text_only_prompt(tmp_path, monkeypatch):
    """Base LLM vs MLLM, text only: both engines render and tokenise the item identically."""
    items = read_items(_image_items(tmp_path / "data", n=1))
    scenario = Scenario("text", image=False)
    (tmp_path / "ckpt").mkdir()
    out = {}
    for adapter, vl, model in (("qwen-lm", False, StandInQwenLM()), ("qwen-vl-chat", True, StandInQwenVLModel())):
        tok = _replica_tokenizer(vl=vl)
        _load_stand_ins(monkeypatch, tok, model)
        entry = {"path": str(tmp_path / "ckpt"), "adapter": adapter, "trust_remote_code": True, "chat_template": "raw"}
        engine = build_engine(
            adapter,
            entry,
            device="cpu",
            dtype="float32",
            prompt=PromptVariant(),
            readouts=["letter_restricted"],
            batch_size=1,
            image_root=tmp_path / "data",
        )
        enc = engine.encode(0, items[0], scenario)
        out[adapter] = (engine.render(items[0], scenario), enc.prefix_ids)
    assert out["qwen-lm"] == out["qwen-vl-chat"]
    assert out["qwen-lm"][0].endswith("Please provide the option letter directly.\nAnswer: (")


def _image_at(folder: Path, n_bytes: int) -> Path:
    """A small PNG at an absolute path of exactly ``n_bytes`` UTF-8 bytes, under directories of <= 200 bytes."""
    base = folder.resolve()
    pad = n_bytes - len(str(base).encode()) - len("/im.png")  # bytes of the "name/" directory segments
    assert pad == 0 or pad >= 2
    parts = []
    while pad > 0:
        take = min(pad - 1, 200)
        if pad - (take + 1) == 1:  # never leave one byte: no directory name is empty
            take -= 1
        parts.append("d" * take)
        pad -= take + 1
    path = base.joinpath(*parts, "im.png")
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.new("RGB", (16, 16), (10, 200, 30)).save(path)
    assert len(str(path).encode()) == n_bytes
    return path


def test_adapter_records_image_paths_the_model_cannot_read(tmp_path, monkeypatch):
    """A path of 254 bytes is scored; 255 bytes (the model's slice misses the only <imgpad>) and a name not in NFC
    (the tokenizer normalises it, the model would open another file) are unscorable rows, and the job goes on."""
    model = StandInQwenVLModel()
    _load_stand_ins(monkeypatch, StandInQwenTokenizer(), model)
    items = _image_items(tmp_path / "data", n=1)
    root = items.parent
    nfd = root / "cafe\u0301.png"  # "é" as e + combining accent
    shutil.copy(root / "im0.png", nfd)
    extra = []
    for name, path in (("b254", _image_at(root / "a", 254)), ("b255", _image_at(root / "b", 255)), ("nfd", nfd)):
        extra.append(MCItem(name, name, "Which?", ["a", "b"], 0, "test", "toy", image=str(path.relative_to(root))))
    write_items([*read_items(items), *extra], items)
    (tmp_path / "ckpt").mkdir()
    entry = {"path": str(tmp_path / "ckpt"), "adapter": "qwen-vl-chat", "trust_remote_code": True}
    stats = _score(entry, items, tmp_path / "r.parquet", max_unscorable=0.0)
    assert (stats["ok"], stats["unscorable"]) == (2, 2)
    df = pd.read_parquet(tmp_path / "r.parquet").set_index("item_id")
    assert df.loc["b254", "status"].iloc[0] == "ok"
    assert [len(p.encode()) for p in model.opened if "/a/" in p] == [254]
    assert df.loc["b255", "status"].iloc[0] == "prompt too long: image path of 255 bytes, Qwen-VL reads at most 254"
    assert df.loc["nfd", "status"].iloc[0].startswith("image unreadable:")
    assert "NFC" in df.loc["nfd", "status"].iloc[0]


def test_adapter_takes_only_the_reference_prompt(tmp_path):
    with pytest.raises(ConfigError, match="raw prompt only"):
        qwen_vl.QwenVLEngine(SimpleNamespace(name="q"), PromptVariant(), chat_format=None)
    with pytest.raises(ConfigError, match="adapter: 'qwen-vl' is not one of qwen-vl-chat"):
        build_engine(
            "q",
            {"path": str(tmp_path), "adapter": "qwen-vl", "chat_template": "raw"},
            device="cpu",
            dtype="float32",
            prompt=PromptVariant(),
            readouts=["letter_restricted"],
            batch_size=1,
            image_root=tmp_path,
        )
