"""Learn then Test cuts: the quality target holds on the population, with the stated confidence."""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from tokenomy_api.compiled import SidecarConfig
from tokenomy_api.compiler import compile_configs
from tokenomy_sidecar.routing.complexity import ComplexityModel
from tokenomy_sidecar.routing.decision import Complexity, complexity_tier
from tokenomy_sidecar.routing.guarantee import (
    Calibration,
    guaranteed_cut,
    packed,
    rejects,
    unpacked,
)
from tokenomy_sidecar.routing.models import targeted
from tokenomy_sidecar.routing.scorer import ACCEPT_NOTHING, AnswerScorer

from helpers import backend, policy, route

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


# --- the cut a model carries, chosen where it is loaded -------------------------------


def test_a_calibration_chooses_the_same_cut_as_the_function_and_survives_a_file(
    tmp_path: Path,
) -> None:
    rng = np.random.default_rng(4)
    calibration = Calibration(*sample(2_000, rng))
    for fraction, confidence in [(0.95, 0.9), (0.9, 0.9), (0.95, 0.99)]:
        assert calibration.cut(fraction, confidence) == guaranteed_cut(
            calibration.scores, calibration.weak, calibration.strong, fraction, confidence
        )
    # a looser target saves more; a certainty the data cannot give saves nothing
    assert calibration.cut(0.9, 0.9) > calibration.cut(0.95, 0.9)
    assert calibration.cut(1.0, 0.9) == -math.inf
    model = ComplexityModel.empty(1 << 8)
    model.calibration = calibration
    model.save(tmp_path / "m.npz")
    loaded = ComplexityModel.load(tmp_path / "m.npz")
    assert loaded.cut_for(0.95, 0.9) == calibration.cut(0.95, 0.9)
    old = ComplexityModel.empty(1 << 8)
    old.cut = 0.42
    old.save(tmp_path / "old.npz")  # as files from before: nothing to choose on
    assert ComplexityModel.load(tmp_path / "old.npz").cut_for(0.5, 0.5) == 0.42


def test_a_calibration_out_of_range_refuses_the_file(tmp_path: Path) -> None:
    bad = {"c": np.array([[0.1, 0.2], [0.0, 1.5], [1.0, 1.0]])}
    with pytest.raises(ValueError, match=r"quality outside 0\.\.1"):
        unpacked(bad, "c")
    with pytest.raises(ValueError, match="not three rows"):
        unpacked({"c": np.ones((2, 4))}, "c")
    assert unpacked({"c": packed(None)}, "c") is None


def test_the_scorer_threshold_follows_the_target_and_accepts_nothing_without_support() -> None:
    rng = np.random.default_rng(5)
    right = rng.uniform(0, 1, 3_000)
    weak = (rng.uniform(0, 1, 3_000) < right).astype(float)
    escalate = np.where(rng.uniform(0, 1, 3_000) < 0.05, np.inf, 1.0 - right)
    scorer = AnswerScorer(np.zeros(2), np.zeros(1), np.ones(1))
    scorer.calibration = Calibration(escalate, weak, np.full(3_000, 0.8))
    strict, loose = scorer.cut_for(0.99, 0.9), scorer.cut_for(0.9, 0.9)
    assert 0.0 <= loose < strict <= 1.0  # a looser target keeps more answers
    assert scorer.cut_for(1.0, 0.9) == ACCEPT_NOTHING


def policy_with(**spec: Any) -> SidecarConfig:
    chat = route(
        tiers=[
            {"name": "small", "backends": [backend("s", price={"input": "1", "output": "1"})]},
            {"name": "large", "backends": [backend("l", price={"input": "10", "output": "30"})]},
        ],
    )
    result = compile_configs([policy(**spec)], [chat])
    assert [str(p) for p in result.problems] == []
    return result.configs["ns/agent"]


def calibrated_model() -> ComplexityModel:
    model = ComplexityModel.empty(1 << 8)
    model.calibration = Calibration(*sample(2_000, np.random.default_rng(6)))
    return model


ON = {"complexity": {"enabled": True}}


@pytest.mark.parametrize(
    ("spec", "cut_is", "notices"),
    [
        ({"routing": ON}, "finite", []),  # the default target: 95 % with 90 % confidence
        ({"routing": ON, "quality": {"target": 1.0}}, "none", ["supports no saving at 100 %"]),
        # every tier the model decides for has a threshold: nothing the model says matters
        (
            {
                "routing": {"complexity": {"enabled": True, "threshold": 0.3}},
                "quality": {"target": 1},
            },
            "none",
            [],
        ),
    ],
)
def test_targeted_models_take_the_policys_quality_and_say_when_they_save_nothing(
    spec: dict[str, Any], cut_is: str, notices: list[str]
) -> None:
    config = policy_with(**spec)
    model = calibrated_model()
    chosen = targeted(config, model, None)
    assert chosen.complexity is not None
    assert chosen.complexity is not model  # a copy
    assert (chosen.complexity.cut == -math.inf) == (cut_is == "none")
    assert model.cut == 0.5  # the file's model, shared by configs, is left alone
    assert len(chosen.notices) == len(notices)
    for notice, part in zip(chosen.notices, notices, strict=True):
        assert part in notice
        assert notice.startswith("routing.complexity: model builtin")


def test_a_cut_that_saves_nothing_says_so_in_the_route_reason() -> None:
    config = policy_with(routing=ON)
    c = Complexity(gain=0.01, cut=-math.inf, input_tokens=5, output_tokens=5, mean_input_tokens=5)
    decision = complexity_tier(config.routes[0], c, cost_aware=True)
    assert decision.tier == "large"
    assert decision.reason == "complexity: no saving at the quality target: needs large"
