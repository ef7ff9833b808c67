"""Routing and cascading through the sidecar, with stand-in tiers whose answers are scripted."""

from __future__ import annotations

import math
from decimal import Decimal
from pathlib import Path
from typing import Any

import numpy as np
import openai
import pytest

from tokenomy_sidecar.routing.complexity import ComplexityModel
from tokenomy_sidecar.routing.guarantee import Calibration
from tokenomy_sidecar.routing.scorer import AnswerScorer
from tokenomy_sidecar.runtime import ConfigRejectedError
from tokenomy_standin.server import Scripted

from helpers import backend, policy_doc, route_doc
from support import LiveSidecar, RunningStandin, SidecarFactory, StandinFactory

SURE = "What is the capital of France?"
UNSURE = "Which year did the Treaty of Nerchinsk get ratified?"
SMALL_PRICE = {"input": "0.15", "output": "0.60"}
LARGE_PRICE = {"input": "2.50", "output": "10"}


def route(small: RunningStandin, large: RunningStandin, **spec: Any) -> dict[str, Any]:
    return route_doc(
        namespace="default",
        tiers=[
            {"name": "small", "backends": [backend("s", url=small.url, price=SMALL_PRICE)]},
            {"name": "large", "backends": [backend("l", url=large.url, price=LARGE_PRICE)]},
        ],
        **spec,
    )


async def start(
    standin: StandinFactory, sidecar: SidecarFactory, script: dict[str, Scripted], **policy: Any
) -> tuple[LiveSidecar, RunningStandin, RunningStandin]:
    small = await standin(name="small", script=script)
    large = await standin(name="large")
    running = await sidecar(
        route(small, large),
        policy_doc(namespace="default", cache={"exact": {"enabled": False}}, **policy),
    )
    return running, small, large


async def ask(running: LiveSidecar, question: str, **kwargs: Any) -> Any:
    messages = [{"role": "user", "content": question}]
    return await running.client().chat.completions.with_raw_response.create(
        model="chat", messages=messages, **kwargs
    )


LOGPROBS_SCRIPT = {
    SURE: Scripted(("Paris.",), logprob=math.log(0.95)),
    UNSURE: Scripted(("In 1690, I think.",), logprob=math.log(0.3)),
}
LOGPROBS_CASCADE = {"enabled": True, "confidence": {"method": "logprobs", "threshold": 0.7}}


async def test_cascade_keeps_a_confident_answer_and_escalates_an_unsure_one(
    standin: StandinFactory, sidecar: SidecarFactory
) -> None:
    running, small, large = await start(standin, sidecar, LOGPROBS_SCRIPT, cascade=LOGPROBS_CASCADE)

    kept = await ask(running, SURE)
    assert kept.headers["x-tokenomy-tier"] == "small"
    assert kept.headers["x-tokenomy-route-reason"] == "cascade; cascade: small confident 0.95"
    answer = kept.parse()
    assert answer.choices[0].message.content == "Paris."
    assert answer.choices[0].logprobs is None  # asked for by the sidecar, not by the client
    assert small.settings.requests[-1]["logprobs"] is True
    assert len(large.settings.requests) == 0

    escalated = await ask(running, UNSURE)
    assert escalated.headers["x-tokenomy-tier"] == "large"
    assert escalated.headers["x-tokenomy-route-reason"] == (
        "cascade; cascade: small low_confidence 0.30 -> large"
    )
    assert escalated.parse().choices[0].message.content == f"large answers: {UNSURE}"
    # Honest metering: the request cost both calls.
    small_usage = {"prompt": 9, "completion": 4}  # stand-in tokens are words
    large_usage = {"prompt": 9, "completion": 11}
    expected = (
        small_usage["prompt"] * Decimal("0.15") + small_usage["completion"] * Decimal("0.60")
        + large_usage["prompt"] * Decimal("2.50") + large_usage["completion"] * Decimal("10")
    ) / 1_000_000  # fmt: skip
    assert Decimal(escalated.headers["x-tokenomy-cost-usd"]) == expected
    assert running.metric("tokenomy_escalations_total", tier="small", reason="low_confidence") == 1
    assert running.metric("tokenomy_overspend_usd_total", lever="cascade") == pytest.approx(
        float(small_usage["prompt"] * Decimal("0.15") + small_usage["completion"] * Decimal("0.60"))
        / 1e6
    )
    assert running.metric("tokenomy_savings_usd_total", lever="cascade") > 0  # the kept answer
    # Exact caching is off in this policy: both requests are counted as bypassing it.
    assert running.metric("tokenomy_requests_total", tier="small", cache="bypass") == 1
    assert running.metric("tokenomy_requests_total", tier="large", cache="bypass") == 1


