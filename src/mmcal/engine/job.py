"""A resumable scoring job: one (model, dataset, scenario, prompt) → one records Parquet file.

Items are scored in shards written next to the output (``<output>.shards/``). A killed job that
is restarted reads the finished shards and scores only the items they do not hold; the final file
is assembled from the shards in item order, then the shards are removed. A shard that cannot be
trusted on resume (unreadable: truncated or foreign bytes; written for another model, prompt,
readouts or scenario: ``job.json`` in the shard folder holds what they were written for) is
discarded with a warning naming it, and its items are scored again.

:func:`score_to_records` is the job with explicit arguments; the workflow's ``score`` rule and
``mmcal score`` both call it, so a DAG run and a CLI run write identical records.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import shutil
import time
from dataclasses import dataclass
from pathlib import Path

import pandas as pd

from mmcal.atomic import write_text_atomically
from mmcal.data.idk.dated_news import items_for_model
from mmcal.engine.build import build_engine, engine_fingerprint
from mmcal.engine.forward import ForwardError
from mmcal.engine.prompts import PromptVariant
from mmcal.engine.scenarios import Scenario
from mmcal.engine.scoring import is_input_problem
from mmcal.errors import DataError, MmcalError, OutputError
from mmcal.items import read_items
from mmcal.records import read_parquet_file, to_frame, write_records

log = logging.getLogger(__name__)


@dataclass
class JobSpec:
    model: str
    dataset: str
    scenario: str
    prompt: str
    items_path: str
    out_path: str
    splits: tuple[str, ...] = ("calib", "test")
    descriptions_path: str | None = None
    shard_size: int = 64
    limit_per_split: int | None = None
    # Identity of the model and prompt: shards written by another model or prompt are discarded,
    # never mixed into the records (e.g. after a checkpoint was retrained).
    fingerprint: str | None = None
    prompt_hash: str | None = None
    # Largest share of unscorable items among those whose inputs are fine before the job fails.
    max_unscorable: float = 0.02
    # The model's knowledge cutoff: selects its items of a news set with per-model cutoffs.
    cutoff: str | None = None
    # The readouts asked for: a shard with other readouts was written for another job.
    readouts: tuple[str, ...] = ()


def shard_dir_for(out_path: str | Path) -> Path:
    out_path = Path(out_path)
    return out_path.with_name(out_path.name + ".shards")


def job_key(spec: JobSpec, scenario) -> dict:
    """What the shards of this job are written for; shards written for another key are not reused."""
    return {
        "model_fingerprint": spec.fingerprint,
        "prompt_hash": spec.prompt_hash,
        "readouts": sorted(spec.readouts),
        "scenario": dataclasses.asdict(scenario) if dataclasses.is_dataclass(scenario) else repr(scenario),
    }


def _shard_problem(df: pd.DataFrame, spec: JobSpec) -> str | None:
    if spec.fingerprint and (df["model_fingerprint"] != spec.fingerprint).any():
        return "written by another model"
    if spec.prompt_hash and (df["prompt_hash"] != spec.prompt_hash).any():
        return "written with another prompt"
    if spec.readouts and set(df["readout"]) != set(spec.readouts):
        return f"holds readouts {sorted(set(df['readout']))}, not {sorted(spec.readouts)}"
    return None


def finished_shards(shard_dir: Path, spec: JobSpec, key: dict | None = None) -> tuple[list[Path], set[str]]:
    """Shards a restarted job can reuse and the items they hold. A shard that is unreadable (a crash on a
    file system that lost its tail, foreign bytes) or written for another job is deleted with a warning
    naming it: its items are scored again, never silently dropped or mixed in."""
    shards = sorted(shard_dir.glob("shard-*.parquet")) if shard_dir.exists() else []
    key_file = shard_dir / "job.json"
    if shards and key is not None and key_file.exists():
        try:
            written_for = json.loads(key_file.read_text())
        except ValueError:
            written_for = None
        if written_for != key:
            log.warning("discarding the %d shards in %s: written for another job (%s)", len(shards), shard_dir, key)
            for s in shards:
                s.unlink()
            shards = []
    done: set[str] = set()
    kept = []
    for s in shards:
        try:
            df = read_parquet_file(s, columns=["item_id", "model_fingerprint", "prompt_hash", "readout"])
            problem = _shard_problem(df, spec)
        except (DataError, KeyError) as exc:  # KeyError: a Parquet file without the records columns
            problem = f"unreadable: {exc}"
        if problem:
            log.warning("discarding %s: %s; its items are scored again", s, problem)
            s.unlink()
            continue
        kept.append(s)
        done.update(df["item_id"].tolist())
    return kept, done


def remove_shards(out_path: str | Path) -> None:
    """Delete a finished job's shards (after its records file and provenance are written)."""
    shutil.rmtree(shard_dir_for(out_path), ignore_errors=True)


