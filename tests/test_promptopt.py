"""Prompt search: ranking, the loop, the paraphrasers (rule, SmolLM2, OpenAI-compatible) and the
candidate cache that makes a rerun need neither a model nor an API."""

from __future__ import annotations

import hashlib
import json
import math
import os
import socket
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import numpy as np
import pytest

from mmcal.errors import ConfigError
from mmcal.promptopt import (
    CandidateCache,
    OpenAIParaphraser,
    ParaphraserError,
    RuleParaphraser,
    SearchError,
    SearchResult,
    SmolLM2Paraphraser,
    accuracy_band,
    make_paraphraser,
    propose_paraphrases,
    rank_key,
    run_search,
    smollm2_paraphraser,
)
from mmcal.promptopt.text import clean_candidate, is_acceptable

os.environ.setdefault("HF_HUB_OFFLINE", "1")
REPO = Path(__file__).resolve().parents[1]
SEEDS = ["The answer might be", "The answer must be"]


def _hash_unit(text: str, salt: str) -> float:
    digest = hashlib.sha256(f"{salt}:{text}".encode()).digest()
    return int.from_bytes(digest[:8], "big") / 2**64


class SyntheticScorer:
    """A deterministic stand-in for the scoring engine; records every batch it is asked for."""

    def __init__(self):
        self.batches: list[list[str]] = []

    def __call__(self, texts: list[str]) -> list[dict]:
        self.batches.append(list(texts))
        return [
            {
                "accuracy": round(_hash_unit(t, "acc"), 3),
                "ece_10": round(_hash_unit(t, "ece"), 3),
                "n": 50,
            }
            for t in texts
        ]


class CountingRule(RuleParaphraser):
    def __init__(self):
        self.samples = 0

    def sample(self, parent, sample_seed):
        self.samples += 1
        return super().sample(parent, sample_seed)


# ---------------------------------------------------------------- ranking and text checks


def test_accuracy_band_edges():
    assert [accuracy_band(a) for a in (0.0, 0.1999, 0.2, 0.4, 0.6, 0.8, 1.0)] == [
        0,
        0,
        1,
        2,
        3,
        4,
        5,
    ]
    assert accuracy_band(0.5, width=0.25) == 2


def test_ranking_is_band_then_ece_then_text():
    scores = {
        "a": (0.61, 0.30),  # band 3, poor ECE
        "b": (0.79, 0.10),  # band 3
        "c": (0.95, 0.40),  # band 4: wins despite the worst ECE
        "d": (0.60, 0.10),  # band 3 (edge), same ECE as b but lower accuracy
        "e": (0.79, 0.10),  # identical scores to b: text decides
    }
    ordered = sorted(scores, key=lambda t: rank_key(t, *scores[t]))
    assert ordered == ["c", "b", "e", "d", "a"]

    result = run_search(
        list(scores),
        RuleParaphraser(),
        lambda texts: [{"accuracy": scores[t][0], "ece_10": scores[t][1]} for t in texts],
        rounds=0,
        m=1,
        k=2,
    )
    assert [c.text for c in result.round(0)] == ordered
    assert [c.survived for c in result.round(0)] == [True, True, False, False, False]
    assert [c.band for c in result.round(0)] == [4, 3, 3, 3, 3]
    assert result.best_prompt == "c"


def test_clean_and_accept_candidates():
    assert clean_candidate('"The reply may be."\nmore text') == "The reply may be"
    assert clean_candidate("Paraphrase: 'Perhaps the answer is',") == "Perhaps the answer is"
    assert clean_candidate("  \n ") is None
    taken = {"the answer might be"}
    assert not is_acceptable("The Answer might be", taken)  # same after normalising
    assert not is_acceptable("What is the answer?", taken)
    assert not is_acceptable("The answer (A) is", taken)
    assert not is_acceptable(" ".join(["word"] * 13), taken)
    assert is_acceptable("The answer may well be", taken)


# ---------------------------------------------------------------- the loop with the rule mutator


