"""Scoring jobs: sharded, resumable, every item accounted for."""

from __future__ import annotations

import pandas as pd
import pytest
import torch
import yaml

from conftest import own_items_file
from mmcal.engine.build import engine_fingerprint
from mmcal.engine.job import JobSpec, run_job, score_to_records, scoring_engine, shard_dir_for
from mmcal.engine.loading import load_model, model_fingerprint
from mmcal.engine.prompts import PromptVariant
from mmcal.engine.scenarios import Scenario
from mmcal.engine.scoring import Engine
from mmcal.promptopt.job import search_engine


class Crash(RuntimeError):
    pass


def _spec(fmnist_items, out):
    path = own_items_file(fmnist_items, out.parent / "fm")
    return JobSpec(
        model="tiny",
        dataset="fm",
        scenario="image",
        prompt="default",
        items_path=str(path),
        out_path=str(out),
        shard_size=2,
    )


def test_killed_job_resumes_only_unfinished_items(tiny_llava_dir, fmnist_items, tmp_path):
    root, items = fmnist_items
    out = tmp_path / "records.parquet"
    spec = _spec(fmnist_items, out)
    lm = load_model("tiny", str(tiny_llava_dir))
    calls = {"n": 0}

    class CrashingEngine(Engine):
        def score(self, *a, **kw):
            calls["n"] += 1
            if calls["n"] == 3:  # dies while scoring the third shard
                raise Crash("killed")
            return super().score(*a, **kw)

    with pytest.raises(Crash):
        run_job(spec, lambda: CrashingEngine(lm, PromptVariant(), image_root=root), Scenario(), progress=False)
    assert len(list(shard_dir_for(out).glob("shard-*.parquet"))) == 2
    assert not out.exists()

    scored = []

    class CountingEngine(Engine):
        def score(self, chunk, *a, **kw):
            scored.extend(it.item_id for it in chunk)
            return super().score(chunk, *a, **kw)

    stats = run_job(spec, lambda: CountingEngine(lm, PromptVariant(), image_root=root), Scenario())
    assert stats["resumed"] == 4 and stats["scored_now"] == len(items) - 4
    assert set(scored) == {it.item_id for it in items[4:]}
    df = pd.read_parquet(out)
    assert list(df.drop_duplicates("item_id")["item_id"]) == [it.item_id for it in items]
    assert df.groupby("item_id").size().eq(3).all()  # three readouts each
    assert set(df["prompt_hash"]) == {PromptVariant().prompt_hash()}
    assert not shard_dir_for(out).exists()

    # A finished job never loads the model again.
    def must_not_load():
        raise AssertionError("model loaded for a finished job")

    shard_dir_for(out).mkdir()
    df.to_parquet(shard_dir_for(out) / "shard-00000.parquet")
    assert run_job(spec, must_not_load, Scenario())["scored_now"] == 0


def test_same_config_gives_same_records(tiny_llava_dir, fmnist_items, tmp_path):
    root, items = fmnist_items
    lm = load_model("tiny", str(tiny_llava_dir))
    frames = []
    for k in range(2):
        out = tmp_path / f"r{k}.parquet"
        run_job(_spec(fmnist_items, out), lambda: Engine(lm, PromptVariant(), image_root=root), Scenario())
        frames.append(pd.read_parquet(out))
    pd.testing.assert_frame_equal(frames[0], frames[1])


def test_shards_of_another_model_are_discarded(tiny_llava_dir, fmnist_items, tmp_path):
    root, items = fmnist_items
    out = tmp_path / "records.parquet"
    spec = _spec(fmnist_items, out)
    lm = load_model("tiny", str(tiny_llava_dir))
    run_job(spec, lambda: Engine(lm, PromptVariant(), image_root=root), Scenario())
    shard_dir_for(out).mkdir()
    stale = pd.read_parquet(out).assign(model_fingerprint="an-older-checkpoint")
    stale.to_parquet(shard_dir_for(out) / "shard-00000.parquet")
    spec.fingerprint, spec.prompt_hash = lm.fingerprint, PromptVariant().prompt_hash()
    stats = run_job(spec, lambda: Engine(lm, PromptVariant(), image_root=root), Scenario())
    assert stats["resumed"] == 0 and stats["scored_now"] == len(items)
    assert set(pd.read_parquet(out)["model_fingerprint"]) == {lm.fingerprint}


