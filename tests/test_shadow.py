"""Shadow comparison (#20): cheaper answers compared with the reference tier's, off the path,
and the verdicts as quality retained with an interval in the CostPolicy's status."""

from __future__ import annotations

import asyncio
import random
from decimal import Decimal
from typing import Any

import pytest

from test_controller import counting
from tokenomy_api.bounds import wilson_interval
from tokenomy_api.compiled import CompiledShadow
from tokenomy_api.compiler import compile_configs
from tokenomy_api.usage_protocol import RequestUsage, SidecarMessage
from tokenomy_operator.spend.quality import floor_verdict, quality_status
from tokenomy_operator.spend.totals import Totals
from tokenomy_sidecar.stages.shadow import (
    answer_text,
    judged,
    method_for,
    same_structure,
    structured,
)
from tokenomy_standin.server import Scripted

from helpers import backend, policy, policy_doc, route, route_doc
from support import LiveSidecar, SidecarFactory, StandinFactory

pytestmark = pytest.mark.integration

# --- pure: comparing two answers ------------------------------------------------------


@pytest.mark.unit
@pytest.mark.parametrize(
    ("text", "value"),
    [
        ('{"b": 1, "a": [2]}', 'json:{"a":[2],"b":1}'),
        ('```json\n{"a": 1}\n```', 'json:{"a":1}'),
        ("Step one... so 6 * 7 = 42.\n#### 42", "number:42"),
        ("The answer is 1,250.", "number:1250"),
        ("42.0", "number:42"),
        ("Positive.", "label:positive"),
        ("New York City", "label:new york city"),
        ("2 + 3 = 5", "number:5"),
        ("It depends on which of the many things you ask about here.", None),
    ],
)
def test_structured_answers_have_values(text: str, value: str | None) -> None:
    assert structured(text) == value


@pytest.mark.unit
@pytest.mark.parametrize(
    ("reference", "served", "same"),
    [
        ('{"a": 1, "b": 2}', '{"b":2,"a":1}', True),
        ('{"a": 1}', '{"a": 2}', False),
        ("#### 42", "The total is 42", True),  # the served answer's final number
        ("#### 42", "The total is 41", False),
        ("Paris", "paris.", True),
        ("Paris", "Lyon", False),
        ("positive", "The sentiment is clearly positive overall, I think", False),
    ],
)
def test_structured_answers_agree_by_value(reference: str, served: str, same: bool) -> None:
    assert same_structure(reference, served) is same


@pytest.mark.unit
@pytest.mark.parametrize(
    ("compare", "reference", "embedder", "method"),
    [
        ("auto", "#### 12", True, "exact"),
        ("auto", "A long free text answer that explains a thing at length.", True, "similarity"),
        ("auto", "A long free text answer that explains a thing at length.", False, "judge"),
        ("judge", "#### 12", True, "judge"),
        ("exact", "A long free text answer that explains a thing at length.", True, "exact"),
    ],
)
def test_how_answers_are_compared(
    compare: Any, reference: str, embedder: bool, method: str
) -> None:
    spec = CompiledShadow(sample=1, max_spend_share=1, compare=compare, similarity=0.8)
    assert method_for(spec, reference, embedder) == method


@pytest.mark.unit
@pytest.mark.parametrize(
    ("reply", "verdict"),
    [("SAME", True), ("same.", True), ("**DIFFERENT**", False), ("No", False), ("maybe", None)],
)
def test_judge_replies(reply: str, verdict: bool | None) -> None:
    assert judged(reply) is verdict


@pytest.mark.unit
def test_tool_calls_are_compared_as_json() -> None:
    def call(arguments: str) -> dict[str, Any]:
        message = {"tool_calls": [{"function": {"name": "f", "arguments": arguments}}]}
        return {"choices": [{"message": message}]}

    a, b = answer_text(call('{"x": 1, "y": 2}')), answer_text(call('{"y":2,"x":1}'))
    assert a is not None
    assert b is not None
    assert same_structure(a, b)
    assert not same_structure(a, answer_text(call('{"x": 2}')) or "")


# --- pure: the interval, and the status ---------------------------------------------------


@pytest.mark.unit
@pytest.mark.parametrize(("share", "n"), [(0.9, 60), (0.97, 300), (0.5, 20)])
def test_the_interval_covers_the_true_share_as_often_as_it_says(share: float, n: int) -> None:
    """Simulated comparisons with a known agreement rate: the 90 % interval holds it in
    about 90 % of 2,000 runs (Wilson's interval is close to nominal at these sizes)."""
    rng = random.Random(7)
    covered = 0
    for _ in range(2000):
        agreed = sum(rng.random() < share for _ in range(n))
        low, high = wilson_interval(agreed, n, 0.9)
        covered += low <= share <= high
    assert 0.86 <= covered / 2000 <= 0.95


