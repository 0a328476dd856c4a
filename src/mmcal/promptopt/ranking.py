"""Ranking candidates as the paper does: accuracy band first (higher wins), then ECE (lower wins).

Bands stop a large ECE gain from buying a large accuracy loss, while accuracy differences smaller
than the band width do not override calibration.
"""

from __future__ import annotations

import math

DEFAULT_BAND_WIDTH = 0.2
# ``floor``: bands as a reader expects them; ``reference``: as the reference's PT.py computes them
# (``int(accuracy // 0.2)``), where floating point puts 0.6 in band 2 (0.6 // 0.2 == 2.0) and 1.0 in band 4
BAND_RULES = ("floor", "reference")


def accuracy_band(accuracy: float, width: float = DEFAULT_BAND_WIDTH, rule: str = "floor") -> int:
    """floor(accuracy / width); the epsilon keeps edges where a reader expects them
    (0.6 / 0.2 is 2.9999999999999996 in floating point). ``rule="reference"``: the reference's own
    ``int(accuracy // width)``, edges and all."""
    if rule == "reference":
        return int(accuracy // width)
    return math.floor(accuracy / width + 1e-9)


def rank_key(text: str, accuracy: float, ece: float, width: float = DEFAULT_BAND_WIDTH, rule: str = "floor") -> tuple:
    """Sort key, best first: band (desc), ECE (asc), accuracy (desc), then text for determinism."""
    return (-accuracy_band(accuracy, width, rule), ece, -accuracy, text)