def test_rule_paraphraser_gives_m_distinct_new_candidates():
    p = RuleParaphraser()
    out = propose_paraphrases(p, "The answer might be", m=5, round_index=1, seed=3)
    texts = [g.text for g in out]
    assert len(texts) == 5 and len({t.lower() for t in texts}) == 5
    assert "The answer might be" not in texts and all(g.source == "rule" for g in out)
    assert propose_paraphrases(p, "The answer might be", 5, 1, 3) == out  # seeded
    assert propose_paraphrases(p, "The answer might be", 5, 1, 4) != out


def test_search_trajectory_ranking_and_survival(tmp_path):
    scorer = SyntheticScorer()
    rounds, m, k = 3, 3, 2
    result = run_search(SEEDS, {"kind": "rule"}, scorer, rounds, m, k, seed=11, cache=tmp_path / "c")

    assert {c.text for c in result.round(0)} == set(SEEDS)
    assert all(c.source == "seed" and c.parent is None for c in result.round(0))
    scored = {}
    for r in range(rounds + 1):
        cands = result.round(r)
        assert [c.rank for c in cands] == list(range(1, len(cands) + 1))
        assert cands == sorted(cands, key=lambda c: rank_key(c.text, c.accuracy, c.ece_10))
        assert [c.survived for c in cands] == [c.rank <= k for c in cands]
        if r > 0:
            previous = [c.text for c in result.round(r - 1) if c.survived]
            texts = [c.text for c in cands]
            assert set(previous) <= set(texts)
            new = [c for c in cands if c.text not in previous]
            assert new and all(c.source == "rule" and c.parent in previous for c in new)
            assert len(new) <= m * len(previous)
        for c in cands:
            scored[c.text] = (c.accuracy, c.ece_10)
            assert c.band == accuracy_band(c.accuracy) and c.metrics == {"n": 50}

    # Each distinct text scored exactly once, in one batch per round at most.
    flat = [t for batch in scorer.batches for t in batch]
    assert len(flat) == len(set(flat)) == result.n_scored == len(scored)
    assert len(scorer.batches) <= rounds + 1
    # The best of the last round is the best of everything ever scored.
    best_text = min(scored, key=lambda t: rank_key(t, *scored[t]))
    assert result.best_prompt == best_text == result.round(rounds)[0].text

    frame = result.to_frame()
    assert len(frame) == len(result.trajectory)
    assert {
        "round",
        "rank",
        "text",
        "accuracy",
        "ece_10",
        "band",
        "survived",
        "source",
        "parent",
        "first_round",
        "n",
    } <= set(frame.columns)
    assert SearchResult.from_json(result.to_json()).to_json() == result.to_json()
    assert result.settings["paraphraser"]["kind"] == "rule"


def test_rerun_reproduces_exactly_from_cache(tmp_path):
    first = run_search(SEEDS, CountingRule(), SyntheticScorer(), 2, 3, 2, seed=5, cache=tmp_path)
    replay_para = CountingRule()
    cache = CandidateCache(tmp_path)
    second = run_search(SEEDS, replay_para, SyntheticScorer(), 2, 3, 2, seed=5, cache=cache)
    assert second.to_json() == first.to_json()
    assert replay_para.samples == 0 and cache.hits > 0 and cache.misses == 0
    # Without a cache the rule mutator reproduces too; another seed gives another search.
    assert run_search(SEEDS, RuleParaphraser(), SyntheticScorer(), 2, 3, 2, seed=5).to_json() == first.to_json()
    assert run_search(SEEDS, RuleParaphraser(), SyntheticScorer(), 2, 3, 2, seed=6).to_json() != first.to_json()


def test_cache_file_and_damaged_line(tmp_path):
    p = RuleParaphraser()
    cache = CandidateCache(tmp_path)
    made = propose_paraphrases(p, "The answer must be", 2, 1, 0, cache)
    path = cache.path_for("rule", p.fingerprint())
    lines = path.read_text().splitlines()
    assert len(lines) == 2
    record = json.loads(lines[0])
    assert record["parent"] == "The answer must be" and record["source"] == "rule"
    assert (record["round"], record["index"], record["seed"]) == (1, 0, 0)
    with path.open("a") as fh:
        fh.write('{"kind": "rule", "parent": "cut sh')  # an interrupted write
    again = propose_paraphrases(CountingRule(), "The answer must be", 2, 1, 0, CandidateCache(tmp_path))
    assert again == made


