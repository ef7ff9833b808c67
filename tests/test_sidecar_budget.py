"""A standalone sidecar keeps its policy's budget: reserve, reconcile, and each onExceeded mode."""

from __future__ import annotations

import asyncio
import contextlib
from datetime import UTC, datetime
from decimal import Decimal
from typing import Any

import openai
import pytest

from tokenomy_api.clock import ManualClock
from tokenomy_api.compiled import CompiledBackend, CompiledTier, Price
from tokenomy_sidecar.stages.budget import DEFAULT_OUTPUT_RESERVE, estimate, estimate_embedding

from helpers import backend, policy_doc, route_doc
from support import LiveSidecar, SidecarFactory, StandinFactory

SMALL = {"input": "0.15", "output": "0.60"}
LARGE = {"input": "2.50", "output": "10"}
# 2026-11-30 12:00 UTC: the monthly period ends 12 hours later.
NOON = datetime(2026, 11, 30, 12, tzinfo=UTC).timestamp()


def tier(name: str, price_in: str, price_out: str) -> CompiledTier:
    price = Price(input=Decimal(price_in), output=Decimal(price_out))
    b = CompiledBackend(
        name=name, cluster=f"c/{name}", provider="openai", model=name, endpoints=[],
        price=price, weight=1,
    )  # fmt: skip
    return CompiledTier(name=name, backends=[b])


@pytest.mark.parametrize(
    ("tiers", "body", "expected"),
    [
        # 20 characters of prompt = 5 tokens; 100 tokens of answer at most.
        ([("l", "2.5", "10")], {"max_tokens": 100}, (5 * 2.5 + 100 * 10) / 1e6),
        # A cascade may pay for both tiers.
        ([("s", "0.15", "0.6"), ("l", "2.5", "10")], {"max_tokens": 100},
         (5 * 0.15 + 100 * 0.6 + 5 * 2.5 + 100 * 10) / 1e6),
        # No limit: the default reserve; n samples: n answers.
        ([("l", "2.5", "10")], {}, (5 * 2.5 + DEFAULT_OUTPUT_RESERVE * 10) / 1e6),
        ([("l", "2.5", "10")], {"max_tokens": 100, "n": 3}, (5 * 2.5 + 300 * 10) / 1e6),
    ],
)  # fmt: skip
def test_estimate_is_an_upper_bound(
    tiers: list[tuple[str, str, str]], body: dict[str, Any], expected: float
) -> None:
    messages = [{"role": "user", "content": "x" * 20}]
    got = estimate([tier(*t) for t in tiers], {**body, "messages": messages})
    assert float(got) == pytest.approx(expected)


@pytest.mark.parametrize(
    ("given", "tokens"),
    [
        ("twenty characters..", 5),
        (["twenty characters..", "abcd"], 6),
        ([1, 2, 3], 3),  # token ids
        ([[1, 2], [3, 4, 5]], 5),  # several arrays of token ids
        (None, 0),
    ],
)
def test_embedding_estimate_counts_every_input(given: Any, tokens: int) -> None:
    assert estimate_embedding(tier("e", "2", "0"), {"input": given}) == Decimal(tokens * 2) / 10**6


async def budgeted(
    standin: StandinFactory, sidecar: SidecarFactory, mode: str, amount: str, clock: Any = None
) -> LiveSidecar:
    small = await standin(name="small", reply="ok")
    large = await standin(name="large", reply="a fine answer")
    route = route_doc(
        namespace="default",
        tiers=[
            {"name": "small", "backends": [backend("s", url=small.url, price=SMALL)]},
            {"name": "large", "backends": [backend("l", url=large.url, price=LARGE)]},
        ],
    )
    policy = policy_doc(
        namespace="default",
        cache={"exact": {"enabled": False}},
        output={"maxTokens": 16},
        budget={"amount": amount, "period": "monthly", "onExceeded": mode},
    )
    return await sidecar(route, policy, clock=clock, enforce_local_budget=True)


async def ask(running: LiveSidecar, text: str = "hello there") -> Any:
    return await running.client().chat.completions.with_raw_response.create(
        model="chat", messages=[{"role": "user", "content": text}]
    )