def counts(**levers: tuple[int, int]) -> dict[str, Any]:
    return {
        "cost": "0.5",
        "comparisons": [
            {"lever": lever, "compared": n, "agreed": k} for lever, (n, k) in levers.items()
        ],
    }


@pytest.mark.unit
@pytest.mark.parametrize(
    ("shadow", "breached", "reason"),
    [
        (None, False, "NotEnoughData"),
        (counts(routing=(200, 198)), False, "AtOrAboveFloor"),
        (counts(routing=(10, 9)), False, "AtOrAboveFloor"),  # few samples: a wide interval
        (counts(routing=(200, 170)), True, "BelowFloor"),
        (counts(routing=(200, 199), semantic_cache=(100, 80)), True, "BelowFloor"),
    ],
)
def test_the_floor_condition_needs_the_whole_interval_below(
    shadow: Any, breached: bool, reason: str
) -> None:
    verdict = floor_verdict(shadow, 0.95, 0.9)
    assert (verdict.breached, verdict.reason) == (breached, reason)
    if breached:
        assert "semantic_cache" in verdict.message or "routing" in verdict.message


@pytest.mark.unit
def test_quality_status_reads_well() -> None:
    status = quality_status(counts(routing=(100, 97), cascade=(50, 45)), 0.95, 0.9, Decimal("10"))
    assert status["floor"] == "95.0%"
    assert status["compared"] == 150
    assert status["agreement"] == "94.7%"
    assert [entry["lever"] for entry in status["levers"]] == ["routing", "cascade"]
    assert float(status["lower"].rstrip("%")) < 94.7 < float(status["upper"].rstrip("%"))
    assert status["shadowShare"] == "5.0%"


@pytest.mark.unit
def test_comparisons_are_their_own_line_in_the_totals() -> None:
    totals = Totals()
    totals.add(RequestUsage(Decimal("0.01"), route="chat", tier="small", cache="miss",
                            input_tokens=10, output_tokens=5))  # fmt: skip
    for verdict in ("agree", "agree", "disagree", ""):
        totals.add(RequestUsage(Decimal("0.1"), route="chat", input_tokens=10,
                                shadow="routing", verdict=verdict))  # fmt: skip
    status = totals.status()
    assert status["usage"]["requests"] == 1  # comparisons are no requests...
    assert status["tierShares"] == [{"tier": "small", "share": "100%"}]
    assert status["shadow"] == {  # ...and a failed one costs, but has no verdict
        "cost": "0.4",
        "comparisons": [{"lever": "routing", "compared": 3, "agreed": 2}],
    }
    assert Totals.restore(status).status() == status

    report = RequestUsage(Decimal("0.1"), shadow="cascade", verdict="agree").report(1)
    back = RequestUsage.from_report(report)
    assert (back.shadow, back.verdict) == ("cascade", "agree")
    report.shadow, report.verdict = "made-up", "perhaps"
    back = RequestUsage.from_report(report)
    assert (back.shadow, back.verdict) == ("", "")


async def test_status_shows_quality_retained_and_the_floor_condition() -> None:
    controller, writer, usage, _, _ = counting(policy_doc(shadow={"enabled": True}))
    await controller.sync()
    status = writer.statuses[("costpolicies", "ns", "agent")]
    floor = next(c for c in status["conditions"] if c["type"] == "QualityBelowFloor")
    assert (floor["status"], floor["reason"]) == ("False", "NotEnoughData")

    def comparisons(start: int, n: int, agreed: int) -> list[Any]:
        return [
            RequestUsage(Decimal("0.02"), route="chat", shadow="routing",
                         verdict="agree" if i < agreed else "disagree").report(start + i)
            for i in range(n)
        ]  # fmt: skip

    usage.handle(SidecarMessage(holder="ns/a#1", policy="ns/agent",
                                reports=comparisons(1, 100, 80)))  # fmt: skip
    await controller.sync()
    status = writer.statuses[("costpolicies", "ns", "agent")]
    quality = status["quality"]
    assert (quality["compared"], quality["agreement"]) == (100, "80.0%")
    assert quality["levers"][0]["lever"] == "routing"
    assert quality["shadowCost"] == "2.00"
    assert status["spend"]["amount"] == "2.00"  # comparisons are spend
    floor = next(c for c in status["conditions"] if c["type"] == "QualityBelowFloor")
    assert (floor["status"], floor["reason"]) == ("True", "BelowFloor")
    assert "routing: 80.0% of 100 agreed" in floor["message"]
    m = controller.metrics
    assert m.policy_quality.labels("ns", "agent", "routing", "estimate")._value.get() == 0.8
    assert m.policy_alert.labels("ns", "agent", "QualityBelowFloor")._value.get() == 1
    assert ("Warning", "BelowFloor") in [(e[3], e[4]) for e in writer.events]


