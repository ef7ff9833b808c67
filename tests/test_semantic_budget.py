"""The wrong-hit budget: bounds, cuts chosen from outcomes, agreement, answers compared."""

from __future__ import annotations

import math

import numpy as np
import orjson
import pytest

from tokenomy_api.bounds import Z_99, wilson_upper
from tokenomy_sidecar.semantic_budget import (
    NO_CUTS,
    Cuts,
    Outcome,
    WrongHitBudget,
    agreement,
    answer_of,
    cuts,
    decide,
    wilson_upper_each,
)


@pytest.mark.parametrize(
    ("wrong", "n", "low", "high"),
    [
        (0, 0, 1.0, 1.0),  # nothing seen: nothing known
        (0, 10, 0.3, 0.4),  # ten right answers do not show 2 %
        (0, 1_000, 0.005, 0.006),
        (20, 1_000, 0.032, 0.034),  # 2 % seen: the bound sits above it
        (1_000, 1_000, 0.99, 1.0),
        (2.5, 100.5, 0.08, 0.10),  # weighted counts are fractional
    ],
)
def testwilson_upper_each(wrong: float, n: float, low: float, high: float) -> None:
    assert low <= wilson_upper(wrong, n) <= high
    if n:  # the scan's element-wise bound is the same one
        scan = wilson_upper_each(np.array([wrong / n]), np.array([n]), Z_99)
        assert scan[0] == pytest.approx(wilson_upper(wrong, n))