async def test_reject_answers_429_with_why_and_when_it_resets(
    standin: StandinFactory, sidecar: SidecarFactory
) -> None:
    clock = ManualClock(NOON)
    running = await budgeted(standin, sidecar, "reject", "0.001", clock)
    spent = Decimal(0)
    for _ in range(100):
        try:
            answer = await ask(running)
        except openai.RateLimitError as error:
            refused = error
            break
        spent += Decimal(answer.headers["x-tokenomy-cost-usd"])
    else:
        pytest.fail("the budget never ran out")
    assert 0 < spent <= Decimal("0.001")
    assert refused.status_code == 429
    body = refused.response.json()["error"]
    assert body["type"] == "budget_exceeded"
    assert body["code"] == "budget_exceeded"
    assert body["message"] == (
        "the monthly budget of 0.001 USD of CostPolicy default/agent is spent; "
        "it resets at 2026-12-01T00:00:00Z"
    )
    assert refused.response.headers["retry-after"] == str(12 * 3600 + 1)
    assert running.metric("tokenomy_budget_exceeded_total", mode="reject") == 1
    # A new month: the budget is back.
    clock.advance(12 * 3600)
    again = await ask(running)
    assert again.http_response.status_code == 200


async def test_downgrade_serves_from_the_cheapest_tier(
    standin: StandinFactory, sidecar: SidecarFactory
) -> None:
    running = await budgeted(standin, sidecar, "downgrade", "0.0005")
    tiers = [(await ask(running)).headers["x-tokenomy-tier"] for _ in range(12)]
    assert tiers[0] == "large"
    assert tiers[-1] == "small"
    last = await ask(running)
    assert last.headers["x-tokenomy-route-reason"].endswith("budget spent: cheapest tier")
    assert running.metric("tokenomy_budget_exceeded_total", mode="downgrade") >= 1


async def test_alert_keeps_serving_and_counts(
    standin: StandinFactory, sidecar: SidecarFactory
) -> None:
    running = await budgeted(standin, sidecar, "alert", "0.0005")
    answers = [await ask(running) for _ in range(12)]
    assert {a.headers["x-tokenomy-tier"] for a in answers} == {"large"}
    assert answers[-1].headers["x-tokenomy-route-reason"].endswith("budget spent")
    assert running.metric("tokenomy_budget_exceeded_total", mode="alert") >= 1


async def test_concurrent_requests_do_not_leak_past_the_budget(
    standin: StandinFactory, sidecar: SidecarFactory
) -> None:
    running = await budgeted(standin, sidecar, "reject", "0.002")

    async def one(i: int) -> Decimal:
        try:
            answer = await ask(running, f"question number {i}")
        except openai.RateLimitError:
            return Decimal(0)
        return Decimal(answer.headers["x-tokenomy-cost-usd"])

    costs = await asyncio.gather(*(one(i) for i in range(60)))
    served = [c for c in costs if c > 0]
    assert sum(served) <= Decimal("0.002")
    assert 0 < len(served) < 60  # some were refused: the budget was the limit
    # Reservations (prompt + 16 tokens at the large price) are released once answered,
    # so the ledger ends within one reservation of the budget.
    reserve = (4 * Decimal("2.5") + 16 * 10) / 1_000_000
    assert sum(served) > Decimal("0.002") - len(served) * reserve


@pytest.mark.parametrize("mode", ["reject", "downgrade"])
async def test_embeddings_spend_from_the_same_budget(
    mode: str, standin: StandinFactory, sidecar: SidecarFactory
) -> None:
    running = await budgeted(standin, sidecar, mode, "0.0005")
    client = running.client()
    embedded = await client.embeddings.with_raw_response.create(model="chat", input=["a b", "c"])
    assert Decimal(embedded.headers["x-tokenomy-cost-usd"]) > 0
    while running.metric("tokenomy_budget_exceeded_total", mode=mode) == 0:
        with contextlib.suppress(openai.RateLimitError):
            await ask(running)  # chat spends the budget down
    long = "many words " * 400  # about 1,100 tokens: more than what is left
    if mode == "reject":
        with pytest.raises(openai.RateLimitError, match=r"budget of 0\.0005 USD"):
            await client.embeddings.create(model="chat", input=long)
    else:
        # Another tier's vectors would not match the stored ones: served by the same tier.
        late = await client.embeddings.with_raw_response.create(model="chat", input=long)
        assert late.headers["x-tokenomy-tier"] == "large"


async def test_a_request_larger_than_a_lease_is_served_while_the_budget_allows(
    standin: StandinFactory, sidecar: SidecarFactory
) -> None:
    model = await standin(name="m", reply="ok")
    dear = {"input": "100", "output": "100"}
    route = route_doc(
        namespace="default",
        tiers=[{"name": "t", "backends": [backend("b", url=model.url, price=dear)]}],
    )
    policy = policy_doc(
        namespace="default",
        cache={"exact": {"enabled": False}},
        budget={"amount": "2", "period": "monthly", "onExceeded": "reject"},
    )
    running = await sidecar(route, policy, enforce_local_budget=True)
    answer = await ask(running, " ".join(["word"] * 600))  # reserves ~$0.12, a lease is $0.02
    assert answer.http_response.status_code == 200
    assert running.metric("tokenomy_budget_exceeded_total") == 0