async def test_streaming_client_gets_the_judged_answer_as_a_stream(
    standin: StandinFactory, sidecar: SidecarFactory
) -> None:
    running, small, large = await start(standin, sidecar, LOGPROBS_SCRIPT, cascade=LOGPROBS_CASCADE)
    client = running.client()
    for question, tier, text in [(SURE, "small", "Paris."), (UNSURE, "large", "large answers:")]:
        raw = await client.chat.completions.with_raw_response.create(
            model="chat", messages=[{"role": "user", "content": question}], stream=True
        )
        assert raw.headers["x-tokenomy-tier"] == tier
        chunks = [c async for c in raw.parse()]
        streamed = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
        assert streamed.startswith(text)
    # The small tier is always asked for the whole answer; only the last tier streams.
    assert [r.get("stream") for r in small.settings.requests] == [None, None]
    assert [r.get("stream") for r in large.settings.requests] == [True]


@pytest.mark.parametrize(
    ("reply", "request_extra", "reason"),
    [
        ("I'm sorry, but I can't help with that.", {}, "refusal"),
        ("one two three four five six", {"max_tokens": 3}, "truncated"),
        ("not json at all", {"response_format": {"type": "json_object"}}, "format"),
    ],
)
async def test_format_checks_escalate_whatever_the_confidence(
    standin: StandinFactory,
    sidecar: SidecarFactory,
    reply: str,
    request_extra: dict[str, Any],
    reason: str,
) -> None:
    script = {SURE: Scripted((reply,), logprob=math.log(0.99))}
    running, _, _ = await start(standin, sidecar, script, cascade=LOGPROBS_CASCADE)
    answer = await ask(running, SURE, **request_extra)
    assert answer.headers["x-tokenomy-tier"] == "large"
    assert f"small {reason} 0.99 -> large" in answer.headers["x-tokenomy-route-reason"]
    assert running.metric("tokenomy_escalations_total", tier="small", reason=reason) == 1


async def test_agreement_keeps_the_majority_answer(
    standin: StandinFactory, sidecar: SidecarFactory
) -> None:
    script = {
        SURE: Scripted(("So it is #### 12", "#### 12", "#### 13")),
        UNSURE: Scripted(("#### 1", "#### 2", "#### 3")),
    }
    cascade = {"enabled": True, "confidence": {"method": "agreement", "threshold": 0.6}}
    running, small, _ = await start(standin, sidecar, script, cascade=cascade)
    kept = await ask(running, SURE)
    assert kept.headers["x-tokenomy-tier"] == "small"
    assert [c.message.content for c in kept.parse().choices] == ["So it is #### 12"]
    assert small.settings.requests[-1]["n"] == 3
    split = await ask(running, UNSURE)
    assert split.headers["x-tokenomy-tier"] == "large"
    assert "small low_confidence 0.33" in split.headers["x-tokenomy-route-reason"]


async def test_verifier_asks_the_same_tier_and_is_metered(
    standin: StandinFactory, sidecar: SidecarFactory
) -> None:
    # The scripted question gets its answer; anything else (the verifier prompt) gets `reply`.
    small = await standin(name="small", script={SURE: Scripted(("Paris.",))}, reply="0.9")
    large = await standin(name="large")
    cascade = {"enabled": True, "confidence": {"method": "verifier", "threshold": 0.7}}
    running = await sidecar(route(small, large), policy_doc(namespace="default", cascade=cascade))
    kept = await ask(running, SURE)
    assert kept.headers["x-tokenomy-tier"] == "small"
    verifier = small.settings.requests[-1]["messages"][0]["content"]
    assert "Question:\nWhat is the capital of France?" in verifier
    assert "Proposed answer:\nParis." in verifier
    # "Paris." and the verdict "0.9": one stand-in token each, both paid for.
    assert running.metric("tokenomy_tokens_total", tier="small", direction="output") == 1 + 1
    small.settings.reply = "0.2"
    low = await ask(running, "Another question?")
    assert low.headers["x-tokenomy-tier"] == "large"


async def test_a_failing_cheap_tier_escalates(
    standin: StandinFactory, sidecar: SidecarFactory
) -> None:
    running, small, _ = await start(standin, sidecar, LOGPROBS_SCRIPT, cascade=LOGPROBS_CASCADE)
    small.settings.faults.extend(["500"] * 3)
    answer = await ask(running, SURE)
    assert answer.headers["x-tokenomy-tier"] == "large"
    assert "small error -> large" in answer.headers["x-tokenomy-route-reason"]
    assert running.metric("tokenomy_escalations_total", tier="small", reason="error") == 1


