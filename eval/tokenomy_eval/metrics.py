"""RouteLLM's routing metrics, and the random and perfect routers beside a real one.

A router gives each query a score: higher means "send it to the strong
model". Sending the top ``k`` % to the strong model traces a curve of
quality against strong-call share and cost.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import numpy.typing as npt

Array = npt.NDArray[np.float64]


@dataclass(frozen=True)
class Curve:
    """Quality and cost when the top ``share`` of queries go to the strong model."""

    shares: Array
    quality: Array
    cost: Array


def curve(
    scores: Sequence[float] | Array,
    weak_q: Array,
    strong_q: Array,
    weak_c: Array,
    strong_c: Array,
    steps: int = 100,
) -> Curve:
    """Evaluate a router's scores at every strong-call share 0, 1/steps, ... 1."""
    order = np.argsort(-np.asarray(scores, dtype=np.float64), kind="stable")
    n = len(order)
    shares = np.linspace(0.0, 1.0, steps + 1)
    quality = np.empty_like(shares)
    cost = np.empty_like(shares)
    for i, share in enumerate(shares):
        to_strong = np.zeros(n, dtype=bool)
        to_strong[order[: round(share * n)]] = True
        quality[i] = np.where(to_strong, strong_q, weak_q).mean()
        cost[i] = np.where(to_strong, strong_c, weak_c).sum()
    return Curve(shares, quality, cost)


def random_curve(
    weak_q: Array, strong_q: Array, weak_c: Array, strong_c: Array, steps: int = 100
) -> Curve:
    """The expected curve of a router that picks the strong model at random."""
    shares = np.linspace(0.0, 1.0, steps + 1)
    quality = (1 - shares) * weak_q.mean() + shares * strong_q.mean()
    cost = (1 - shares) * weak_c.sum() + shares * strong_c.sum()
    return Curve(shares, quality, cost)


def perfect_scores(weak_q: Array, strong_q: Array) -> Array:
    """An oracle: strong first where it beats weak, never where weak is as good."""
    return np.asarray(strong_q - weak_q, dtype=np.float64)


def pgr(c: Curve, weak: float, strong: float) -> Array:
    """Performance gap recovered at each share."""
    gap = strong - weak
    return (c.quality - weak) / gap if gap else np.zeros_like(c.quality)


def apgr(c: Curve, weak: float, strong: float) -> float:
    """Average PGR over strong-call shares from 0 to 100 % (RouteLLM's APGR)."""
    values = pgr(c, weak, strong)
    return float(np.trapezoid(values, c.shares))


def cpt(c: Curve, weak: float, strong: float, target: float) -> float:
    """Smallest strong-call share whose PGR reaches ``target`` (RouteLLM's CPT)."""
    reached = np.nonzero(pgr(c, weak, strong) >= target - 1e-12)[0]
    return float(c.shares[reached[0]]) if len(reached) else 1.0


def cost_reduction_at(
    c: Curve, strong_quality: float, strong_cost: float, fraction: float = 0.95
) -> tuple[float, float]:
    """(cost reduction, strong-call share) of the cheapest point within ``fraction`` of strong."""
    ok = np.nonzero(c.quality >= fraction * strong_quality - 1e-12)[0]
    if not len(ok):
        return 0.0, 1.0
    best = ok[np.argmin(c.cost[ok])]
    return float(1 - c.cost[best] / strong_cost), float(c.shares[best])