def select_items(spec: JobSpec):
    items = read_items(spec.items_path, splits=spec.splits)
    n_read = len(items)
    items = items_for_model(items, spec.model, spec.cutoff)
    if len(items) < n_read:
        log.info("%s: %d of %d items dated after its cutoff %s", spec.model, len(items), n_read, spec.cutoff)
    if spec.limit_per_split:
        kept, count = [], {}
        for it in items:
            count[it.split] = count.get(it.split, 0) + 1
            if count[it.split] <= spec.limit_per_split:
                kept.append(it)
        items = kept
    return items


def check_unscorable(df: pd.DataFrame, spec: JobSpec) -> None:
    """Fail when more than ``spec.max_unscorable`` of the items whose inputs are fine went unscored:
    that is a systematic failure (a processor or model problem), not a few bad items."""
    per_item = df.drop_duplicates("item_id")
    fine = per_item[~per_item["status"].map(is_input_problem)]
    failed = fine[fine["status"] != "ok"]
    if len(fine) and len(failed) / len(fine) > spec.max_unscorable:
        reasons = "; ".join(f"{r.item_id}: {r.status}" for r in failed.head(3).itertuples())
        raise MmcalError(
            f"{spec.model}/{spec.dataset}/{spec.scenario}/{spec.prompt}: {len(failed)} of {len(fine)} items "
            f"({len(failed) / len(fine):.1%}) with usable inputs could not be scored, more than "
            f"scoring.max_unscorable = {spec.max_unscorable:.1%}. First: {reasons}"
        )


def run_job(spec: JobSpec, make_engine, scenario, progress: bool = True, keep_shards: bool = False) -> dict:
    """Score what is not yet scored, then assemble. ``make_engine()`` loads the model lazily,
    so a job whose shards are all done never loads the model. ``keep_shards``: leave the shards for the
    caller to remove (:func:`remove_shards`) once everything else the job writes is written, so that a job
    failing after this (its provenance on a full disk) is assembled again, not scored again."""
    from tqdm import tqdm

    t0 = time.time()
    items = select_items(spec)
    descriptions = None
    if spec.descriptions_path:
        descriptions = json.loads(Path(spec.descriptions_path).read_text())
    shard_dir = shard_dir_for(spec.out_path)
    try:
        shard_dir.mkdir(parents=True, exist_ok=True)
    except OSError as exc:  # a read-only output folder: say which, before any item is scored
        message = f"cannot create the shard folder {shard_dir}: {exc.strerror or exc}"
        raise OutputError.from_os_error(exc, message) from exc
    key = job_key(spec, scenario)
    shards, done = finished_shards(shard_dir, spec, key)
    write_text_atomically(shard_dir / "job.json", json.dumps(key, sort_keys=True), "shard key")
    todo = [it for it in items if it.item_id not in done]
    log.info(
        "items: %d selected, %d already scored in %d shards, %d to score",
        len(items),
        len(items) - len(todo),
        len(shards),
        len(todo),
    )
    engine = None
    if todo:
        engine = make_engine()
        provenance = {
            "model": spec.model,
            "dataset": spec.dataset,
            "scenario": spec.scenario,
            "prompt": spec.prompt,
            "prompt_hash": engine.prompt.prompt_hash(),
            "model_fingerprint": engine.lm.fingerprint,
        }
        bar = tqdm(
            total=len(todo),
            unit="item",
            desc=f"{spec.model}/{spec.dataset}/{spec.scenario}/{spec.prompt}",
            mininterval=5,
        )
        next_index = 1 + max((int(p.stem.split("-")[1]) for p in shards), default=-1)
        for start in range(0, len(todo), spec.shard_size):
            chunk = todo[start : start + spec.shard_size]
            try:
                rows = engine.score(chunk, scenario, descriptions, progress=bar.update)
            except ForwardError as exc:
                raise ForwardError(f"dataset {spec.dataset!r}: {exc}") from exc.__cause__
            for r in rows:
                r.update(provenance)
            write_records(to_frame(rows), shard_dir / f"shard-{next_index:05d}.parquet")
            next_index += 1
        bar.close()
    frames = [read_parquet_file(s) for s in sorted(shard_dir.glob("shard-*.parquet"))]
    df = pd.concat(frames, ignore_index=True) if frames else to_frame([])
    order = {it.item_id: i for i, it in enumerate(items)}
    # one row per item and readout even if two shards hold an item (two writers of one output)
    df = df[df["item_id"].isin(order)].drop_duplicates(["item_id", "readout"])
    df = df.assign(_o=df["item_id"].map(order)).sort_values(["_o", "readout"], kind="stable")
    df = df.drop(columns="_o").reset_index(drop=True)
    check_unscorable(df, spec)
    write_records(df, spec.out_path)
    if not keep_shards:
        remove_shards(spec.out_path)
    per_item = df.drop_duplicates("item_id")
    stats = {
        "items": len(items),
        "scored_now": len(todo),
        "resumed": len(items) - len(todo),
        "ok": int((per_item["status"] == "ok").sum()),
        "unscorable": int((per_item["status"] != "ok").sum()),
        "seconds": round(time.time() - t0, 1),
    }
    log.info("done: %s", json.dumps(stats))
    return stats