# --- end to end: a sidecar, two stand-in tiers, the official SDK -------------------------

SCRIPT_SMALL = {"q1": "6 times 7 is 42", "q2": "7", "q3": "Paris"}
SCRIPT_LARGE = {"q1": "#### 42", "q2": "8", "q3": "paris."}


async def shadowed(
    standin: StandinFactory,
    sidecar: SidecarFactory,
    large_latency: float = 0.0,
    default_tier: str = "small",
    large_price: tuple[str, str] = ("1", "2"),
    **shadow: Any,
) -> tuple[LiveSidecar, Any, Any]:
    small = await standin(name="small", script={q: Scripted((a,)) for q, a in SCRIPT_SMALL.items()})
    large = await standin(
        name="large",
        latency=large_latency,
        script={q: Scripted((a,)) for q, a in SCRIPT_LARGE.items()},
    )
    tiers = [
        {"name": "small", "backends": [backend("s", url=small.url)]},
        {"name": "large", "backends": [backend("l", url=large.url, price=dict(
            zip(("input", "output"), large_price, strict=True)))]},
    ]  # fmt: skip
    budget = shadow.pop("budget", None)
    semantic = shadow.pop("semantic", False)
    embedding = {"embedding": {"provider": "local"}} if semantic else {}
    running = await sidecar(
        route_doc(namespace="default", tiers=tiers, defaultTier=default_tier, **embedding),
        policy_doc(
            namespace="default",
            cache={
                "exact": {"enabled": False},
                "semantic": {"enabled": semantic, "threshold": 0.8},
            },
            shadow={"enabled": True, "sample": 1.0, "maxSpendShare": 10.0, **shadow},
            **({"budget": budget} if budget else {}),
        ),
        enforce_local_budget=budget is not None,
    )
    return running, small, large


