"""Ranking candidates as the paper does: accuracy band first (higher wins), then ECE (lower wins).

Bands stop a large ECE gain from buying a large accuracy loss, while accuracy differences smaller
than the band width do not override calibration.
"""

from __future__ import annotations

import math

DEFAULT_BAND_WIDTH = 0.2


def accuracy_band(accuracy: float, width: float = DEFAULT_BAND_WIDTH) -> int:
    """floor(accuracy / width); the epsilon keeps edges where a reader expects them
    (0.6 / 0.2 is 2.9999999999999996 in floating point)."""
    return math.floor(accuracy / width + 1e-9)


def rank_key(text: str, accuracy: float, ece: float, width: float = DEFAULT_BAND_WIDTH) -> tuple:
    """Sort key, best first: band (desc), ECE (asc), accuracy (desc), then text for determinism."""
    return (-accuracy_band(accuracy, width), ece, -accuracy, text)