@pytest.mark.parametrize(
    "bad, message",
    [
        (lambda texts: [], "returned 0 results"),
        (lambda texts: [{"accuracy": 0.5}] * len(texts), "'ece_10'"),
        (lambda texts: [{"accuracy": math.nan, "ece_10": 0.1}] * len(texts), "finite number"),
    ],
)
def test_bad_scorer_output_is_a_clear_error(bad, message):
    with pytest.raises(SearchError, match=message):
        run_search(SEEDS, RuleParaphraser(), bad, rounds=1, m=1, k=1)


def test_paraphraser_config_errors():
    assert isinstance(make_paraphraser({"kind": "rule"}), RuleParaphraser)
    with pytest.raises(ConfigError, match="not one of"):
        make_paraphraser({"kind": "gpt"})
    with pytest.raises(ConfigError, match="unknown keys"):
        make_paraphraser({"kind": "smollm2", "temprature": 1.0})
    with pytest.raises(ConfigError, match="'model' is required"):
        make_paraphraser({"kind": "openai"})
    with pytest.raises(ConfigError, match="m must be"):
        run_search(SEEDS, RuleParaphraser(), SyntheticScorer(), rounds=1, m=0, k=1)


# ---------------------------------------------------------------- SmolLM2 paraphraser


@pytest.fixture(scope="session")
def smollm2(smollm2_dir) -> SmolLM2Paraphraser:
    return SmolLM2Paraphraser(smollm2_dir)


def test_smollm2_gives_distinct_short_candidates_under_a_seed(smollm2):
    first = propose_paraphrases(smollm2, "The answer might be", m=3, round_index=1, seed=0)
    texts = [g.text for g in first]
    assert len(texts) == 3 and len({t.lower() for t in texts}) == 3
    assert all(t and t.lower() != "the answer might be" and len(t.split()) <= 12 for t in texts)
    assert all(g.source in ("smollm2", "smollm2/rule-fallback") for g in first)
    assert any(g.source == "smollm2" for g in first)  # the model itself, not only the fallback
    assert propose_paraphrases(smollm2, "The answer might be", 3, 1, 0) == first
    assert smollm2.loads == 1


def test_smollm2_replay_does_not_load_the_model(smollm2, smollm2_dir, tmp_path, monkeypatch):
    first = run_search(SEEDS, smollm2, SyntheticScorer(), rounds=1, m=2, k=1, seed=2, cache=tmp_path)
    assert {c.source for c in first.trajectory} - {
        "seed",
        "smollm2",
        "smollm2/rule-fallback",
    } == set()

    def refuse(path):
        raise AssertionError("a cached replay must not load the model")

    monkeypatch.setattr(smollm2_paraphraser, "load_paraphrase_model", refuse)
    fresh = SmolLM2Paraphraser(smollm2_dir)
    second = run_search(SEEDS, fresh, SyntheticScorer(), rounds=1, m=2, k=1, seed=2, cache=tmp_path)
    assert second.to_json() == first.to_json() and fresh.loads == 0


def test_a_local_hub_style_paraphraser_is_the_same_model_path(smollm2, smollm2_dir):
    """kind: hf (any chat LM, e.g. the paper study's, run in the search job on the compute node) on the SmolLM2
    folder samples what kind: smollm2 samples; its settings name the model and revision it was given."""
    local = make_paraphraser({"kind": "hf", "model": str(smollm2_dir), "device": "cpu", "dtype": "float32"})
    assert local.kind == "hf" and local.settings()["model"] == str(smollm2_dir)
    assert local.settings()["revision"] is None and "revision" not in smollm2.settings()
    ours = propose_paraphrases(local, "The answer might be", m=2, round_index=1, seed=0)
    theirs = propose_paraphrases(smollm2, "The answer might be", m=2, round_index=1, seed=0)
    assert [g.text for g in ours] == [g.text for g in theirs] and local.loads == 1
    with pytest.raises(ConfigError, match=r"paraphraser 'hf': unknown keys \['api_key'\]"):
        make_paraphraser({"kind": "hf", "model": "x", "api_key": "k"})


