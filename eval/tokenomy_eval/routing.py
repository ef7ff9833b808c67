"""``tokenomy eval routing``: fit on the train split, choose the cut there, report on test.

The router is the sidecar's own: the complexity model
(:mod:`tokenomy_sidecar.routing.complexity`) predicts the chance that the
strong model answers better, and the decision is
:func:`tokenomy_sidecar.routing.decision.complexity_tier` on a two-tier route
priced like the data. The model is fit on half of the training split and its
cut chosen on the other half with a finite-sample guarantee
(:mod:`tokenomy_eval.guarantee`), so nothing on the test split was tuned on
it.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from decimal import Decimal
from typing import TypeVar

import numpy as np

from tokenomy_api.compiled import CompiledBackend, CompiledRetry, CompiledRoute, CompiledTier, Price
from tokenomy_eval import metrics
from tokenomy_eval.dataset import Query
from tokenomy_sidecar.routing.complexity import ComplexityModel
from tokenomy_sidecar.routing.decision import (
    Complexity,
    complexity_tier,
    estimate_tokens,
    relative_cost,
    routing_score,
)
from tokenomy_sidecar.routing.guarantee import Calibration, guaranteed_cut

FOLDS = 5
MILLION = Decimal(1_000_000)
CALIBRATION = 0.5
"""Share of the training queries kept apart to choose the cut on: the guarantee needs
queries the model never saw, and its bound tightens with their number."""
CONFIDENCE = 0.9
"""Default probability that the quality target holds on unseen data."""
Q = TypeVar("Q")


def price(text_in: str | Decimal, text_out: str | Decimal) -> Price:
    """A price in USD per million tokens."""
    return Price(input=Decimal(text_in), output=Decimal(text_out))


def query_costs(
    queries: Sequence[Query], model: str, prices: Mapping[str, Price], default_output: int
) -> np.ndarray:
    """Each query's cost on ``model``: recorded, or tokens times the price table."""
    out = np.empty(len(queries))
    for i, q in enumerate(queries):
        if model in q.costs:
            out[i] = float(q.costs[model])
            continue
        if model not in prices:
            raise ValueError(
                f"no cost recorded for {model} and no price for it: pass --price {model}=IN/OUT"
            )
        tokens_in, tokens_out = q.tokens.get(model, (estimate_tokens(q.prompt), default_output))
        p = prices[model]
        out[i] = float((tokens_in * p.input + tokens_out * p.output) / MILLION)
    return out


def gain_label(q: Query, weak: str, strong: str) -> float:
    """1 where the strong model answered better: the only queries worth escalating."""
    return 1.0 if q.scores[strong] > q.scores[weak] else 0.0


def calibration_split(queries: Sequence[Q], seed: int = 0) -> tuple[list[Q], list[Q]]:
    """A fixed-seed split of the training queries: what the model is fit on, and the
    calibration queries its cut is chosen on (scored by the fitted model, unseen by it)."""
    order = np.random.default_rng(seed).permutation(len(queries))
    cut = round(len(queries) * (1 - CALIBRATION))
    return [queries[i] for i in order[:cut]], [queries[i] for i in order[cut:]]


@dataclass(frozen=True)
class Pair:
    """The two models compared and their prices."""

    weak: str
    strong: str
    weak_price: Price
    strong_price: Price

    def route(self) -> CompiledRoute:
        """A two-tier route priced like the data, for the sidecar's decision function."""
        return route_of([self.weak, self.strong], [self.weak_price, self.strong_price])


def route_of(models: Sequence[str], prices: Sequence[Price]) -> CompiledRoute:
    """A route of these models, cheapest first (tiers ``t0``, ``t1``, …), the last the
    reference."""
    tiers = []
    for i, (model, p) in enumerate(zip(models, prices, strict=True)):
        backend = CompiledBackend(
            name=f"t{i}", cluster=f"eval/t{i}", provider="openai", model=model,
            endpoints=[], price=p, weight=1,
        )  # fmt: skip
        tiers.append(CompiledTier(name=f"t{i}", backends=[backend]))
    last = tiers[-1].name
    return CompiledRoute(
        name="eval", model="eval", tiers=tiers, default_tier=last, reference_tier=last,
        cascade_tiers=[], retry=CompiledRetry(attempts=3, timeout_seconds=60),
    )  # fmt: skip


