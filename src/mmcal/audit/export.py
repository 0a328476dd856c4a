"""``mmcal audit --export DIR``: the whole run as a Workflow Run RO-Crate (``DIR/ro-crate-metadata.json``).

Profile: Workflow Run Crate 0.5 (https://w3id.org/ro/wfrun/workflow/0.5), on RO-Crate 1.1. The crate
describes the run without copying data: artifacts and sources are data entities with absolute
``file://`` identifiers and their SHA-256; each job is a ``CreateAction`` (object: its inputs,
result: its outputs, instrument: its rule as a ``SoftwareApplication``), under one ``OrganizeAction``
of the Snakefile as a ``ComputationalWorkflow``. Checked by reading it back with the ``rocrate``
library (tests/test_audit_verify.py).
"""

from __future__ import annotations

import json
from pathlib import Path

from mmcal import provenance

RO_CRATE = "https://w3id.org/ro/crate/1.1"
PROFILES = (
    "https://w3id.org/ro/wfrun/process/0.5",
    "https://w3id.org/ro/wfrun/workflow/0.5",
    "https://w3id.org/workflowhub/workflow-ro-crate/1.0",
)


def _file_id(path: Path) -> str:
    return path.resolve().as_uri()


def export_crate(out_dir: str | Path, root: str | Path = ".") -> Path:
    root, out_dir = Path(root).resolve(), Path(out_dir)
    records = provenance.all_records(root)
    graph: dict[str, dict] = {}

    def add(entity: dict) -> dict:
        graph.setdefault(entity["@id"], entity)
        return {"@id": entity["@id"]}

    def data(path: str, sha: str | None) -> dict:
        p = Path(path) if Path(path).is_absolute() else root / path
        ent = {"@id": _file_id(p), "@type": "Dataset" if p.is_dir() else "File", "name": path}
        if sha:
            ent["sha256"] = sha
        return add(ent)

    workflow = add(
        {
            "@id": _file_id(root / "Snakefile"),
            "@type": ["File", "SoftwareSourceCode", "ComputationalWorkflow"],
            "name": "mmcal Snakemake workflow",
            "programmingLanguage": {"@id": "#snakemake"},
        }
    )
    add(
        {
            "@id": "#snakemake",
            "@type": "ComputerLanguage",
            "name": "Snakemake",
            "url": {"@id": "https://snakemake.github.io"},
        }
    )
    actions, jobs = [], {}
    for art, rec in records.items():
        key = (rec["rule"], json.dumps(rec.get("wildcards"), sort_keys=True), tuple(rec["outputs"]))
        if key not in jobs:
            rule = add({"@id": f"#rule-{rec['rule']}", "@type": "SoftwareApplication", "name": f"rule {rec['rule']}"})
            wc = ",".join(f"{k}={v}" for k, v in sorted((rec.get("wildcards") or {}).items()))
            action = {
                "@id": f"#job-{len(jobs)}",
                "@type": "CreateAction",
                "name": f"{rec['rule']}({wc})" if wc else rec["rule"],
                "instrument": rule,
                "startTime": rec.get("started"),
                "endTime": rec.get("ended"),
                "object": [data(i["path"], i["sha256"]) for i in rec["inputs"]]
                + [data(s["path"], s.get("sha256")) for s in rec.get("sources", []) if "path" in s],
                "result": [],
                "description": (
                    f"code {rec['code'].get('commit') or 'unknown'}; "
                    f"environment {rec['environment']['packages_sha256'][:16]}"
                ),
            }
            jobs[key] = action
            actions.append(add(action))
        jobs[key]["result"].append(data(art, rec["sha256"]))
    run = add(
        {
            "@id": "#run",
            "@type": "CreateAction",
            "name": "mmcal workflow run",
            "instrument": workflow,
            "result": [{"@id": i} for i in sorted({r["@id"] for a in jobs.values() for r in a["result"]})],
        }
    )
    add({"@id": "#organize", "@type": "OrganizeAction", "name": "Snakemake run", "result": run, "object": actions})
    add(
        {
            "@id": "./",
            "@type": "Dataset",
            "name": "mmcal run provenance",
            "description": "Every artifact of one mmcal run, the jobs that made them and their inputs.",
            "conformsTo": [{"@id": p} for p in PROFILES],
            "mainEntity": workflow,
            "mentions": [run],
            # RO-Crate 1.1: every data entity is reachable from the root through hasPart.
            "hasPart": [workflow] + [{"@id": i} for i, e in graph.items() if e["@type"] in ("File", "Dataset")],
        }
    )
    add(
        {
            "@id": "ro-crate-metadata.json",
            "@type": "CreativeWork",
            "conformsTo": {"@id": RO_CRATE},
            "about": {"@id": "./"},
        }
    )
    for p in PROFILES:
        add(
            {
                "@id": p,
                "@type": ["CreativeWork", "Profile"],
                "name": p.rsplit("/", 2)[-2],
                "version": p.rsplit("/", 1)[-1],
            }
        )
    out_dir.mkdir(parents=True, exist_ok=True)
    target = out_dir / "ro-crate-metadata.json"
    target.write_text(json.dumps({"@context": f"{RO_CRATE}/context", "@graph": list(graph.values())}, indent=1))
    return target
