"""The records contract has one reader and the statistics one implementation (issue 12): no
group-key tuple, row filter, meta parser or option_probs outside ``mmcal.records``, and no
quantile / binning code outside ``mmcal.analysis.metrics`` and ``mmcal.analysis.stats``."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

SRC = Path(__file__).resolve().parents[1] / "src" / "mmcal"

RULES = {
    # a literal tuple/list of group keys ("model", "dataset", ...): use records.GROUP_KEYS / RUN_KEYS
    "group-key tuple": (r"""["']model["']\s*,\s*["']dataset["']""", {"records.py"}),
    # another reader of the contract: use records.select / scorable / parse_meta / option_probs
    "records reader": (r"def _?(select|scorable|scored|parse_meta|option_probs)\(", {"records.py"}),
    # intervals, bins and ECE: use stats.percentile_interval, metrics.equal_width_bin_index, metrics.ece
    "quantile, binning or ECE": (
        r"np\.(nan)?(percentile|quantile)\(|np\.digitize\(|def \w*(equal_width|calibration_error)\w*\(",
        {"analysis/metrics.py", "analysis/stats.py"},
    ),
}


def offending_lines(pattern: str, allowed: set[str]) -> list[str]:
    hits = []
    for path in sorted(SRC.rglob("*.py")):
        name = path.relative_to(SRC).as_posix()
        if name in allowed:
            continue
        for number, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
            if re.search(pattern, line):
                hits.append(f"{name}:{number}: {line.strip()}")
    return hits


@pytest.mark.parametrize("rule", list(RULES))
def test_one_implementation(rule):
    pattern, allowed = RULES[rule]
    assert offending_lines(pattern, allowed) == [], f"{rule} outside {sorted(allowed)}"


def test_the_rules_find_what_they_forbid():
    # the patterns match the copies that were removed (so an empty result means something)
    samples = {
        "group-key tuple": 'GROUP_COLS = ("model", "dataset", "scenario", "prompt", "readout")',
        "records reader": "def parse_meta(value) -> dict:",
        "quantile, binning or ECE": "lo, hi = np.nanquantile(reps, [(1 - level) / 2, (1 + level) / 2])",
    }
    for rule, line in samples.items():
        assert re.search(RULES[rule][0], line), rule
    for line in (
        "def equal_width_bins(confidence, n_bins):",
        "np.percentile(finite, [2.5, 97.5])",
        "def expected_calibration_error(table):",
    ):
        assert re.search(RULES["quantile, binning or ECE"][0], line), line