def model_price(queries: Sequence[Query], model: str, prices: Mapping[str, Price]) -> Price:
    """A model's price from the table, or per token from its recorded costs."""
    if model in prices:
        return prices[model]
    costs = query_costs(queries, model, prices, 1)
    tokens = sum(q.tokens.get(model, (estimate_tokens(q.prompt), 1))[0] for q in queries)
    per_million = Decimal(str(costs.sum())) * MILLION / max(1, tokens)
    return price(per_million, per_million)


def pair_for(queries: Sequence[Query], weak: str, strong: str, prices: Mapping[str, Price]) -> Pair:
    """Prices from the table, or per token from the recorded costs when there is no table."""
    return Pair(
        weak, strong, model_price(queries, weak, prices), model_price(queries, strong, prices)
    )


def mean_tokens(queries: Sequence[Query], models: Sequence[str]) -> tuple[float, float]:
    """Average (input, output) tokens over the queries, outputs over ``models``' answers."""
    inputs = [estimate_tokens(q.prompt) for q in queries]
    outputs = [q.tokens[m][1] for q in queries for m in models if m in q.tokens]
    return float(np.mean(inputs)), float(np.mean(outputs)) if outputs else 1.0


def scores_for(
    model: ComplexityModel,
    pair: Pair,
    queries: Sequence[Query],
    predictions: np.ndarray,
    cost_aware: bool,
) -> np.ndarray:
    """Routing scores (the sidecar's :func:`routing_score`) from the model's predictions."""
    if not cost_aware:
        return predictions
    relative = np.array(
        [
            relative_cost(
                pair.weak_price, pair.strong_price, estimate_tokens(q.prompt),
                model.mean_output_tokens, model.mean_input_tokens,
            )
            for q in queries
        ]
    )  # fmt: skip
    return np.array([routing_score(g, r) for g, r in zip(predictions, relative, strict=True)])


def fit_router(
    train_set: Sequence[Query],
    pair: Pair,
    fraction: float,
    cost_aware: bool = True,
    confidence: float = CONFIDENCE,
    batch: int | None = None,
) -> ComplexityModel:
    """The complexity model, fit on part of ``train_set``, with the cut that keeps
    ``fraction`` of the strong quality with probability ``confidence`` (the rest of it).

    The cut is ``-inf`` (everything to the strong tier) when the calibration
    queries support no saving at that confidence. ``batch``: the guarantee also
    covers a batch of that many requests (:func:`guaranteed_cut`).
    """
    fit, calibrate = calibration_split(train_set)
    model = ComplexityModel.empty().fit(
        [q.prompt for q in fit], [gain_label(q, pair.weak, pair.strong) for q in fit]
    )
    model.mean_input_tokens, model.mean_output_tokens = mean_tokens(fit, [pair.weak, pair.strong])
    predictions = np.array([model.score(q.prompt) for q in calibrate])
    scores = scores_for(model, pair, calibrate, predictions, cost_aware)
    tw = np.array([q.scores[pair.weak] for q in calibrate])
    ts = np.array([q.scores[pair.strong] for q in calibrate])
    model.cut = guaranteed_cut(scores, tw, ts, fraction, confidence, batch)
    model.calibration = Calibration(scores, tw, ts)
    return model


def decide(model: ComplexityModel, pair: Pair, query: Query, cost_aware: bool) -> bool:
    """Whether the sidecar's decision function sends ``query`` to the strong tier."""
    c = Complexity(
        gain=model.score(query.prompt),
        cut=model.cut,
        input_tokens=estimate_tokens(query.prompt),
        output_tokens=model.mean_output_tokens,
        mean_input_tokens=model.mean_input_tokens,
    )
    return complexity_tier(pair.route(), c, cost_aware).tier == "t1"


def outcomes(
    queries: Sequence[Query],
    weak: str,
    strong: str,
    prices: Mapping[str, Price],
    default_output: int,
) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """(weak quality, strong quality, weak cost, strong cost) per query."""
    return (
        np.array([q.scores[weak] for q in queries]),
        np.array([q.scores[strong] for q in queries]),
        query_costs(queries, weak, prices, default_output),
        query_costs(queries, strong, prices, default_output),
    )  # fmt: skip


@dataclass(frozen=True)
class Row:
    """One router's results on the test split."""

    name: str
    cost_reduction: float
    strong_share: float
    quality: float
    cpt50: float | None
    """RouteLLM's CPT(50 %); None where no call curve is traced (it is not invented)."""
    apgr: float | None


