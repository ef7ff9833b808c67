"""The pure routing and cascade decisions, table by table."""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from tokenomy_api.compiled import CompiledDomain, CompiledRoute, Price, SidecarConfig
from tokenomy_api.compiler import compile_configs
from tokenomy_sidecar.routing.confidence import (
    agreement,
    final_answer,
    format_problem,
    judge,
    logprob_confidence,
    parse_verdict,
)
from tokenomy_sidecar.routing.decision import (
    Complexity,
    complexity_tier,
    decide,
    matching_keyword,
    relative_cost,
    walk,
)
from tokenomy_sidecar.routing.scorer import AnswerScorer, answer_features, arithmetic_errors

from helpers import backend, policy, route


def three_tiers(**policy_spec: Any) -> SidecarConfig:
    chat = route(
        embedding={"provider": "local"},
        tiers=[
            {"name": "small", "backends": [backend("s", price={"input": "1", "output": "1"})]},
            {"name": "medium", "backends": [backend("m", price={"input": "3", "output": "6"})]},
            {"name": "large", "backends": [backend("l", price={"input": "10", "output": "30"})]},
        ],
    )
    result = compile_configs([policy(**policy_spec)], [chat])
    assert [str(p) for p in result.problems] == []
    return result.configs["ns/agent"]


def the_route(config: SidecarConfig) -> CompiledRoute:
    return config.routes[0]


# --- domains and keywords -----------------------------------------------------


@pytest.mark.parametrize(
    ("keywords", "text", "found"),
    [
        (["refund"], "I want a REFUND now", "refund"),
        (["refund"], "refunds please", "refund"),
        (["art"], "start the job", None),
        (["credit card", "chargeback"], "my credit  card", None),
        (["credit card", "chargeback"], "a chargeback on my credit card", "credit card"),
        (["c++"], "help with c++ templates", "c++"),
    ],
)
def test_keywords(keywords: list[str], text: str, found: str | None) -> None:
    domain = CompiledDomain(name="d", tier="large", keywords=keywords, examples=[], similarity=0.8)
    assert matching_keyword(domain, text) == found


def test_decide_checks_domains_in_order_then_complexity_then_default() -> None:
    config = three_tiers(
        routing={
            "complexity": {"enabled": True},
            "domains": [
                {"name": "legal", "tier": "large", "keywords": ["contract"]},
                {"name": "faq", "tier": "small", "examples": ["opening hours?"]},
            ],
        }
    )
    chat = the_route(config)
    easy = Complexity(gain=0.0, cut=0.5, input_tokens=10, output_tokens=10, mean_input_tokens=10)
    table: list[tuple[str | None, float | None, Complexity | None, str, str]] = [
        ("review this contract", 0.99, easy, "large", 'domain legal (keyword "contract")'),
        ("when do you open", 0.91, easy, "small", "domain faq (example 0.91)"),
        ("when do you open", 0.5, easy, "small", "complexity 0.00 < 0.50"),
        ("when do you open", None, None, "large", "default"),
        (None, 0.99, None, "large", "default"),
    ]
    for question, similarity, complexity, tier, reason in table:
        sim = None if similarity is None else (lambda d, s=similarity: s)
        got = decide(chat, config.routing, question, sim, complexity)
        assert (got.tier, got.reason) == (tier, reason), question


@pytest.mark.parametrize(
    ("gain", "tokens", "per_tier", "cost_aware", "tier"),
    [
        (0.1, 100, {}, True, "small"),  # sure the small tier does as well
        (0.9, 100, {}, True, "large"),  # sure it does not
        (0.4, 100, {}, True, "small"),  # average request, under the cut
        (0.4, 20, {}, True, "small"),  # short: judged on its gain alone, not inflated
        (0.3, 5, {}, True, "small"),  # "hi": stays cheap
        (0.6, 400, {}, True, "small"),  # long: worth keeping on the cheap tier
        (0.6, 400, {}, False, "medium"),  # ... unless cost is ignored: past the cut
        (0.6, 100, {"small": 0.7}, True, "small"),  # a tier's own threshold
        (0.75, 100, {"small": 0.7, "medium": 0.8}, True, "medium"),
        (0.6, 100, {}, False, "medium"),  # no thresholds: small under 0.5, medium under 0.75
        (0.8, 100, {}, False, "large"),
    ],
)
def test_complexity_tier(
    gain: float, tokens: int, per_tier: dict[str, float], cost_aware: bool, tier: str
) -> None:
    config = three_tiers(
        routing={
            "complexity": {
                "enabled": True,
                "perTier": [{"tier": t, "threshold": v} for t, v in per_tier.items()],
            }
        }
    )
    c = Complexity(gain=gain, cut=0.5, input_tokens=tokens, output_tokens=0, mean_input_tokens=100)
    assert complexity_tier(the_route(config), c, cost_aware).tier == tier


