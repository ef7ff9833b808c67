"""``tokenomy eval routing``: fit on the train split, choose the threshold there, report on test.

The router is the sidecar's own complexity model
(:mod:`tokenomy_sidecar.routing.complexity`): the average of 5 fold models,
its threshold chosen on their out-of-fold scores on the training data, so no
number on the test split was tuned on it.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from decimal import Decimal

import numpy as np

from tokenomy_eval import metrics
from tokenomy_eval.dataset import Query
from tokenomy_sidecar.routing.complexity import ComplexityModel

FOLDS = 5


@dataclass(frozen=True)
class Price:
    """USD per million tokens."""

    input: Decimal
    output: Decimal


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
        tokens_in, tokens_out = q.tokens.get(model, (len(q.prompt) // 4, default_output))
        price = prices[model]
        out[i] = float((tokens_in * price.input + tokens_out * price.output) / Decimal(1_000_000))
    return out


def train(queries: Sequence[Query], weak: str) -> ComplexityModel:
    """The complexity model on these queries; label 1 where the weak model's answer failed."""
    return ComplexityModel.empty().fit(
        [q.prompt for q in queries], [1.0 - q.scores[weak] for q in queries]
    )


def cross_fit(queries: Sequence[Query], weak: str) -> tuple[np.ndarray, ComplexityModel]:
    """Out-of-fold scores for the training queries, and the fold models' average.

    The threshold is chosen on the out-of-fold scores; the deployed model is
    the average of the same fold models, so its scores are on the same scale.
    A model refitted on all the data scores more confidently, and a
    threshold chosen on out-of-fold scores then misses its target (seen:
    GSM8K quality anywhere from 90 % to 100 % across split seeds).
    """
    scores = np.empty(len(queries))
    models = []
    for fold in range(FOLDS):
        fitted = train([q for i, q in enumerate(queries) if i % FOLDS != fold], weak)
        models.append(fitted)
        for i in range(fold, len(queries), FOLDS):
            scores[i] = fitted.score(queries[i].prompt)
    return scores, ComplexityModel.average(models)


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


@dataclass(frozen=True)
class Row:
    """One router's results on the test split."""

    name: str
    cost_reduction: float
    strong_share: float
    quality: float
    cpt50: float
    apgr: float


def evaluate(
    train_set: Sequence[Query],
    test_set: Sequence[Query],
    weak: str,
    strong: str,
    prices: Mapping[str, Price],
    default_output: int = 5,
    fraction: float = 0.95,
) -> list[Row]:
    """The complexity router (threshold from train) beside the random and perfect routers."""
    tw = np.array([q.scores[weak] for q in train_set])
    ts = np.array([q.scores[strong] for q in train_set])
    out_of_fold, model = cross_fit(train_set, weak)
    cut = choose_threshold(out_of_fold, tw, ts, fraction)
    wq = np.array([q.scores[weak] for q in test_set])
    sq = np.array([q.scores[strong] for q in test_set])
    wc = query_costs(test_set, weak, prices, default_output)
    sc = query_costs(test_set, strong, prices, default_output)
    scores = np.array([model.score(q.prompt) for q in test_set])
    to_strong = scores >= cut
    chosen_cost = np.where(to_strong, sc, wc).sum()
    curves = {
        "complexity router": metrics.curve(scores, wq, sq, wc, sc),
        "random router": metrics.random_curve(wq, sq, wc, sc),
        "perfect router": metrics.curve(metrics.perfect_scores(wq, sq), wq, sq, wc, sc),
    }
    rows = []
    for name, c in curves.items():
        if name == "complexity router":
            reduction, share = 1 - chosen_cost / sc.sum(), float(to_strong.mean())
            quality = float(np.where(to_strong, sq, wq).mean())
        else:
            reduction, share = metrics.cost_reduction_at(c, sq.mean(), sc.sum(), fraction)
            quality = float(np.interp(share, c.shares, c.quality))
        rows.append(
            Row(
                name,
                reduction,
                share,
                quality / sq.mean(),
                metrics.cpt(c, wq.mean(), sq.mean(), 0.5),
                metrics.apgr(c, wq.mean(), sq.mean()),
            )
        )
    return rows
