"""The package layout of docs/ARCHITECTURE.md holds: stage packages import only earlier stages
(and the top-level contracts), and the contracts import no stage (the CLI excepted, which drives one)."""

from __future__ import annotations

import ast
import sys
from pathlib import Path

SRC = Path(__file__).resolve().parents[1] / "src" / "mmcal"
STAGES = ["data", "engine", "tinyllava", "analysis", "imports", "calibration", "promptopt", "figures", "paper"]


def _mmcal_imports(path: Path) -> set[str]:
    out = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom) and node.module and node.module.split(".")[0] == "mmcal":
            out.add(node.module)
            if node.module == "mmcal":  # from mmcal import figures
                out |= {f"mmcal.{a.name}" for a in node.names}
        elif isinstance(node, ast.Import):
            out |= {a.name for a in node.names if a.name.split(".")[0] == "mmcal"}
    return out


def layout_violations() -> list[str]:
    found = []
    for path in sorted(SRC.rglob("*.py")):
        parts = path.relative_to(SRC).parts
        own = parts[0] if len(parts) > 1 else None
        for module in _mmcal_imports(path):
            target = module.split(".")[1] if "." in module else None
            if target not in STAGES:
                continue
            if own in STAGES and STAGES.index(target) > STAGES.index(own):
                found.append(f"{path.relative_to(SRC)} (stage {own}) imports later stage {module}")
            elif own is None and path.name != "cli.py":
                found.append(f"{path.relative_to(SRC)} (a contract) imports stage {module}")
    return found


def test_imports_flow_one_way():
    assert layout_violations() == []


def test_the_check_catches_a_backward_import(tmp_path, monkeypatch):
    pkg = tmp_path / "mmcal"
    (pkg / "analysis").mkdir(parents=True)
    (pkg / "analysis" / "x.py").write_text("from mmcal.figures.style import styled\n")
    (pkg / "records.py").write_text("from mmcal.engine import scoring\n")
    monkeypatch.setattr(sys.modules[__name__], "SRC", pkg)
    assert layout_violations() == [
        "analysis/x.py (stage analysis) imports later stage mmcal.figures.style",
        "records.py (a contract) imports stage mmcal.engine",
    ]


def test_every_stage_package_exists():
    assert all((SRC / stage / "__init__.py").is_file() for stage in STAGES)
