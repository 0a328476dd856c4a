"""``mmcal audit PATH``: the chain from one artifact down to the raw sources, as a tree."""

from __future__ import annotations

from pathlib import Path

from mmcal import provenance
from mmcal.audit.verify import _producer
from mmcal.errors import ConfigError


def chain(path: str, root: str | Path = ".") -> dict:
    """A nested dict: the artifact (rule, hashes, params, code, times), its inputs' chains, its sources.
    An artifact reached twice is expanded the first time only (``"seen": true`` after)."""
    records = provenance.all_records(root)
    start = _producer(Path(path).as_posix(), records)
    if start is None:
        raise ConfigError(f"{path}: no provenance record (not built by the workflow since provenance was added?)")
    seen: set[str] = set()

    def node(art: str) -> dict:
        rec = records[art]
        out = {"artifact": art, "rule": rec["rule"], "sha256": rec["sha256"]}
        if art in seen:
            return {**out, "seen": True}
        seen.add(art)
        inputs = []
        for i in rec["inputs"]:
            up = _producer(i["path"], records)
            inputs.append(node(up) if up else {"artifact": i["path"], "sha256": i["sha256"], "rule": None})
        return {
            **out,
            "wildcards": rec.get("wildcards"),
            "seeds": rec.get("seeds"),
            "code": {k: rec["code"].get(k) for k in ("commit", "diff_sha256")},
            "environment": {k: rec["environment"].get(k) for k in ("python", "versions", "packages_sha256", "cpu")},
            "started": rec.get("started"),
            "ended": rec.get("ended"),
            "host": rec.get("host"),
            "sources": rec.get("sources", []),
            "inputs": inputs,
        }

    return node(start)


def _source_line(src: dict) -> str:
    if src["kind"] == "hub":
        return f"hub {src['repo']} @ {src['revision']}"
    if src["kind"] == "package_file":
        return f"{src['package']}=={src['version']} {src['path']} sha256 {src['sha256'][:16]}"
    return f"{src['kind']} {src['path']} sha256 {src['sha256'][:16]}"


def format_chain(tree: dict) -> str:
    lines: list[str] = []

    def walk(n: dict, depth: int) -> None:
        pad = "  " * depth
        if n.get("rule") is None:
            lines.append(f"{pad}{n['artifact']}  (no record)  sha256 {str(n['sha256'])[:16]}")
            return
        lines.append(
            f"{pad}{n['artifact']}  <- rule {n['rule']}  sha256 {n['sha256'][:16]}"
            + ("  (above)" if n.get("seen") else "")
        )
        if n.get("seen"):
            return
        code = n["code"]
        lines.append(
            f"{pad}    built {n['ended']} on {n['host']}; commit {code['commit'] or 'unknown'}"
            + (f" + diff {code['diff_sha256'][:12]}" if code["diff_sha256"] else "")
            + f"; seeds {n['seeds'] or '-'}"
        )
        for src in n["sources"]:
            lines.append(f"{pad}    source: {_source_line(src)}")
        for child in n["inputs"]:
            walk(child, depth + 1)

    walk(tree, 0)
    return "\n".join(lines)
