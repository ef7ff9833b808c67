"""``tokenomy eval routing``: fit on the train split, choose the cut there, report on test.

The router is the sidecar's own: the complexity model
(:mod:`tokenomy_sidecar.routing.complexity`) predicts the chance that the
strong model answers better, and the decision is
:func:`tokenomy_sidecar.routing.decision.complexity_tier` on a two-tier route
priced like the data. The model is the average of 5 fold models and its cut
is chosen on their out-of-fold scores on the training data, so nothing on the
test split was tuned on it.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from decimal import Decimal

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

FOLDS = 5
MILLION = Decimal(1_000_000)


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


def cross_fit(
    queries: Sequence[Query], weak: str, strong: str
) -> tuple[np.ndarray, ComplexityModel]:
    """Out-of-fold predictions for the training queries, and the fold models' average.

    The cut is chosen on the out-of-fold predictions; the deployed model is
    the average of the same fold models, so its scores are on the same scale.
    A model refitted on all the data scores more confidently, and a cut
    chosen on out-of-fold scores then misses its target (seen: GSM8K quality
    anywhere from 90 % to 100 % across split seeds).
    """
    predictions = np.empty(len(queries))
    models = []
    for fold in range(FOLDS):
        rest = [q for i, q in enumerate(queries) if i % FOLDS != fold]
        fitted = ComplexityModel.empty().fit(
            [q.prompt for q in rest], [gain_label(q, weak, strong) for q in rest]
        )
        models.append(fitted)
        for i in range(fold, len(queries), FOLDS):
            predictions[i] = fitted.score(queries[i].prompt)
    return predictions, ComplexityModel.average(models)


def choose_threshold(
    scores: np.ndarray, weak_q: np.ndarray, strong_q: np.ndarray, fraction: float
) -> float:
    """The highest score cut whose quality reaches ``fraction`` of the strong model's."""
    target = fraction * strong_q.mean()
    for cut in np.unique(scores)[::-1]:
        routed = np.where(scores >= cut, strong_q, weak_q).mean()
        if routed >= target:
            return float(cut)
    return float("-inf")


def stable_threshold(
    scores: np.ndarray,
    weak_q: np.ndarray,
    strong_q: np.ndarray,
    fraction: float,
    resamples: int = 100,
    seed: int = 0,
) -> float:
    """The median of :func:`choose_threshold` over bootstrap resamples of the training data.

    A cut chosen once on a few hundred queries swings with which queries
    happen to be in the split (GSM8K: 93-99 % quality across seeds); the
    median over resamples is the cut the data supports, not the one its
    noise does.
    """
    rng = np.random.default_rng(seed)
    finite = np.isfinite(scores)
    cuts = []
    for _ in range(resamples):
        pick = rng.integers(0, len(scores), len(scores))
        cut = choose_threshold(scores[pick], weak_q[pick], strong_q[pick], fraction)
        cuts.append(cut if np.isfinite(cut) else float(scores[finite].min(initial=0.0)))
    return float(np.median(cuts))


@dataclass(frozen=True)
class Pair:
    """The two models compared and their prices."""

    weak: str
    strong: str
    weak_price: Price
    strong_price: Price

    def route(self) -> CompiledRoute:
        """A two-tier route priced like the data, for the sidecar's decision function."""

        def tier(name: str, model: str, p: Price) -> CompiledTier:
            backend = CompiledBackend(
                name=name, cluster=f"eval/{name}", provider="openai", model=model,
                endpoints=[], price=p, weight=1,
            )  # fmt: skip
            return CompiledTier(name=name, backends=[backend])

        return CompiledRoute(
            name="eval",
            model="eval",
            tiers=[
                tier("weak", self.weak, self.weak_price),
                tier("strong", self.strong, self.strong_price),
            ],
            default_tier="strong",
            reference_tier="strong",
            cascade_tiers=[],
            retry=CompiledRetry(attempts=3, timeout_seconds=60),
        )


def pair_for(queries: Sequence[Query], weak: str, strong: str, prices: Mapping[str, Price]) -> Pair:
    """Prices from the table, or per token from the recorded costs when there is no table."""

    def of(model: str) -> Price:
        if model in prices:
            return prices[model]
        costs = query_costs(queries, model, prices, 1)
        tokens = sum(q.tokens.get(model, (estimate_tokens(q.prompt), 1))[0] for q in queries)
        per_million = Decimal(str(costs.sum())) * MILLION / max(1, tokens)
        return price(per_million, per_million)

    return Pair(weak, strong, of(weak), of(strong))


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
    train_set: Sequence[Query], pair: Pair, fraction: float, cost_aware: bool = True
) -> ComplexityModel:
    """The complexity model with its cut calibrated for ``fraction`` of the strong quality."""
    predictions, model = cross_fit(train_set, pair.weak, pair.strong)
    model.mean_input_tokens, model.mean_output_tokens = mean_tokens(
        train_set, [pair.weak, pair.strong]
    )
    scores = scores_for(model, pair, train_set, predictions, cost_aware)
    tw = np.array([q.scores[pair.weak] for q in train_set])
    ts = np.array([q.scores[pair.strong] for q in train_set])
    model.cut = stable_threshold(scores, tw, ts, fraction)
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
    return complexity_tier(pair.route(), c, cost_aware).tier == "strong"


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
    cpt50: float
    apgr: float


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
) -> Evaluation:
    """The complexity router (cut from train) beside the random, cost-only and perfect routers.

    The baselines' rows are the best point of their curve on the test split
    (an upper bound for them); the router's row is what its cut did.
    """
    pair = pair_for([*train_set, *test_set], weak, strong, prices)
    model = fit_router(train_set, pair, fraction, cost_aware)
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
    return Evaluation(rows, curves, float(sc.sum()), float(sq.mean()))