def synthetic(n: int, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    similarity = rng.uniform(0.5, 1.0, n)
    correct = rng.uniform(0, 1, n) > (1.0 - similarity) * 0.2  # wrong 10 % at 0.5, 0 at 1
    return similarity, correct


def lowest_cut(
    score: np.ndarray, correct: np.ndarray, budget: float, weight: np.ndarray | None = None
) -> float:
    """The agreement cut alone (similarity says nothing: all equal, and serving all fails)."""
    w = np.ones(len(score)) if weight is None else weight
    seen = [
        Outcome(-1.0, float(a), bool(c), float(x))
        for a, c, x in zip(score, correct, w, strict=True)
    ]
    cut = cuts(seen, budget)
    assert cut.similarity == math.inf
    return cut.agreement


def test_the_lowest_cut_serves_only_where_evidence_bounds_the_wrong_share() -> None:
    similarity, correct = synthetic(20_000)
    cut = lowest_cut(similarity, correct, 0.02)
    assert 0.8 < cut < 0.9  # above 0.8 the true wrong share is 2 %
    assert (~correct[similarity >= cut]).mean() <= 0.02
    assert lowest_cut(similarity[:20], correct[:20], 0.02) == math.inf  # too little evidence
    # The same outcomes as weighted samples of a twentieth say less: a higher cut.
    few = slice(0, 1_000)
    weighted = lowest_cut(similarity[few], correct[few], 0.02, np.full(1_000, 20.0))
    assert weighted == lowest_cut(similarity[few], correct[few], 0.02)  # equal weights: same
    mixed = np.where(similarity[few] > 0.9, 20.0, 1.0)
    assert lowest_cut(similarity[few], correct[few], 0.02, mixed) >= weighted


def test_ties_are_served_together_or_not_at_all() -> None:
    score = np.array([0.9, 0.8, 0.8, 0.8])
    correct = np.array([True, True, True, False])
    # The right ones among the ties come first: a cut between ties would pass, and must not.
    assert lowest_cut(np.repeat(score, 300), np.repeat(correct, 300), 0.2) == 0.9


def outcomes(similarity: np.ndarray, agree: np.ndarray, correct: np.ndarray) -> list[Outcome]:
    return [
        Outcome(float(s), float(a), bool(c))
        for s, a, c in zip(similarity, agree, correct, strict=True)
    ]


def test_cuts_serve_by_agreement_where_similarity_cannot_tell() -> None:
    rng = np.random.default_rng(1)
    n = 4_000
    similarity = rng.uniform(0.8, 0.95, n)  # says nothing here
    agree = rng.uniform(0, 16, n)
    correct = rng.uniform(0, 1, n) > np.where(agree > 8, 0.0, 0.2)  # agreeing: always right
    cut = cuts(outcomes(similarity, agree, correct), 0.02)
    assert 7.5 < cut.agreement < 8.5
    assert cut.bound <= 0.02
    assert cut.serves(0.5, 9.0)
    assert not cut.serves(0.85, 1.0)


def test_the_pair_of_cuts_keeps_the_budget_on_new_outcomes() -> None:
    similarity, correct = synthetic(8_000, seed=2)
    agree = similarity * 10 + np.random.default_rng(3).normal(0, 1, 8_000)
    cut = cuts(outcomes(similarity[:4_000], agree[:4_000], correct[:4_000]), 0.02)
    assert cut.bound <= 0.02
    served = (similarity[4_000:] >= cut.similarity) | (agree[4_000:] >= cut.agreement)
    assert served.mean() > 0.15
    assert (~correct[4_000:][served]).mean() <= 0.02


def test_no_outcomes_or_no_good_ones_serve_nothing() -> None:
    assert cuts([], 0.02) == NO_CUTS
    bad = [Outcome(0.99, 10.0, False)] * 50
    assert not cuts(bad, 0.02).serves(1.0, 16.0)
    assert cuts(bad, 0.02).outcomes == 50


@pytest.mark.parametrize(
    ("similarity", "agree", "draw", "verdict"),
    [
        (0.95, 0.0, 0.5, "serve"),  # by similarity
        (0.80, 12.0, 0.5, "serve"),  # by agreement
        (0.80, 12.0, 0.01, "explore"),  # servable, sampled to measure
        (0.80, 2.0, 0.01, "miss"),  # neither: to the model, an outcome anyway
    ],
)
def test_decide(similarity: float, agree: float, draw: float, verdict: str) -> None:
    cut = Cuts(similarity=0.9, agreement=10.0, bound=0.01, outcomes=500)
    assert decide(cut, similarity, agree, 0.05, draw) == verdict


def entry(content: str | None, calls: list[tuple[str, str]] | None = None) -> bytes:
    message: dict[str, object] = {"role": "assistant", "content": content}
    if calls:
        message["tool_calls"] = [
            {"id": f"c{i}", "type": "function", "function": {"name": n, "arguments": a}}
            for i, (n, a) in enumerate(calls)
        ]
    completion = {"id": "x", "choices": [{"index": 0, "message": message}], "usage": {}}
    return b"small\nb\n" + orjson.dumps(completion)


def test_answers_compare_by_normalised_text_and_tool_calls() -> None:
    assert answer_of(entry("Your card  arrives\nin 3 days.")) == answer_of(
        entry("your card arrives in 3 days.")
    )
    assert answer_of(entry("card_arrival")) != answer_of(entry("card_delivery"))
    assert answer_of(entry(None, [("f", '{"a":1}')])) != answer_of(entry(None, [("f", '{"a":2}')]))
    assert answer_of(b"tier\nb\nnot json") == answer_of(b"tier\nb\nnot json")


def test_agreement_votes_for_the_nearest_answer() -> None:
    a, b = entry("A"), entry("B")
    assert agreement([]) == 0.0
    assert agreement([(0.9, a)]) == pytest.approx(0.9)
    assert agreement([(0.9, a), (0.85, a), (0.8, b)]) == pytest.approx(0.95)
    assert agreement([(0.9, a), (0.89, b), (0.88, b)]) < 0  # the crowd says otherwise


def test_the_budget_chooses_again_after_enough_new_outcomes_or_a_wrong_one() -> None:
    budget = WrongHitBudget()
    for _ in range(600):
        budget.record("r", Outcome(0.97, 1.0, True))
    first = budget.cuts("r", 0.02)
    assert first.serves(0.97, 1.0)
    budget.record("r", Outcome(0.97, 1.0, True))
    assert budget.cuts("r", 0.02) is first  # one more right answer: not worth a new choice
    for _ in range(30):
        budget.record("r", Outcome(0.97, 1.0, False))  # wrong ones count at once
    assert not budget.cuts("r", 0.02).serves(0.97, 1.0)
    tight = budget.cuts("r", 0.02)
    budget.record("r", Outcome(0.5, -3.0, False))  # wrong where nothing is served: no hurry
    assert budget.cuts("r", 0.02) is tight
    assert budget.cuts("other", 0.02) == NO_CUTS  # routes learn apart
