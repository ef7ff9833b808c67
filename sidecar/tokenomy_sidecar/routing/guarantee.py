"""Cuts with a finite-sample guarantee: the quality target holds on unseen data, with confidence.

A cut chosen where the calibration data *just* reaches the target misses it
on new data about half the time (seen: 44 % of held-out splits). Here the
cut is chosen by Learn then Test (Angelopoulos, Bates, Candès, Jordan, Lei,
"Learn then Test: Calibrating Predictive Algorithms to Achieve Risk
Control", 2021) with fixed-sequence testing: candidate cuts are tested from
the safest (everything to the strong model) towards the cheapest, each with
the null hypothesis "at this cut, quality falls below the target on the
population"; testing stops at the first cut whose null cannot be rejected,
and the last rejected one is used. Fixed-sequence testing needs no
correction for the number of cuts tried: the chance that the chosen cut
misses the target is at most ``1 - confidence``.

The per-query loss at a cut is ``fraction * strong_i - routed_i`` (the
target is met when its mean is at most 0), bounded in ``[-1, fraction]``
for scores in [0, 1]. Each null is tested by betting (Waudby-Smith and
Ramdas, "Estimating means of bounded random variables by betting", 2023): a
wealth that bets against "the mean loss is at least 0" over the queries in
their (random) order, with bets sized by the running variance; by Ville's
inequality it reaches ``1 / (1 - confidence)`` with at most that chance when
the null is true. Unlike Hoeffding or empirical Bernstein bounds it adapts
to the loss's variance without a large constant: on 200 queries where
routing changes nothing, it certifies what a Bernstein bound cannot. Cuts
are tried on a grid of :data:`GRID` quantiles. The calibration queries must
be scored by the deployed model and unseen by its training, or the
guarantee is about something else.

This module lives with the models because the sidecar runs it too: a
trained model carries its calibration queries (:class:`Calibration`), so the
cut for the policy's own ``quality`` target and confidence is chosen where
the model is loaded, not fixed when it was trained.
"""

from __future__ import annotations

import functools
import math
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np
import numpy.typing as npt

Array = npt.NDArray[np.float64]

GRID = 200
"""Candidate cuts, at evenly spaced ranks of the calibration scores."""


def rejects(x: Array, m0: float | Array, delta: float) -> npt.NDArray[np.bool_]:
    """Per row of ``x`` (values in [0, 1], in sampling order): whether betting rejects
    "the mean is at least ``m0``" (one per row, or one for all) at level ``delta``."""
    rows, n = x.shape
    t = np.arange(1, n + 1)
    mean = (0.5 + np.cumsum(x, axis=1)) / (t + 1)
    variance = (0.25 + np.cumsum((x - mean) ** 2, axis=1)) / (t + 1)
    before = np.concatenate([np.full((rows, 1), 0.25), variance[:, :-1]], axis=1)
    log = math.log(1 / delta)
    m0 = np.broadcast_to(np.asarray(m0, dtype=np.float64), (rows,))[:, None]
    # Bets sized for a fixed horizon n; at most half the wealth on any one query.
    bet = np.minimum(np.sqrt(2 * log / (n * before)), 0.5 / (1 - m0))
    wealth = np.cumsum(np.log1p(-bet * (x - m0)), axis=1)
    passed: npt.NDArray[np.bool_] = wealth.max(axis=1) >= log
    return passed


