"""mmcal.hub.qwen_font: the SimSun.ttf that later Qwen-VL-Chat tokenizers fetch when imported.

The real tokenizer is remote code (not in CI): STAND_IN_TOKENIZER below is a labelled stand-in of its import-time
behaviour (look the font up in the HF cache as Qwen/Qwen-VL-Chat's file at main, else ./SimSun.ttf, else download),
written for these tests; which real revisions do it: docs/qwen-remote-code.md. The hub is not reachable here:
``hf_hub_download`` is replaced by a stand-in that writes the cache as the hub client does.
"""

from __future__ import annotations

import hashlib
import runpy

import huggingface_hub
import pytest
from huggingface_hub import constants

from mmcal.errors import DataError
from mmcal.hub import download, qwen_font

# STAND-IN (written for these tests; NOT Qwen's code) of what a later tokenization_qwen.py does when imported
STAND_IN_TOKENIZER = """
import os
from transformers.utils import try_to_load_from_cache

FONT = try_to_load_from_cache("Qwen/Qwen-VL-Chat", "SimSun.ttf")
if FONT is None:
    if not os.path.exists("SimSun.ttf"):
        raise ConnectionError("stand-in: here the real tokenizer downloads SimSun.ttf with requests")
    FONT = "SimSun.ttf"


class StandInTokenizer:
    def draw(self):
        return try_to_load_from_cache("Qwen/Qwen-VL-Chat", "SimSun.ttf")
"""
# STAND-IN of the GitHub upload's way (x1ngzai/Qwen-VL-Chat-Int4@1cd721a2): the lookup only when drawing
LOOKUP_WHEN_DRAWING = """
from transformers.utils import try_to_load_from_cache


class StandInTokenizer:
    def draw(self):
        return try_to_load_from_cache("Qwen/Qwen-VL-Chat", "SimSun.ttf")
"""
SHA = "f" * 40


@pytest.fixture
def hub_cache(tmp_path, monkeypatch):
    """An empty HF cache and working directory; the hub offline."""
    cache = tmp_path / "hub"
    cache.mkdir()
    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(cache))
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", True)
    work = tmp_path / "work"
    work.mkdir()
    monkeypatch.chdir(work)
    return cache


def _cache_font(cache, content=b"font bytes"):
    """The font as the hub client caches Qwen/Qwen-VL-Chat's SimSun.ttf at main."""
    repo = cache / "models--Qwen--Qwen-VL-Chat"
    (repo / "refs").mkdir(parents=True)
    (repo / "refs" / "main").write_text(SHA)
    snapshot = repo / "snapshots" / SHA
    snapshot.mkdir(parents=True)
    (snapshot / "SimSun.ttf").write_bytes(content)
    return snapshot / "SimSun.ttf"


def _tokenizer_file(folder, text=STAND_IN_TOKENIZER):
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "tokenization_qwen.py").write_text(text)
    return folder / "tokenization_qwen.py"


def test_detects_the_fetch_at_import_only(tmp_path):
    assert qwen_font.fetches_font_on_import(_tokenizer_file(tmp_path / "a"))
    assert not qwen_font.fetches_font_on_import(_tokenizer_file(tmp_path / "b", LOOKUP_WHEN_DRAWING))


def test_check_font_fails_offline_exactly_when_the_tokenizer_import_would(hub_cache, tmp_path):
    tok = _tokenizer_file(tmp_path / "model")
    with pytest.raises(ConnectionError, match="stand-in"):
        runpy.run_path(str(tok))
    with pytest.raises(DataError, match=r"model 'qwen-vl-chat': .*downloads SimSun.ttf .*hf download Qwen/Qwen-VL"):
        qwen_font.check_font("qwen-vl-chat", tok)
    assert qwen_font.check_font("qwen-vl-chat", _tokenizer_file(tmp_path / "m2", LOOKUP_WHEN_DRAWING)) is None
    assert qwen_font.check_font("qwen-vl-chat", None) is None  # no tokenizer file: nothing to check

    (hub_cache.parent / "work" / "SimSun.ttf").write_bytes(b"x")  # the tokenizer's second place: ./SimSun.ttf
    assert qwen_font.check_font("qwen-vl-chat", tok) is None
    assert runpy.run_path(str(tok))["FONT"] == "SimSun.ttf"
    (hub_cache.parent / "work" / "SimSun.ttf").unlink()

    cached = _cache_font(hub_cache)
    assert qwen_font.check_font("qwen-vl-chat", tok) is None
    assert runpy.run_path(str(tok))["FONT"] == str(cached)


def test_online_the_font_is_fetched_into_the_cache_not_the_working_directory(hub_cache, tmp_path, monkeypatch):
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", False)
    asked = []

    def hub_download(repo_id, filename):  # STAND-IN of the hub client: caches the file at main
        asked.append((repo_id, filename))
        return str(_cache_font(hub_cache, b"simsun"))

    monkeypatch.setattr(huggingface_hub, "hf_hub_download", hub_download)
    record = qwen_font.check_font("qwen-vl-chat", _tokenizer_file(tmp_path / "model"))
    assert asked == [("Qwen/Qwen-VL-Chat", "SimSun.ttf")]
    assert record["commit"] == SHA and record["revision"] == "main"
    assert record["sha256"] == hashlib.sha256(b"simsun").hexdigest()
    assert not (hub_cache.parent / "work" / "SimSun.ttf").exists()
    assert runpy.run_path(str(tmp_path / "model" / "tokenization_qwen.py"))["FONT"] == record["path"]


def test_the_download_rule_records_the_font_with_the_model(hub_cache, tmp_path):
    folder = tmp_path / "qwen-vl-chat"
    _tokenizer_file(folder)
    source = {"key": "models.qwen-vl-chat", "type": "model", "path": str(folder), "revision": None}
    with pytest.raises(DataError, match="Qwen/Qwen-VL-Chat/SimSun.ttf .* is not in the HF cache"):
        download.resolve(source, offline=True)
    _cache_font(hub_cache, b"simsun")
    record = download.resolve(source, offline=True)
    assert record["font"]["commit"] == SHA and record["font"]["file"] == "SimSun.ttf"
    plain = tmp_path / "qwen-7b"
    _tokenizer_file(plain, LOOKUP_WHEN_DRAWING)
    assert "font" not in download.resolve({**source, "path": str(plain)}, offline=True)
