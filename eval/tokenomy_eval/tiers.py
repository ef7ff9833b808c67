"""``tokenomy eval routing --tiers A,B,C``: complexity routing over more than two tiers.

The sidecar's own decision (:func:`~tokenomy_sidecar.routing.decision.complexity_tier`)
on a route of the listed models, cheapest first, the last the reference: one
complexity model, trained on the share of cheaper tiers the reference beats
(:func:`graded`), and one cut, each tier above the cheapest skipping at a cut
raised evenly towards 1, so that a middle tier takes the middle scores. The
cut is chosen on calibration queries with the same guarantee as two-tier
routing (:mod:`tokenomy_eval.guarantee`).
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import numpy as np

from tokenomy_api.compiled import Price
from tokenomy_eval.dataset import Query, split
from tokenomy_eval.routing import (
    CONFIDENCE,
    RANDOM_CALIBRATED,
    Evaluation,
    Row,
    calibration_split,
    mean_tokens,
    model_price,
    query_costs,
    route_of,
)
from tokenomy_sidecar.routing.complexity import ComplexityModel
from tokenomy_sidecar.routing.decision import (
    Complexity,
    complexity_tier,
    estimate_tokens,
    relative_cost,
    routing_score,
)
from tokenomy_sidecar.routing.guarantee import GRID, last_passing


def graded(q: Query, models: Sequence[str]) -> float:
    """The share of the cheaper tiers the reference answers better than: 0 where the
    cheapest does as well, 1 where only the reference will do, between for a middle tier's
    questions (with two tiers, the two-tier router's label)."""
    reference = q.scores[models[-1]]
    return float(np.mean([reference > q.scores[m] for m in models[:-1]]))


def tier_scores(
    gains: np.ndarray,
    queries: Sequence[Query],
    prices: Sequence[Price],
    model: ComplexityModel,
    cost_aware: bool,
) -> np.ndarray:
    """Each query's score against each cheaper tier (queries x tiers-1), as the sidecar
    weighs it."""
    out = np.empty((len(queries), len(prices) - 1))
    for i, q in enumerate(queries):
        for t in range(len(prices) - 1):
            relative = (
                relative_cost(
                    prices[t], prices[-1], estimate_tokens(q.prompt),
                    model.mean_output_tokens, model.mean_input_tokens,
                )
                if cost_aware
                else 1.0
            )  # fmt: skip
            out[i, t] = routing_score(float(gains[i]), relative)
    return out


def bands(scores: np.ndarray, cut: float) -> np.ndarray:
    """The tier each query starts on at this cut (complexity_tier, vectorised)."""
    cheaper = scores.shape[1]
    if not math.isfinite(cut):
        return np.full(len(scores), 0 if cut > 0 else cheaper)
    cuts = cut + (1.0 - cut) * np.arange(cheaper) / cheaper
    under = scores < cuts[None, :]
    tier: np.ndarray = np.where(under.any(axis=1), under.argmax(axis=1), cheaper)
    return tier


def choose_cut(
    scores: np.ndarray, quality: np.ndarray, fraction: float, confidence: float, batch: int
) -> float:
    """The cheapest cut keeping ``fraction`` of the reference quality (the last column of
    ``quality``), tried from the safest (``-inf``, all on the reference) upwards."""
    grid = np.unique(np.quantile(scores[:, 0], np.linspace(0, 1, GRID)))
    cuts = np.array([-math.inf, *grid, math.inf])
    rows = np.arange(len(scores))
    loss = np.array([fraction * quality[:, -1] - quality[rows, bands(scores, c)] for c in cuts])
    passed = last_passing(loss, fraction, confidence, batch)
    return float(cuts[passed]) if passed >= 0 else -math.inf


def evaluate_tiers(
    train_set: Sequence[Query],
    test_set: Sequence[Query],
    models: Sequence[str],
    prices: Mapping[str, Price],
    default_output: int = 5,
    fraction: float = 0.95,
    cost_aware: bool = True,
    confidence: float = CONFIDENCE,
) -> Evaluation:
    """Routing over ``models`` (cheapest first) beside each model alone and the oracle."""
    if len(models) < 2:
        raise ValueError("--tiers needs two models at least, cheapest first")
    everything = [*train_set, *test_set]
    tier_prices = [model_price(everything, m, prices) for m in models]
    route = route_of(models, tier_prices)
    fit, calibrate = calibration_split(train_set)
    model = ComplexityModel.empty().fit([q.prompt for q in fit], [graded(q, models) for q in fit])
    model.mean_input_tokens, model.mean_output_tokens = mean_tokens(fit, models)

    def quality(queries: Sequence[Query]) -> np.ndarray:
        return np.array([[q.scores[m] for m in models] for q in queries])

    gains = np.array([model.score(q.prompt) for q in calibrate])
    scores = tier_scores(gains, calibrate, tier_prices, model, cost_aware)
    model.cut = choose_cut(scores, quality(calibrate), fraction, confidence, len(test_set))
    q_test = quality(test_set)
    cost = np.array(
        [query_costs(test_set, m, prices, default_output) for m in models]
    ).T  # queries x models
    rows = np.arange(len(test_set))
    chosen = np.array([
        int(complexity_tier(route, Complexity(
            gain=model.score(q.prompt), cut=model.cut, input_tokens=estimate_tokens(q.prompt),
            output_tokens=model.mean_output_tokens, mean_input_tokens=model.mean_input_tokens,
        ), cost_aware).tier[1:])
        for q in test_set
    ])  # fmt: skip
    reference_cost = cost[:, -1].sum()
    reference_quality = q_test[:, -1].mean()

    def row(name: str, tier: np.ndarray) -> Row:
        return Row(
            name,
            float(1 - cost[rows, tier].sum() / reference_cost),
            float((tier == len(models) - 1).mean()),
            float(q_test[rows, tier].mean() / reference_quality),
            None,
            None,
        )

    out = [row(f"complexity router ({len(models)} tiers)", chosen)]
    rng = np.random.default_rng(len(calibrate))
    noise = np.repeat(rng.uniform(0, 1, (len(calibrate), 1)), len(models) - 1, axis=1)
    random_cut = choose_cut(noise, quality(calibrate), fraction, confidence, len(test_set))
    test_noise = np.repeat(rng.uniform(0, 1, (len(test_set), 1)), len(models) - 1, axis=1)
    out.append(row(RANDOM_CALIBRATED, bands(test_noise, random_cut)))
    for i, m in enumerate(models):
        out.append(row(f"all on {m}", np.full(len(test_set), i)))
    # The oracle: the cheapest model as good as the reference on each query.
    good = q_test >= q_test[:, -1:]
    priced = np.where(good, cost, np.inf)
    out.append(row("perfect router", priced.argmin(axis=1)))
    return Evaluation(out, {}, float(reference_cost), float(reference_quality))


@dataclass(frozen=True)
class Candidate:
    """One set of tiers, as judged on the selection half of the training split."""

    models: tuple[str, ...]
    cost: float
    """Cost of its router on the selection half, as a share of the reference alone."""
    quality: float
    """Its quality there, as a share of the reference's."""


def recommend(
    train_set: Sequence[Query],
    test_set: Sequence[Query],
    models: Sequence[str],
    reference: str,
    prices: Mapping[str, Price],
    max_tiers: int = 3,
    fraction: float = 0.95,
    confidence: float = CONFIDENCE,
    cost_aware: bool = True,
) -> tuple[list[Candidate], Row | None]:
    """Every route of up to ``max_tiers`` of ``models`` ending in ``reference``, judged
    on half of ``train_set`` (routers fit on the other half), cheapest first; and the
    cheapest one that kept ``fraction`` there, scored on ``test_set`` (None if none did)."""
    everything = [*train_set, *test_set]

    def cost(m: str) -> float:
        p = model_price(everything, m, prices)
        return float(p.input + p.output)

    # Cheaper tiers only: one that costs more than the reference saves nothing.
    by_price = sorted((m for m in models if cost(m) < cost(reference)), key=cost)
    fit, judge = split(train_set, 0.5, 0)
    found = []
    for size in range(1, max_tiers):
        for cheaper in itertools.combinations(by_price, size):
            chain = (*cheaper, reference)
            first = evaluate_tiers(
                fit, judge, chain, prices, fraction=fraction, cost_aware=cost_aware,
                confidence=confidence,
            ).rows[0]  # fmt: skip
            found.append(Candidate(chain, 1 - first.cost_reduction, first.quality))
    found.sort(key=lambda c: c.cost)
    best = next((c for c in found if c.quality >= fraction), None)
    if best is None:
        return found, None
    scored = evaluate_tiers(
        train_set, test_set, best.models, prices, fraction=fraction, cost_aware=cost_aware,
        confidence=confidence,
    ).rows[0]  # fmt: skip
    return found, scored