def score_to_records(
    model_name: str,
    model_entry: dict,
    dataset: str,
    items_path: str | Path,
    out_path: str | Path,
    scenario: Scenario,
    prompt: PromptVariant,
    *,
    readouts: list[str],
    splits: list[str],
    device: str,
    dtype: str,
    batch_size: int,
    shard_size: int = 64,
    limit_per_split: int | None = None,
    model_path: str | Path | None = None,
    descriptions_path: str | Path | None = None,
    max_unscorable: float = 0.02,
    progress: bool = True,
    keep_shards: bool = False,
) -> dict:
    """Score one (model, dataset, scenario, prompt) into ``out_path``; returns the job's stats.

    ``model_path`` is the folder the DAG built for the model (default: the entry's ``path``);
    ``keep_shards``: see :func:`run_job`.
    """
    spec = JobSpec(
        model=model_name,
        dataset=dataset,
        scenario=scenario.name,
        prompt=prompt.name,
        items_path=str(items_path),
        out_path=str(out_path),
        splits=tuple(splits),
        descriptions_path=str(descriptions_path) if descriptions_path else None,
        shard_size=int(shard_size),
        limit_per_split=limit_per_split,
        fingerprint=engine_fingerprint(model_name, model_entry, model_path),
        prompt_hash=prompt.prompt_hash(),
        max_unscorable=float(max_unscorable),
        cutoff=model_entry.get("cutoff"),
        readouts=tuple(readouts),
    )

    def make_engine():
        return scoring_engine(
            model_name,
            model_entry,
            prompt,
            readouts=readouts,
            device=device,
            dtype=dtype,
            batch_size=batch_size,
            items_path=items_path,
            model_path=model_path,
        )

    return run_job(spec, make_engine, scenario, progress, keep_shards)


def scoring_engine(
    model_name: str,
    model_entry: dict,
    prompt: PromptVariant,
    *,
    readouts: list[str],
    device: str,
    dtype: str,
    batch_size: int,
    items_path: str | Path,
    model_path: str | Path | None = None,
):
    """The engine a scoring job scores with; images are looked up relative to the items file's folder."""
    return build_engine(
        model_name,
        model_entry,
        path=model_path,
        device=device,
        dtype=dtype,
        prompt=prompt,
        readouts=readouts,
        batch_size=batch_size,
        image_root=Path(items_path).parent,
    )