@pytest.mark.e2e  # a Snakemake run (CI time): pytest -m e2e
def test_a_hub_paraphraser_is_downloaded_and_an_api_one_runs_where_snakemake_runs(tmp_path):
    """Compute nodes read the cache only: a hub paraphraser is a download source and the search job waits for the
    download; the OpenAI one needs the network, so its search is a local rule (the login node)."""
    import yaml
    from snakemake.utils import validate

    from conftest import run_snakemake, workflow_copy
    from mmcal.config import load_study
    from mmcal.hub.download import sources

    paper = yaml.safe_load((REPO / "config/paper.yaml").read_text())
    cfg = load_study([REPO / "config/paper.yaml"], root=REPO)
    validate(cfg, str(REPO / "workflow/schemas/config.schema.yaml"))
    found = {s["key"]: s for s in sources(cfg)}
    assert cfg["promptopt"]["paraphraser"]["kind"] == "hf"
    assert found["promptopt.paraphraser"]["path"] == cfg["promptopt"]["paraphraser"]["model"]
    assert found["promptopt.paraphraser"]["revision"] == cfg["promptopt"]["paraphraser"]["revision"]
    wd = workflow_copy(tmp_path)
    plan = run_snakemake(wd, "-n", "--configfile", "config/paper.yaml").stdout
    search = plan[plan.index("rule prompt_search:") :].split("\n\n")[0]
    assert "data/downloads/resolved.json" in search
    paper["promptopt"]["paraphraser"] = {"kind": "openai", "model": "gpt-4o-mini"}
    (wd / "config/api.yaml").write_text(yaml.safe_dump(paper))
    assert "prompt_search" not in _local_rules(wd, "config/paper.yaml")
    assert "prompt_search" in _local_rules(wd, "config/api.yaml")