def test_prompt_search_and_scoring_load_a_model_entry_identically(tiny_llava_dir, fmnist_items, tmp_path):
    root, items = fmnist_items
    items_path = own_items_file(fmnist_items, tmp_path / "fm")
    # The entry's own options win over the study-wide dtype (bfloat16) and batch size (8).
    entry = {"path": str(tiny_llava_dir), "kind": "mllm", "revision": "v-test", "dtype": "float32", "batch_size": 3}
    scoring = scoring_engine(
        "tiny",
        entry,
        PromptVariant(),
        readouts=["letter_restricted"],
        device="cpu",
        dtype="bfloat16",
        batch_size=8,
        items_path=items_path,
    )
    search = search_engine("tiny", entry, device="cpu", dtype="bfloat16", batch_size=8, image_root=items_path.parent)
    for engine in (scoring, search):
        assert engine.lm.revision == "v-test"
        assert engine.lm.model.dtype == torch.float32
        assert engine.lm.multimodal and engine.lm.device == "cpu"
        assert engine.batch_size == 3 and engine.image_root == items_path.parent
        assert engine.lm.fingerprint == engine_fingerprint("tiny", entry)
    # Same model, same numbers: the search's default-prompt candidate is the scoring job's readout.
    # (to float32 rounding: the search runs the answer prefix on the prefix's KV cache)
    scored = {r["item_id"]: r["confidence"] for r in scoring.score(items, Scenario())}
    prefix = PromptVariant().answer_prefix
    searched = {
        r["item_id"]: r["confidence"] for r in search.score_answer_prefixes(items, Scenario(), [prefix])[prefix]
    }
    assert scored.keys() == searched.keys()
    assert all(abs(scored[i] - searched[i]) < 1e-5 for i in scored)


def test_a_hub_revision_is_part_of_the_fingerprint(tmp_path, monkeypatch):
    """Hub ids resolve to a commit (here from a hub cache laid out as huggingface_hub lays it out)."""
    import huggingface_hub.constants as hc

    for repo, commits in (("model", ("a" * 40, "b" * 40)), ("other", ("c" * 40,))):
        root = tmp_path / f"models--org--{repo}"
        (root / "refs").mkdir(parents=True)
        (root / "refs" / "main").write_text(commits[0])
        for c in commits:
            (root / "snapshots" / c).mkdir(parents=True)
            (root / "snapshots" / c / "config.json").write_text("{}")
    monkeypatch.setattr(hc, "HF_HUB_CACHE", str(tmp_path))
    monkeypatch.setattr(hc, "HF_HUB_OFFLINE", True)
    plain = engine_fingerprint("m", {"path": "org/model", "kind": "llm", "chat_template": "raw"})
    assert plain != model_fingerprint("org/model")  # the format is part of it
    entry = {"path": "org/model", "kind": "llm", "chat_template": "raw", "revision": "b" * 40}
    assert engine_fingerprint("m", entry) != plain
    assert model_fingerprint("org/model", "a" * 40) == model_fingerprint("org/model")
    assert model_fingerprint("org/model", "b" * 40) != model_fingerprint("org/model")
    raw = {"path": "org/model", "kind": "llm", "chat_template": "raw"}
    assert engine_fingerprint("m", raw, path="org/other") != plain


def test_cli_writes_the_records_the_workflow_job_writes(tiny_llava_dir, fmnist_items, tmp_path, mmcal_cli):
    root, items = fmnist_items
    items_path = own_items_file(fmnist_items, tmp_path / "fm")
    entry = {"path": str(tiny_llava_dir), "kind": "mllm"}
    config = tmp_path / "config.yaml"
    config.write_text(
        yaml.safe_dump(
            {
                "models": {"tiny": entry},
                "device": "cpu",
                "dtype": "float32",
                "prompts": {"default": {}},
                "scenarios": {"image": {"image": True}},
            }
        )
    )
    via_job = tmp_path / "job.parquet"
    score_to_records(
        "tiny",
        entry,
        items_path.parent.name,
        items_path,
        via_job,
        Scenario(),
        PromptVariant(),
        readouts=["letter_restricted", "letter_full_vocab", "option_loglik"],
        splits=["calib", "test"],
        device="cpu",
        dtype="float32",
        batch_size=8,
        progress=False,
    )
    via_cli = tmp_path / "cli.parquet"
    assert (
        mmcal_cli(
            [
                "score",
                "--config",
                str(config),
                "--model-name",
                "tiny",
                "--items",
                str(items_path),
                "--out",
                str(via_cli),
            ]
        )
        == 0
    )
    pd.testing.assert_frame_equal(pd.read_parquet(via_job), pd.read_parquet(via_cli))