@dataclass(frozen=True)
class Evaluation:
    """The rows of the table, and each router's curve on the test split."""

    rows: list[Row]
    curves: dict[str, metrics.Curve]
    strong_cost: float
    """Cost of sending every test query to the strong model."""
    strong_quality: float
    """The strong model's mean score on the test split."""


def evaluate(
    train_set: Sequence[Query],
    test_set: Sequence[Query],
    weak: str,
    strong: str,
    prices: Mapping[str, Price],
    default_output: int = 5,
    fraction: float = 0.95,
    cost_aware: bool = True,
    confidence: float = CONFIDENCE,
    model: ComplexityModel | None = None,
) -> Evaluation:
    """The complexity router (cut from train, or ``model`` as saved with the cut it
    chooses for ``fraction`` and ``confidence``, as in the sidecar) beside the random,
    cost-only and perfect routers.

    The baselines' rows are the best point of their curve on the test split
    (an upper bound for them); the router's row is what its cut did.
    """
    pair = pair_for([*train_set, *test_set], weak, strong, prices)
    if model is None:
        # The target is judged on the test split: a batch of its size.
        model = fit_router(train_set, pair, fraction, cost_aware, confidence, len(test_set))
    else:  # a saved one, with the cut the sidecar would choose for this target
        model = dataclasses.replace(model, cut=model.cut_for(fraction, confidence))
    wq, sq, wc, sc = outcomes(test_set, weak, strong, prices, default_output)
    predictions = np.array([model.score(q.prompt) for q in test_set])
    scores = scores_for(model, pair, test_set, predictions, cost_aware)
    to_strong = np.array([decide(model, pair, q, cost_aware) for q in test_set])
    curves = {
        "complexity router": metrics.curve(scores, wq, sq, wc, sc),
        "random router": metrics.random_curve(wq, sq, wc, sc),
        "cost only (cheapest calls to strong)": metrics.curve(-(sc - wc), wq, sq, wc, sc),
        "perfect router": metrics.curve(metrics.perfect_scores(wq, sq), wq, sq, wc, sc),
    }
    # CPT and APGR count calls (RouteLLM's definitions): rank by predicted gain alone.
    by_calls = {**curves, "complexity router": metrics.curve(predictions, wq, sq, wc, sc)}
    rows = []
    for name, c in curves.items():
        if name == "complexity router":
            reduction = 1 - np.where(to_strong, sc, wc).sum() / sc.sum()
            share = float(to_strong.mean())
            quality = float(np.where(to_strong, sq, wq).mean())
        else:
            reduction, share = metrics.cost_reduction_at(c, sq.mean(), sc.sum(), fraction)
            quality = float(np.interp(share, c.shares, c.quality))
        rows.append(
            Row(
                name,
                float(reduction),
                share,
                quality / sq.mean(),
                metrics.cpt(by_calls[name], wq.mean(), sq.mean(), 0.5),
                metrics.apgr(by_calls[name], wq.mean(), sq.mean()),
            )
        )
    rows.append(
        calibrated_random(train_set, (wq, sq, wc, sc), pair, fraction, confidence, default_output)
    )
    return Evaluation(rows, curves, float(sc.sum()), float(sq.mean()))


RANDOM_CALIBRATED = "random, calibrated the same way"


def calibrated_random(
    train_set: Sequence[Query],
    test: tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray],
    pair: Pair,
    fraction: float,
    confidence: float,
    default_output: int,
) -> Row:
    """A router that knows nothing, its cut chosen with the same guarantee: the baseline
    a guaranteed router must beat (the random curve's best test point knows the test)."""
    wq, sq, wc, sc = test
    _, calibrate = calibration_split(train_set)
    cw = np.array([q.scores[pair.weak] for q in calibrate])
    cs = np.array([q.scores[pair.strong] for q in calibrate])
    rng = np.random.default_rng(len(calibrate))
    cut = guaranteed_cut(rng.uniform(0, 1, len(calibrate)), cw, cs, fraction, confidence, len(wq))
    to_strong = rng.uniform(0, 1, len(wq)) >= cut
    quality = float(np.where(to_strong, sq, wq).mean())
    reduction = 1 - float(np.where(to_strong, sc, wc).sum() / sc.sum())
    share = float(to_strong.mean())
    return Row(RANDOM_CALIBRATED, reduction, share, quality / sq.mean(), None, None)