def _local_rules(workdir: Path, configfile: str) -> list[str]:
    """The workflow's local rules (run where Snakemake runs, e.g. a cluster's login node), as Snakemake parses
    them (a dry run prints every job as `rule` when nothing is submitted)."""
    import subprocess
    import sys

    code = (
        "from pathlib import Path\n"
        "from snakemake.api import SnakemakeApi\n"
        "from snakemake.settings.types import OutputSettings, ConfigSettings, ResourceSettings\n"
        "with SnakemakeApi(OutputSettings(quiet={'all'})) as api:\n"
        f"    wf = api.workflow(ResourceSettings(), ConfigSettings(configfiles=[Path('{configfile}')]),"
        " snakefile=Path('Snakefile'), workdir=Path('.'))\n"
        "    print(sorted(wf._workflow._localrules))\n"
    )
    out = subprocess.run([sys.executable, "-c", code], cwd=workdir, capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    return json.loads(out.stdout.strip().splitlines()[-1].replace("'", '"'))


def test_smollm2_missing_checkpoint_is_a_clear_error(tmp_path):
    with pytest.raises(ParaphraserError, match="no model checkpoint"):
        SmolLM2Paraphraser(tmp_path / "nowhere").sample("The answer is", 0)


# ---------------------------------------------------------------- OpenAI-compatible paraphraser

CANNED = [
    '"The reply may be."',  # quotes and full stop are cleaned away
    "What is the answer?",  # rejected: a question
    "Perhaps the answer is\nand some chatter",  # first line only
    "The answer might be",  # rejected when it is the parent
    "Surely the option is",
    "The solution could be",
]


class _ChatServer(ThreadingHTTPServer):
    daemon_threads = True

    def __init__(self):
        super().__init__(("127.0.0.1", 0), _ChatHandler)
        self.received: list[dict] = []
        self.lock = threading.Lock()


class _ChatHandler(BaseHTTPRequestHandler):
    def do_POST(self):
        body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
        with self.server.lock:
            self.server.received.append({"path": self.path, "body": body, "auth": self.headers.get("Authorization")})
            reply = CANNED[(len(self.server.received) - 1) % len(CANNED)]
        if body.get("model") == "broken":
            self._send(500, {"error": {"message": "model crashed"}})
            return
        self._send(
            200,
            {
                "object": "chat.completion",
                "model": body["model"],
                "choices": [
                    {
                        "index": 0,
                        "message": {"role": "assistant", "content": reply},
                        "finish_reason": "stop",
                    }
                ],
            },
        )

    def _send(self, status: int, payload: dict):
        data = json.dumps(payload).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def log_message(self, *args):  # keep test output quiet
        pass


@pytest.fixture
def chat_server():
    server = _ChatServer()
    # A short poll interval makes shutdown() quick.
    thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
    thread.start()
    yield server
    server.shutdown()
    server.server_close()


def _dead_url() -> str:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    return f"http://127.0.0.1:{port}/v1"  # nothing listens there any more


def test_openai_paraphraser_and_cached_replay(chat_server, tmp_path, monkeypatch):
    url = f"http://127.0.0.1:{chat_server.server_port}/v1"
    monkeypatch.setenv("OPENAI_API_KEY", "sk-test-123")
    para = OpenAIParaphraser(model="test-model", base_url=url, retries=0)
    assert "sk-test-123" not in repr(para)
    first = run_search(SEEDS, para, SyntheticScorer(), rounds=2, m=2, k=2, seed=7, cache=tmp_path)

    received = chat_server.received
    assert len(received) == para.requests > 0
    parents = {c.text for c in first.trajectory if c.survived and c.round < 2}
    for req in received:
        body = req["body"]
        assert req["path"] == "/v1/chat/completions" and req["auth"] == "Bearer sk-test-123"
        assert body["model"] == "test-model" and body["n"] == 1 and body["temperature"] == 1.0
        assert isinstance(body["seed"], int)
        assert body["messages"][0]["role"] == "system" and body["messages"][-1]["role"] == "user"
        assert any(f'"{p}"' in body["messages"][-1]["content"] for p in parents)
    from_api = [c for c in first.trajectory if c.source == "openai"]
    assert {"The reply may be", "Perhaps the answer is"} <= {c.text for c in from_api}
    assert not any("?" in c.text for c in first.trajectory)

    n_before = len(received)
    offline = OpenAIParaphraser(model="test-model", base_url=_dead_url(), retries=0)
    second = run_search(SEEDS, offline, SyntheticScorer(), rounds=2, m=2, k=2, seed=7, cache=tmp_path)
    assert second.to_json() == first.to_json()
    assert offline.requests == 0 and len(chat_server.received) == n_before

    # Without the cache the dead endpoint is a clear error naming the URL.
    with pytest.raises(ParaphraserError, match="127.0.0.1.*/v1/chat/completions"):
        run_search(SEEDS, offline, SyntheticScorer(), rounds=1, m=1, k=1, seed=7)


def test_openai_http_error_names_url_and_status_not_key(chat_server, monkeypatch):
    # Base URL and key from the environment, as the fallbacks.
    monkeypatch.setenv("OPENAI_BASE_URL", f"http://127.0.0.1:{chat_server.server_port}/v1/")
    monkeypatch.setenv("OPENAI_API_KEY", "sk-env-456")
    para = make_paraphraser({"kind": "openai", "model": "broken", "retries": 0})
    with pytest.raises(ParaphraserError) as info:
        para.sample("The answer is", 1)
    message = str(info.value)
    assert "/v1/chat/completions" in message and "HTTP 500" in message and "model crashed" in message
    assert "sk-env-456" not in message
    assert chat_server.received[-1]["auth"] == "Bearer sk-env-456"


def test_test_split_summary_has_cluster_bootstrap_intervals():
    from mmcal.promptopt.job import summarise_rows

    rng = np.random.default_rng(0)
    rows = [
        {"status": "ok", "confidence": float(c), "correct": bool(rng.random() < c), "cluster_id": f"c{i // 2}"}
        for i, c in enumerate(rng.uniform(0.3, 1.0, 200))
    ]
    rows.append({"status": "bad image", "confidence": float("nan"), "correct": False, "cluster_id": "x"})
    out = summarise_rows(rows, ci_B=200, seed=1)
    assert out["n"] == 200 and out["n_unscorable"] == 1
    for name in ("accuracy", "ece_10"):
        assert out[f"{name}_lo"] <= out[name] <= out[f"{name}_hi"]
    assert summarise_rows(rows, ci_B=200, seed=1) == out  # seeded
    assert "accuracy_lo" not in summarise_rows(rows)