def test_an_entry_without_a_path_is_named(fmnist_items, tmp_path, capsys, mmcal_cli):
    root, items = fmnist_items
    items_path = own_items_file(fmnist_items, tmp_path / "fm")
    assert (
        mmcal_cli(["score", "--model-name", "ghost", "--items", str(items_path), "--out", str(tmp_path / "r.parquet")])
        == 2
    )
    assert "model 'ghost'" in capsys.readouterr().err


def test_score_flags_reach_the_job(tiny_llava_dir, fmnist_items, tmp_path, mmcal_cli):
    """`mmcal score`'s flags each reach the scoring job: the records equal those of score_to_records given the same
    model entry (kind, chat template, dtype, batch size, image processor), scenario and prompt of the config,
    readouts, splits and per-split limit."""
    root, items = fmnist_items
    items_path = own_items_file(fmnist_items, tmp_path / "fm")
    config = tmp_path / "config.yaml"
    config.write_text(
        yaml.safe_dump(
            {
                "device": "cpu",
                "prompts": {"terse": {"instruction": "Answer with the letter."}},
                "scenarios": {"blind": {"image": False}},
            }
        )
    )
    via_cli = tmp_path / "cli.parquet"
    args = ["score", "--config", str(config), "--model-name", "tiny", "--model-path", str(tiny_llava_dir)]
    args += ["--kind", "mllm", "--chat-template", "chatml", "--dtype", "float32", "--batch-size", "2"]
    args += ["--image-processor-backend", "pil", "--scenario", "blind", "--prompt", "terse"]
    args += ["--readouts", "letter_restricted,option_loglik", "--splits", "test", "--limit", "2"]
    assert mmcal_cli([*args, "--items", str(items_path), "--out", str(via_cli)]) == 0
    via_job = tmp_path / "job.parquet"
    entry = {"path": str(tiny_llava_dir), "kind": "mllm", "chat_template": "chatml", "dtype": "float32"}
    score_to_records(
        "tiny",
        {**entry, "batch_size": 2, "image_processor_backend": "pil"},
        "fm",
        items_path,
        via_job,
        Scenario(name="blind", image=False),
        PromptVariant(name="terse", instruction="Answer with the letter."),
        readouts=["letter_restricted", "option_loglik"],
        splits=["test"],
        device="cpu",
        dtype="auto",
        batch_size=8,
        limit_per_split=2,
        progress=False,
    )
    cli, job = pd.read_parquet(via_cli), pd.read_parquet(via_job)
    pd.testing.assert_frame_equal(cli, job)
    assert (
        len(cli) == 4
        and set(cli["split"]) == {"test"}
        and set(cli["readout"]) == {"letter_restricted", "option_loglik"}
    )
    assert set(cli["scenario"]) == {"blind"} and set(cli["prompt"]) == {"terse"}
    assert set(cli["model_fingerprint"]) == {engine_fingerprint("tiny", entry)}
    assert engine_fingerprint("tiny", entry) != engine_fingerprint("tiny", {**entry, "chat_template": "raw"})


def test_score_scenarios_and_prompts_come_from_the_config_or_the_defaults(
    tiny_llava_dir, fmnist_items, tmp_path, mmcal_cli, capsys, repo_root
):
    """Without --config, `--scenario blind` is config/defaults.yaml's blind (no image), not the image under another
    name; a scenario or prompt defined nowhere is an error naming it, before any weights load."""
    items_path = own_items_file(fmnist_items, tmp_path / "fm")
    base = ["score", "--model-name", "tiny", "--model-path", str(tiny_llava_dir), "--root", str(repo_root)]
    base += ["--readouts", "letter_restricted", "--splits", "test", "--limit", "2", "--items", str(items_path)]
    blind = tmp_path / "blind.parquet"
    assert mmcal_cli([*base, "--scenario", "blind", "--out", str(blind)]) == 0
    via_job = tmp_path / "job.parquet"
    score_to_records(
        "tiny", {"path": str(tiny_llava_dir)}, "fm", items_path, via_job, Scenario(name="blind", image=False),
        PromptVariant(name="default"), readouts=["letter_restricted"], splits=["test"], device="auto",
        dtype="auto", batch_size=8, limit_per_split=2, progress=False,
    )  # fmt: skip
    pd.testing.assert_frame_equal(pd.read_parquet(blind), pd.read_parquet(via_job))
    for flag, name in (("--scenario", "blnd"), ("--prompt", "tersest")):
        assert mmcal_cli([*base, flag, name, "--out", str(tmp_path / "x.parquet")]) == 2
        err = capsys.readouterr().err
        assert f"{flag[2:]} {name!r} is not defined" in err and ("'blind'" in err or "'idk-hint'" in err), err
    assert not (tmp_path / "x.parquet").exists()