def test_the_route_reason_shows_the_score_that_was_judged() -> None:
    config = three_tiers(routing={"complexity": {"enabled": True}})
    long = Complexity(gain=0.9, cut=0.5, input_tokens=300, output_tokens=0, mean_input_tokens=100)
    decision = complexity_tier(the_route(config), long, cost_aware=True)
    # 0.9 over three times the average cost is 0.30: under the small tier's cut.
    assert (decision.tier, decision.reason) == ("small", "complexity 0.30 < 0.50")
    hard = Complexity(gain=0.95, cut=0.5, input_tokens=100, output_tokens=0, mean_input_tokens=100)
    decision = complexity_tier(the_route(config), hard, cost_aware=True)
    assert (decision.tier, decision.reason) == ("large", "complexity 0.95 >= 0.75: needs large")


@pytest.mark.parametrize(
    ("tokens_in", "tokens_out", "mean_in", "expected"),
    [
        (100, 0, 100, 1.0),
        (300, 0, 100, 3.0),
        (100, 10, 100, (9 * 100 + 29 * 10) / (9 * 100 + 29 * 10)),
        (0, 0, 100, 1.0),  # nothing to weigh: neutral
    ],
)
def test_relative_cost(tokens_in: int, tokens_out: int, mean_in: int, expected: float) -> None:
    cheap = Price(input=1, output=1)
    strong = Price(input=10, output=30)
    assert relative_cost(cheap, strong, tokens_in, tokens_out, mean_in) == pytest.approx(expected)


@pytest.mark.parametrize(
    ("cascade", "start", "tiers"),
    [
        ({}, "small", ["small"]),
        ({"enabled": True}, "small", ["small", "medium", "large"]),
        ({"enabled": True}, "medium", ["medium", "large"]),
        ({"enabled": True, "tiers": ["small", "large"]}, "small", ["small", "large"]),
        ({"enabled": True, "tiers": ["small", "large"]}, "medium", ["medium", "large"]),
        ({"enabled": True}, "large", ["large"]),
    ],
)
def test_walk(cascade: dict[str, Any], start: str, tiers: list[str]) -> None:
    assert list(walk(the_route(three_tiers(cascade=cascade)), start)) == tiers


def test_cascade_without_routing_starts_on_its_first_tier() -> None:
    config = three_tiers(cascade={"enabled": True, "tiers": ["medium", "large"]})
    assert decide(the_route(config), config.routing, "hi", None, None).tier == "medium"


# --- judging answers ------------------------------------------------------------


def choice(text: str, finish: str = "stop", **message: Any) -> dict[str, Any]:
    return {"message": {"role": "assistant", "content": text, **message}, "finish_reason": finish}


def test_logprob_confidence_is_the_geometric_mean_probability() -> None:
    tokens = [{"token": "a", "logprob": math.log(0.9)}, {"token": "b", "logprob": math.log(0.4)}]
    assert logprob_confidence({"logprobs": {"content": tokens}}) == pytest.approx(0.6)
    assert logprob_confidence({"logprobs": None}) is None
    assert logprob_confidence({"logprobs": {"content": []}}) is None


@pytest.mark.parametrize(
    ("answers", "index", "share"),
    [
        (["so 12 apples. #### 12", "#### 12", "The answer is 13"], 0, 2 / 3),
        (["Paris.", "paris.", "Lyon"], 0, 2 / 3),
        (["7", "8", "9"], 0, 1 / 3),
        (["x is 1,000", "it is 1000"], 0, 1.0),
    ],
)
def test_agreement(answers: list[str], index: int, share: float) -> None:
    assert agreement([choice(a) for a in answers]) == (index, pytest.approx(share))