async def test_domain_keyword_and_example_routes(
    standin: StandinFactory, sidecar: SidecarFactory
) -> None:
    small = await standin(name="small")
    large = await standin(name="large")
    routing = {
        "domains": [
            {"name": "legal", "tier": "large", "keywords": ["contract"]},
            {
                "name": "refunds",
                "tier": "small",
                "examples": ["How do I get a refund for my order?"],
                "similarity": 0.7,
            },
        ]
    }
    running = await sidecar(
        route(small, large, embedding={"provider": "local"}, defaultTier="large"),
        policy_doc(namespace="default", routing=routing),
    )
    legal = await ask(running, "Please review this contract clause")
    assert legal.headers["x-tokenomy-route-reason"] == 'domain legal (keyword "contract")'
    refund = await ask(running, "how can I get a refund for my order")
    assert refund.headers["x-tokenomy-tier"] == "small"
    assert refund.headers["x-tokenomy-route-reason"].startswith("domain refunds (example 0.")
    other = await ask(running, "Tell me a joke about penguins")
    assert (other.headers["x-tokenomy-tier"], other.headers["x-tokenomy-route-reason"]) == (
        "large",
        "default",
    )
    assert running.metric("tokenomy_route_decisions_total", kind="domain") == 2


def toy_texts(n: int) -> tuple[list[str], list[float]]:
    texts, labels = [], []
    for i in range(n):
        hard = i % 3 == 0
        texts.append(
            f"{['alpha', 'beta', 'gamma'][i % 3]} {'prove the integral' if hard else 'say hello'}"
        )
        labels.append(1.0 if hard else 0.0)
    return texts, labels


def toy_model(path: Path, calibrated: bool = False) -> None:
    texts, labels = toy_texts(400)
    model = ComplexityModel.empty(1 << 12).fit(texts, labels)
    model.cut, model.mean_input_tokens, model.mean_output_tokens = 0.5, 5.0, 5.0
    if calibrated:  # the hard ones only the large model answers, the easy ones both
        scores = np.array([model.score(t) for t in texts])
        weak = 1.0 - np.array(labels)
        model.calibration = Calibration(scores, weak, np.ones(len(texts)))
    model.save(path)


async def test_complexity_routing_with_a_trained_model(
    standin: StandinFactory, sidecar: SidecarFactory, tmp_path: Path
) -> None:
    toy_model(tmp_path / "mine.npz")
    small = await standin(name="small")
    large = await standin(name="large")
    routing = {"complexity": {"enabled": True, "model": "mine", "costAware": False}}
    running = await sidecar(
        route(small, large), policy_doc(namespace="default", routing=routing), models_dir=tmp_path
    )
    easy = await ask(running, "beta say hello")
    hard = await ask(running, "beta prove the integral")
    assert easy.headers["x-tokenomy-tier"] == "small"
    assert easy.headers["x-tokenomy-route-reason"].startswith("complexity 0.")
    assert hard.headers["x-tokenomy-tier"] == "large"
    assert running.metric("tokenomy_savings_usd_total", lever="routing") > 0


async def test_a_trained_models_cut_follows_the_policys_quality_target(
    standin: StandinFactory, sidecar: SidecarFactory, tmp_path: Path
) -> None:
    toy_model(tmp_path / "mine.npz", calibrated=True)
    small = await standin(name="small")
    large = await standin(name="large")
    routing = {"complexity": {"enabled": True, "model": "mine", "costAware": False}}
    running = await sidecar(
        route(small, large),
        policy_doc(namespace="default", routing=routing, quality={"target": 0.9}),
        models_dir=tmp_path,
    )
    assert (await ask(running, "beta say hello")).headers["x-tokenomy-tier"] == "small"
    assert (await ask(running, "alpha prove the integral")).headers["x-tokenomy-tier"] == "large"
    runtime = running.sidecar.holder.current
    assert runtime is not None
    assert runtime.notices == ()
    # Nothing the large model cannot lose: the same model saves nothing, and says so.
    running = await sidecar(
        route(small, large),
        policy_doc(namespace="default", routing=routing, quality={"target": 1.0}),
        models_dir=tmp_path,
    )
    easy = await ask(running, "beta say hello")
    assert easy.headers["x-tokenomy-tier"] == "large"
    assert easy.headers["x-tokenomy-route-reason"] == (
        "complexity: no saving at the quality target: needs large"
    )
    runtime = running.sidecar.holder.current
    assert runtime is not None
    assert [n.split(": every")[0] for n in runtime.notices] == [
        "routing.complexity: model mine supports no saving at 100 % of the reference tier's "
        "quality with 90 % confidence"
    ]