async def settled(running: LiveSidecar, total: int, timeout: float = 10.0) -> None:
    """Wait until ``total`` comparisons have ended."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while running.metric("tokenomy_shadow_comparisons_total") < total:
        assert loop.time() < deadline, "the comparisons did not end"
        await asyncio.sleep(0.02)


async def test_cheaper_answers_are_compared_after_the_client_has_them(
    standin: StandinFactory, sidecar: SidecarFactory
) -> None:
    running, _, large = await shadowed(standin, sidecar, large_latency=0.5)
    client = running.client()
    for question in ("q1", "q2", "q3"):
        raw = await client.chat.completions.with_raw_response.create(
            model="chat", messages=[{"role": "user", "content": question}]
        )
        assert raw.headers["x-tokenomy-tier"] == "small"
        assert raw.parse().choices[0].message.content == SCRIPT_SMALL[question]
    # The reference takes half a second: the client had its answers before any verdict.
    assert running.metric("tokenomy_shadow_comparisons_total") == 0
    await settled(running, 3)
    assert running.metric("tokenomy_shadow_comparisons_total", lever="tier", result="agree") == 2
    assert running.metric("tokenomy_shadow_comparisons_total", result="disagree") == 1
    assert all("stream" not in body for body in large.settings.requests)
    # The comparisons are a line of their own, not the requests' cost.
    assert running.metric("tokenomy_shadow_cost_usd_total") > 0
    assert running.metric("tokenomy_cost_usd_total", tier="large") == 0

    # A streamed answer is compared once it is whole.
    stream = await client.chat.completions.create(
        model="chat", messages=[{"role": "user", "content": "q1"}], stream=True
    )
    text = "".join([c.choices[0].delta.content or "" async for c in stream if c.choices])
    assert text == SCRIPT_SMALL["q1"]
    await settled(running, 4)
    assert running.metric("tokenomy_shadow_comparisons_total", result="agree") == 3


async def test_answers_of_the_reference_tier_are_not_compared(
    standin: StandinFactory, sidecar: SidecarFactory
) -> None:
    running, _, large = await shadowed(standin, sidecar, default_tier="large")
    client = running.client()
    for question in ("q1", "q2"):
        await client.chat.completions.create(
            model="chat", messages=[{"role": "user", "content": question}]
        )
    await running.sidecar.proxy.shadow.drain()
    assert len(large.settings.requests) == 2  # the requests themselves, nothing more
    assert running.metric("tokenomy_shadow_comparisons_total") == 0


async def test_shadow_spend_stays_within_its_share(
    standin: StandinFactory, sidecar: SidecarFactory
) -> None:
    running, _, _ = await shadowed(standin, sidecar, large_price=("10", "30"), maxSpendShare=0.2)
    client = running.client()
    for _ in range(20):
        await client.chat.completions.create(
            model="chat", messages=[{"role": "user", "content": "q2"}]
        )
        await asyncio.sleep(0.01)
    await running.sidecar.proxy.shadow.drain()
    shadow = running.metric("tokenomy_shadow_cost_usd_total")
    spent = running.metric("tokenomy_cost_usd_total")
    one = shadow / running.metric("tokenomy_shadow_comparisons_total")
    assert running.metric("tokenomy_shadow_skipped_total", reason="spend_share") > 0
    # Checked before each comparison: over by at most the ones in flight at once.
    assert shadow <= 0.2 * spent + 4 * one


async def test_a_spent_budget_stops_the_comparisons(
    standin: StandinFactory, sidecar: SidecarFactory
) -> None:
    budget = {"amount": "0.0000001", "onExceeded": "alert"}
    running, _, large = await shadowed(standin, sidecar, budget=budget)
    client = running.client()
    for question in ("q1", "q2"):
        await client.chat.completions.create(
            model="chat", messages=[{"role": "user", "content": question}]
        )
    await asyncio.sleep(0.2)
    assert running.metric("tokenomy_shadow_skipped_total", reason="budget") >= 1
    assert len(large.settings.requests) <= 1


async def test_free_text_is_judged_by_the_cheap_tier(
    standin: StandinFactory, sidecar: SidecarFactory
) -> None:
    running, small, large = await shadowed(standin, sidecar, compare="judge")
    small.settings.reply, small.settings.script = "SAME", {}
    large.settings.reply, large.settings.script = "A long answer in free text, as models give.", {}
    client = running.client()
    await client.chat.completions.create(
        model="chat", messages=[{"role": "user", "content": "tell me"}]
    )
    await settled(running, 1)
    small.settings.reply = "DIFFERENT"
    await client.chat.completions.create(
        model="chat", messages=[{"role": "user", "content": "tell me more"}]
    )
    await settled(running, 2)
    assert running.metric("tokenomy_shadow_comparisons_total", result="agree") == 1
    assert running.metric("tokenomy_shadow_comparisons_total", result="disagree") == 1
    judge = [b for b in small.settings.requests if "SAME or DIFFERENT" in str(b["messages"])]
    assert len(judge) == 2
    assert "A long answer in free text" in judge[0]["messages"][0]["content"]


async def test_semantic_hits_are_compared_with_the_reference_answer_to_their_own_question(
    standin: StandinFactory, sidecar: SidecarFactory
) -> None:
    running, small, large = await shadowed(standin, sidecar, default_tier="large", semantic=True)
    large.settings.script = {
        "What is the capital of France?": Scripted(("Paris",)),
        "What's the capital city of France?": Scripted(("Paris",)),
        "What is the capital of Spain?": Scripted(("Madrid",)),
    }
    client = running.client()

    async def ask(text: str) -> str:
        raw = await client.chat.completions.with_raw_response.create(
            model="chat", messages=[{"role": "user", "content": text}]
        )
        return raw.headers["x-tokenomy-cache"]

    assert await ask("What is the capital of France?") == "miss"  # the reference answers
    assert await ask("What's the capital city of France?") == "semantic"
    await settled(running, 1)
    assert (
        running.metric("tokenomy_shadow_comparisons_total", lever="semantic_cache", result="agree")
        == 1
    )
    # The reference was asked the question the hit answered, not the stored one.
    assert large.settings.requests[-1]["messages"][-1]["content"] == (
        "What's the capital city of France?"
    )
    assert small.settings.requests == []


@pytest.mark.unit
@pytest.mark.parametrize(
    ("shadow", "spec", "fields"),
    [
        ({"enabled": True}, {}, []),
        ({"autoTune": {"enabled": True}}, {}, ["spec.shadow.autoTune.enabled"]),
        ({"enabled": True, "autoTune": {"enabled": True}}, {}, ["spec.shadow.autoTune.enabled"]),
        ({"enabled": True, "autoTune": {"enabled": True}},
         {"cascade": {"enabled": True, "tiers": ["small", "large"]}}, []),
        ({"enabled": True, "compare": "exact", "judgeTier": "small"}, {},
         ["spec.shadow.judgeTier"]),
    ],
)  # fmt: skip
def test_shadow_settings_without_effect_are_notices(
    shadow: dict[str, Any], spec: dict[str, Any], fields: list[str]
) -> None:
    result = compile_configs([policy(shadow=shadow, **spec)], [route()])
    assert [n.field for n in result.notices] == fields