def test_final_answer_prefers_the_marked_one() -> None:
    assert final_answer("3 + 4 = 7, then 7 * 2 = 14\n#### 14") == "14"
    assert final_answer("The answer is: $1,200 after 3 years") == "1200"


@pytest.mark.parametrize(
    ("text", "value"),
    [("0.85", 0.85), ("Confidence: .3", 0.3), ("90%", 0.9), ("Yes.", 1.0), ("no", 0.0),
     ("unsure", None), ("7", None)],
)  # fmt: skip
def test_parse_verdict(text: str, value: float | None) -> None:
    assert parse_verdict(text) == (pytest.approx(value) if value is not None else None)


SCHEMA = {
    "type": "json_schema",
    "json_schema": {
        "name": "x",
        "schema": {"type": "object", "required": ["n"], "properties": {"n": {"type": "integer"}}},
    },
}


@pytest.mark.parametrize(
    ("answer", "request_body", "problem"),
    [
        (choice("fine"), {}, None),
        (choice("half an ans", finish="length"), {}, "truncated"),
        (choice("I'm sorry, but I can't help with that."), {}, "refusal"),
        (choice("", refusal="policy"), {}, "refusal"),
        (choice("Sorry to hear that! Here is how to reset it."), {}, None),
        (choice("not json"), {"response_format": {"type": "json_object"}}, "format"),
        (choice("[1]"), {"response_format": {"type": "json_object"}}, "format"),
        (choice('{"a": 1}'), {"response_format": {"type": "json_object"}}, None),
        (choice('{"n": 3}'), {"response_format": SCHEMA}, None),
        (choice('{"n": "3"}'), {"response_format": SCHEMA}, "format"),
        (choice("", tool_calls=[{"id": "t"}]), {"response_format": SCHEMA}, None),
    ],
)
def test_format_problem(
    answer: dict[str, Any], request_body: dict[str, Any], problem: str | None
) -> None:
    assert format_problem(answer, request_body) == problem


@pytest.mark.parametrize(
    ("method", "confidence", "problem", "accept", "reason"),
    [
        ("logprobs", 0.9, None, True, "confident"),
        ("logprobs", 0.5, None, False, "low_confidence"),
        ("logprobs", None, None, False, "unjudged"),
        ("logprobs", 0.99, "truncated", False, "truncated"),
        ("format", None, None, True, "format_ok"),
        ("format", None, "refusal", False, "refusal"),
    ],
)
def test_judge(
    method: str, confidence: float | None, problem: str | None, accept: bool, reason: str
) -> None:
    verdict = judge(method, confidence, 0.7, problem)
    assert (verdict.accept, verdict.reason) == (accept, reason)


# --- the learned scorer ---------------------------------------------------------


def test_arithmetic_is_checked() -> None:
    assert arithmetic_errors("16 - 3 = 13, then 13 - 4 = 9 and 9 * 2 = $<<9*2=18>>18") == (3, 0)
    assert arithmetic_errors("2 + 3 * 4 = 20") == (1, 1)
    assert arithmetic_errors("no sums here") == (0, 0)


def test_scorer_learns_from_answers_and_round_trips(tmp_path: Path) -> None:
    rng = np.random.default_rng(0)
    questions, answers, right = [], [], []
    for i in range(200):
        a, b = int(rng.integers(1, 50)), int(rng.integers(1, 50))
        good = i % 2 == 0
        shown = a * b if good else a * b + 7
        answers.append(f"{a} * {b} = {shown}\n#### {shown}" if good else f"{a} * {b} = {shown}")
        questions.append(f"What is {a} times {b}?")
        right.append(1.0 if good else 0.0)
    scorer = AnswerScorer.fit(questions, answers, right)
    assert scorer.score("What is 3 times 4?", "3 * 4 = 12\n#### 12") > 0.9
    assert scorer.score("What is 3 times 4?", "3 * 4 = 19") < 0.1
    scorer.cut = 0.42
    scorer.save(tmp_path / "s.npz")
    again = AnswerScorer.load(tmp_path / "s.npz")
    assert again.cut == 0.42
    features = answer_features("q", "1 + 1 = 2\n#### 2")
    assert again.score_features(features) == pytest.approx(scorer.score_features(features))
    (tmp_path / "bad.npz").write_bytes(b"nope")
    with pytest.raises(ValueError, match="is not an answer scorer"):
        AnswerScorer.load(tmp_path / "bad.npz")