def guaranteed_cut(
    scores: Array,
    weak_q: Array,
    strong_q: Array,
    fraction: float,
    confidence: float,
    batch: int | None = None,
) -> float:
    """The cheapest cut (strong where ``score >= cut``) whose quality, as a share of the
    strong model's, is at least ``fraction`` with probability ``confidence``.

    On the population of requests; or, with ``batch``, on a batch of that many
    new requests too: half the risk then goes to that batch's own sampling
    noise, a Bernstein margin from the loss's variance on the calibration
    queries (a measured split is such a batch). ``-inf`` (everything to the
    strong model) when the data supports no saving.
    """
    n = len(scores)
    if n < 2:
        return -math.inf
    ranked = np.sort(scores, kind="stable")
    # prefix k: queries scored under ranked[k] go to the weak model (ties move together)
    ks = np.unique(np.linspace(0, n, GRID + 1).round().astype(int))
    cuts = np.array([ranked[k] if k < n else math.inf for k in ks])
    weak = scores[None, :] < cuts[:, None]
    loss = np.where(weak, fraction * strong_q - weak_q, fraction * strong_q - strong_q)
    passed = last_passing(loss, fraction, confidence, batch)
    best = float(cuts[passed]) if passed >= 0 else -math.inf
    return best if best != float(ranked[0]) else -math.inf


def last_passing(loss: Array, fraction: float, confidence: float, batch: int | None) -> int:
    """Fixed-sequence testing over candidates ordered safest first: the index of the last
    one whose mean loss is shown below 0 before the first that is not; -1 for none.

    ``loss``: one row per candidate, the per-query loss ``fraction * reference -
    routed`` (in ``[-1, fraction]``) in sampling order. ``batch``: see
    :func:`guaranteed_cut`.
    """
    delta = 1.0 - confidence
    margin = np.zeros(len(loss))
    if batch:
        delta /= 2
        log = math.log(1 / delta)
        margin = np.sqrt(2 * loss.var(axis=1) * log / batch) + 2 * (1 + fraction) * log / (
            3 * batch
        )
    # Test "mean loss >= -margin" on the loss shifted by the margin, scaled into [0, 1].
    low, high = -1.0, fraction + margin
    passed = rejects(
        (loss + margin[:, None] - low) / (high - low)[:, None], -low / (high - low), delta
    )
    failed = np.flatnonzero(~passed)
    return int(failed[0]) - 1 if len(failed) else len(passed) - 1


@dataclass(frozen=True, eq=False)
class Calibration:
    """What a model's cut is chosen on: its scores on queries it never saw, and how well
    the cheaper and the reference tier answered each (in sampling order)."""

    scores: Array
    """The decision score per query (to the reference tier at or above the cut)."""
    weak: Array
    """Quality of the cheaper tier's answer, in [0, 1]."""
    strong: Array
    """Quality of the reference tier's answer, in [0, 1]."""

    def __post_init__(self) -> None:
        if not len(self.scores) == len(self.weak) == len(self.strong):
            raise ValueError("calibration arrays differ in length")

    @functools.lru_cache(maxsize=16)  # noqa: B019 - a handful of (target, confidence) pairs
    def cut(self, fraction: float, confidence: float) -> float:
        """:func:`guaranteed_cut` on these queries, for new requests (no batch)."""
        return guaranteed_cut(self.scores, self.weak, self.strong, fraction, confidence)


def packed(calibration: Calibration | None) -> npt.NDArray[np.float64]:
    """A calibration as three rows of one array, for a model file; empty for None."""
    if calibration is None:
        return np.zeros((0, 0))
    return np.stack([calibration.scores, calibration.weak, calibration.strong])


def unpacked(data: Mapping[str, npt.NDArray[Any]], key: str) -> Calibration | None:
    """The calibration stored under ``key`` (None when absent or empty, as in files from
    before); ValueError when it is not three rows of scores and qualities in 0..1."""
    if key not in data or not data[key].size:
        return None
    rows = data[key]
    if rows.ndim != 2 or len(rows) != 3:
        raise ValueError(f"{key} is not three rows")
    scores, weak, strong = (np.asarray(r, dtype=np.float64) for r in rows)
    quality = np.concatenate([weak, strong])
    if np.isnan(scores).any() or not ((quality >= 0) & (quality <= 1)).all():
        raise ValueError(f"{key} holds a score that is not a number or a quality outside 0..1")
    return Calibration(scores, weak, strong)
