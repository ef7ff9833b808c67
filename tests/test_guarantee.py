"""Learn then Test cuts: the quality target holds on the population, with the stated confidence."""

from __future__ import annotations

import math

import numpy as np
import pytest

from tokenomy_eval.guarantee import guaranteed_cut, rejects

STRONG_RIGHT = 0.9


def true_quality(cut: float) -> float:
    """Mean quality on the population when scores under ``cut`` go to the weak model.

    Scores are uniform in [0, 1]; the weak model is right with probability
    1 - 0.6 * score (hard questions score high), the strong one with 0.9.
    """
    c = min(max(cut, 0.0), 1.0)
    return (c - 0.3 * c * c) + (1 - c) * STRONG_RIGHT


def sample(n: int, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    scores = rng.uniform(0, 1, n)
    weak = (rng.uniform(0, 1, n) < 1 - 0.6 * scores).astype(float)
    strong = (rng.uniform(0, 1, n) < STRONG_RIGHT).astype(float)
    return scores, weak, strong


@pytest.mark.parametrize(("n", "confidence"), [(500, 0.9), (2_000, 0.9), (2_000, 0.99)])
def test_the_target_holds_on_the_population_with_the_stated_confidence(
    n: int, confidence: float
) -> None:
    rng = np.random.default_rng(n)
    target = 0.95 * STRONG_RIGHT
    cuts = [guaranteed_cut(*sample(n, rng), 0.95, confidence) for _ in range(300)]
    missed = np.mean([true_quality(c) < target for c in cuts])
    assert missed <= 1 - confidence  # the guarantee (it is conservative: usually far under)
    # ... and it is not bought by saving nothing: the best cut is about 0.33.
    assert np.median([max(c, 0.0) for c in cuts]) > 0.1


def test_a_cut_at_the_training_optimum_would_miss_about_half_the_time() -> None:
    # What the guarantee replaces: the cut where the sample just reaches the target.
    rng = np.random.default_rng(1)
    target = 0.95 * STRONG_RIGHT
    missed = 0
    for _ in range(200):
        scores, weak, strong = sample(500, rng)
        order = np.argsort(scores)
        best = -math.inf
        for k in range(len(scores) + 1):
            routed = np.concatenate([weak[order[:k]], strong[order[k:]]]).mean()
            if routed >= 0.95 * strong.mean():
                best = scores[order[k]] if k < len(scores) else math.inf
        missed += true_quality(best) < target
    assert missed / 200 > 0.3


def test_too_little_evidence_saves_nothing_and_a_weak_model_as_good_saves_everything() -> None:
    rng = np.random.default_rng(2)
    assert guaranteed_cut(*sample(10, rng), 0.95, 0.9) == -math.inf
    assert guaranteed_cut(np.array([0.5]), np.ones(1), np.ones(1), 0.95, 0.9) == -math.inf
    same = np.ones(5_000)
    assert guaranteed_cut(rng.uniform(0, 1, 5_000), same, same, 0.95, 0.9) == math.inf


def test_betting_rejects_a_false_null_and_rarely_a_true_one() -> None:
    rng = np.random.default_rng(3)
    below = rng.uniform(0, 0.8, (200, 300))  # mean 0.4: "at least 0.5" is false
    at = rng.uniform(0, 1, (200, 300))  # mean 0.5: "at least 0.5" is true
    assert rejects(below, 0.5, 0.1).mean() > 0.9
    assert rejects(at, 0.5, 0.1).mean() <= 0.1
    # 200 queries routing changes nothing for (loss -0.05 each, scaled): shown, where the
    # empirical Bernstein bound's 7/3 term alone (+0.068) would exceed the 0.05 gap.
    flat = np.full((1, 200), 0.95 / 1.95)
    assert rejects(flat, 1 / 1.95, 0.1)[0]