async def test_builtin_model_routes_and_a_missing_model_refuses_the_config(
    standin: StandinFactory, sidecar: SidecarFactory, tmp_path: Path
) -> None:
    small = await standin(name="small")
    large = await standin(name="large")
    builtin = {"complexity": {"enabled": True}}
    running = await sidecar(route(small, large), policy_doc(namespace="default", routing=builtin))
    answer = await ask(running, "What is 2 + 2?")
    assert answer.headers["x-tokenomy-route-reason"].startswith("complexity ")
    missing = {"complexity": {"enabled": True, "model": "nope"}}
    with pytest.raises(ConfigRejectedError, match=r"model 'nope': no file nope or nope\.npz in"):
        await sidecar(
            route(small, large), policy_doc(namespace="default", routing=missing),
            models_dir=tmp_path,
        )  # fmt: skip


async def test_openai_sdk_sees_an_ordinary_completion(
    standin: StandinFactory, sidecar: SidecarFactory
) -> None:
    running, _, _ = await start(standin, sidecar, LOGPROBS_SCRIPT, cascade=LOGPROBS_CASCADE)
    client = running.client()
    answer = await client.chat.completions.create(
        model="chat", messages=[{"role": "user", "content": SURE}], logprobs=True
    )
    assert isinstance(answer, openai.types.chat.ChatCompletion)
    assert answer.choices[0].logprobs is not None  # the client asked, so it keeps them
    assert answer.usage is not None
    assert answer.usage.completion_tokens == 1


async def test_scorer_method_uses_the_trained_scorer(
    standin: StandinFactory, sidecar: SidecarFactory, tmp_path: Path
) -> None:
    questions, answers, right = [], [], []
    for a in range(2, 42):
        for good in (True, False):
            shown = a * 3 if good else a * 3 + 5
            questions.append(f"What is {a} times 3?")
            answers.append(f"{a} * 3 = {shown}\n#### {shown}")
            right.append(1.0 if good else 0.0)
    scorer = AnswerScorer.fit(questions, answers, right)
    scorer.cut = 0.5
    scorer.save(tmp_path / "checker.npz")
    script = {
        "What is 7 times 3?": Scripted(("7 * 3 = 21\n#### 21",)),
        "What is 8 times 3?": Scripted(("8 * 3 = 29\n#### 29",)),
    }
    small = await standin(name="small", script=script)
    large = await standin(name="large")
    cascade = {
        "enabled": True,
        "confidence": {"method": "scorer", "scorer": "checker", "threshold": 0.5},
    }
    running = await sidecar(
        route(small, large), policy_doc(namespace="default", cascade=cascade), models_dir=tmp_path
    )
    right_answer = await ask(running, "What is 7 times 3?")
    assert right_answer.headers["x-tokenomy-tier"] == "small"
    wrong_answer = await ask(running, "What is 8 times 3?")
    assert wrong_answer.headers["x-tokenomy-tier"] == "large"
    assert "small low_confidence" in wrong_answer.headers["x-tokenomy-route-reason"]


async def test_dashboards_can_join_on_reference_tier_and_budget(
    standin: StandinFactory, sidecar: SidecarFactory
) -> None:
    small = await standin(name="small")
    large = await standin(name="large")
    budget = {"amount": "250", "period": "weekly"}
    running = await sidecar(route(small, large), policy_doc(namespace="default", budget=budget))
    assert running.metric("tokenomy_reference_tier_info", route="chat", tier="large") == 1
    assert running.metric("tokenomy_reference_tier_info", tier="small") == 0
    assert running.metric("tokenomy_budget_usd", policy="agent", period="weekly") == 250


async def test_spend_is_attributed_to_pod_labels_and_the_feature_header(
    standin: StandinFactory, sidecar: SidecarFactory
) -> None:
    small = await standin(name="small")
    large = await standin(name="large")
    attribution = {"podLabels": ["team", "feature"], "header": "x-tokenomy-feature"}
    running = await sidecar(
        route(small, large),
        policy_doc(namespace="default", attribution=attribution),
        pod_labels={"team": "payments", "feature": "chat", "app": "agent"},
    )
    plain = await ask(running, "hello")
    tagged = await running.client().chat.completions.with_raw_response.create(
        model="chat",
        messages=[{"role": "user", "content": "where is my refund"}],
        extra_headers={"x-tokenomy-feature": "refunds"},
    )
    first = float(plain.headers["x-tokenomy-cost-usd"])
    second = float(tagged.headers["x-tokenomy-cost-usd"])

    def charged(key: str, value: str) -> float:
        return running.metric("tokenomy_attributed_cost_usd_total", key=key, value=value)

    assert charged("team", "payments") == pytest.approx(first + second)
    assert charged("feature", "chat") == pytest.approx(first)
    assert charged("feature", "refunds") == pytest.approx(second)  # the header wins
    assert charged("app", "agent") == 0  # not a label the policy attributes by
