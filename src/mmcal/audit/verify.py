"""``mmcal audit --verify``: every artifact whose record no longer matches what is on disk or what
would build it now, and everything downstream of those."""

from __future__ import annotations

from pathlib import Path

from mmcal import provenance
from mmcal.hashing import path_sha256


def _current_hash(path: Path) -> str | None:
    return path_sha256(path) if path.exists() else None


def _code_root(root: Path) -> Path:
    """The source tree a rebuild in ``root`` would run: its own src/ if it has one."""
    return root / "src" if (root / "src" / "mmcal").is_dir() else provenance.SRC


def environment_differences(recorded: dict, current: dict) -> list[str]:
    """What differs between a recorded environment and the current one (host and GPU excluded:
    the GPU is only known to jobs that used torch)."""
    out = []
    for key in ("python",):
        if recorded.get(key) != current.get(key):
            out.append(f"{key} {recorded.get(key)} -> {current.get(key)}")
    for key in ("model", "flags_sha256"):
        a, b = (recorded.get("cpu") or {}).get(key), (current.get("cpu") or {}).get(key)
        if a != b:
            out.append(f"cpu {key} {a} -> {b}")
    rec_pkgs, cur_pkgs = recorded.get("packages") or {}, current.get("packages") or {}
    changed = {n for n in set(rec_pkgs) | set(cur_pkgs) if rec_pkgs.get(n) != cur_pkgs.get(n)}
    changed |= {n for n, v in (recorded.get("versions") or {}).items() if v != cur_pkgs.get(n)}
    out += [
        f"package {n} {rec_pkgs.get(n, (recorded.get('versions') or {}).get(n))} -> {cur_pkgs.get(n)}"
        for n in sorted(changed)
    ]
    return out


def own_problems(rec: dict, root: Path, env: dict, code_root: Path, scripts_dir: Path) -> list[str]:
    """Why this one artifact no longer matches its record (upstream artifacts are not followed)."""
    problems = []
    out = root / rec["output"]
    now = _current_hash(out)
    if now is None:
        return ["missing"]
    if now != rec["sha256"]:
        problems.append(f"modified since built (sha256 {rec['sha256'][:12]} -> {now[:12]})")
    for inp in rec["inputs"]:
        cur = _current_hash(root / inp["path"])
        if cur != inp["sha256"]:
            problems.append(f"input {inp['path']} changed since built")
    for src in rec.get("sources", []):
        # relative: inside the run folder (e.g. the prompt-search cache); absolute: outside it
        if "sha256" in src and _current_hash(root / src["path"]) != src["sha256"]:
            problems.append(f"source {src['path']} changed or missing")
    for rel, sha in rec["code"]["modules"].items():
        if _current_hash(code_root / rel) != sha:
            problems.append(f"code src/{rel} changed")
    for name, sha in rec["code"]["scripts"].items():
        if _current_hash(scripts_dir / name) != sha:
            problems.append(f"code workflow/scripts/{name} changed")
    problems += [f"environment: {d}" for d in environment_differences(rec["environment"], env)]
    return problems


def _producer(path: str, records: dict[str, dict]) -> str | None:
    """The artifact a path is or lies inside (a file in a model folder, a table in paper/tables)."""
    p = Path(path)
    for cand in (p, *p.parents):
        if cand.as_posix() in records:
            return cand.as_posix()
    return None


def verify(root: str | Path = ".", target: str | None = None) -> dict:
    """``{"ok": bool, "checked": n, "problems": {artifact: [reasons]}}``; with ``target``: that
    artifact and everything upstream of it only."""
    root = Path(root)
    records = provenance.all_records(root)
    if target is not None:
        start = _producer(target, records)
        if start is None:
            return {"ok": False, "checked": 0, "problems": {target: ["no provenance record"]}}
        keep, todo = set(), [start]
        while todo:
            a = todo.pop()
            if a not in keep:
                keep.add(a)
                todo += [u for i in records[a]["inputs"] if (u := _producer(i["path"], records))]
        records = {a: records[a] for a in keep}
    env = provenance.environment()
    code_root, scripts_dir = _code_root(root), root / "workflow" / "scripts"
    problems = {a: own_problems(r, root, env, code_root, scripts_dir) for a, r in records.items()}
    # Everything downstream of a bad artifact is bad too (fixed point over the input graph).
    upstream = {
        a: {u for i in r["inputs"] if (u := _producer(i["path"], records)) and u != a} for a, r in records.items()
    }
    changed = True
    while changed:
        changed = False
        for a, ups in upstream.items():
            for u in sorted(ups):
                note = f"upstream {u} is not what it was"
                if problems[u] and note not in problems[a]:
                    problems[a].append(note)
                    changed = True
    bad = {a: p for a, p in sorted(problems.items()) if p}
    return {"ok": not bad, "checked": len(records), "problems": bad}


def format_report(result: dict) -> str:
    lines = [
        f"checked {result['checked']} artifacts: "
        + ("all match their provenance" if result["ok"] else f"{len(result['problems'])} do not")
    ]
    for art, reasons in result["problems"].items():
        lines.append(f"  {art}")
        lines += [f"      {r}" for r in reasons]
    return "\n".join(lines)
