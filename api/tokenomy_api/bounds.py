"""Confidence bounds on shares seen in samples: what a wrong-hit budget can claim."""

from __future__ import annotations

import math
from statistics import NormalDist

Z_99 = 2.3263
"""One-sided 99 % normal quantile."""


def wilson_upper(wrong: float, n: float, z: float = Z_99) -> float:
    """One-sided upper Wilson bound of a share seen as ``wrong`` of ``n`` (may be fractional).

    Wilson's rather than the normal approximation: it stays inside [0, 1] and
    says something honest at 0 wrong of few (0 of 10 bounds at 35 %, not 0).
    """
    if n <= 0:
        return 1.0
    p = wrong / n
    z2 = z * z
    spread = z * math.sqrt(max(p * (1 - p), 0.0) / n + z2 / (4 * n * n))
    return min(1.0, (p + z2 / (2 * n) + spread) / (1 + z2 / n))


def wilson_interval(agreed: int, n: int, confidence: float) -> tuple[float, float]:
    """Two-sided Wilson interval of a share seen as ``agreed`` of ``n``, holding the true
    share with probability ``confidence``; (0, 1) with no samples."""
    if n <= 0:
        return 0.0, 1.0
    z = NormalDist().inv_cdf((1 + confidence) / 2)
    p = agreed / n
    z2 = z * z
    centre = (p + z2 / (2 * n)) / (1 + z2 / n)
    spread = z * math.sqrt(max(p * (1 - p), 0.0) / n + z2 / (4 * n * n)) / (1 + z2 / n)
    return max(0.0, centre - spread), min(1.0, centre + spread)
