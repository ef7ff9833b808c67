"""Provider prompt caches: conversations stay on the endpoint that served them, a cache key
per partition for providers that take one, the app's prefix kept first, cached tokens counted."""

from __future__ import annotations

import random
from collections import Counter
from typing import Any

import pytest

from tokenomy_api.compiled import CompiledPlacement
from tokenomy_api.compiler import compile_configs
from tokenomy_sidecar.stages.backend_choice import (
    AFFINITY_MAX,
    EndpointHealth,
    PrefixAffinity,
    prefix_key,
    rank,
)

from helpers import backend, policy, policy_doc, route, route_doc
from support import SidecarFactory, StandinFactory

PRICE = {"input": "1", "output": "1"}


def tier_of(*backends: dict[str, Any]) -> Any:
    doc = {"tiers": [{"name": "t", "backends": list(backends)}]}
    return compile_configs([policy()], [route(**doc)]).configs["ns/agent"].routes[0].tiers[0]


def urls(tier: Any) -> dict[str, str]:
    return {b.name: b.endpoints[0].url for b in tier.backends}


@pytest.mark.parametrize(
    ("prefer", "ejected", "first"),
    [
        (None, None, None),  # no preference: the weighted lottery decides
        ("b", None, "b"),  # the conversation's endpoint first among equals
        ("a", None, "a"),
        ("b", "b", "a"),  # ... unless it is ejected
        ("dear", None, None),  # ... never over a cheaper one (a and b drawn, dear never)
    ],
)
def test_the_preferred_endpoint_wins_among_equals_only(
    prefer: str | None, ejected: str | None, first: str | None
) -> None:
    tier = tier_of(
        backend("a", price=PRICE), backend("b", price=PRICE),
        backend("dear", price={"input": "5", "output": "5"}),
    )  # fmt: skip
    where = urls(tier)
    health = {where[ejected]: EndpointHealth(1, ejected_until=10.0)} if ejected else {}
    preferred = where[prefer] if prefer else None
    firsts = Counter(
        rank(tier, CompiledPlacement(nearest=False), None, health, 0.0, random.Random(i),
             preferred)[0].backend.name
        for i in range(200)
    )  # fmt: skip
    if first is None:
        assert set(firsts) == {"a", "b"}  # both drawn
    else:
        assert firsts == {first: 200}


def test_every_turn_of_a_conversation_has_its_key() -> None:
    system = {"role": "system", "content": "You help."}
    turn1 = [system, {"role": "user", "content": "Where is my card?"}]
    turn2 = [
        *turn1,
        {"role": "assistant", "content": "On its way."},
        {"role": "user", "content": "When?"},
    ]
    other = [system, {"role": "user", "content": "Reset my PIN."}]
    assert prefix_key({"messages": turn1}) == prefix_key({"messages": turn2})
    assert prefix_key({"messages": turn1}) != prefix_key({"messages": other})
    assert prefix_key({"messages": [system]}) is not None
    assert prefix_key({"messages": []}) is None
    assert prefix_key({}) is None


def test_affinity_is_bounded() -> None:
    affinity = PrefixAffinity()
    for i in range(AFFINITY_MAX + 10):
        affinity.served(str(i), "u")
    assert len(affinity.last) == AFFINITY_MAX
    assert affinity.preferred("0") is None
    assert affinity.preferred(str(AFFINITY_MAX + 9)) == "u"


async def test_conversations_stay_where_their_prefix_is_cached(
    standin: StandinFactory, sidecar: SidecarFactory
) -> None:
    replicas = [await standin(name=f"r{i}", prompt_cache=True) for i in range(2)]
    tiers = [{"name": "t", "backends": [backend(f"r{i}", url=r.url, price=PRICE)
                                        for i, r in enumerate(replicas)]}]  # fmt: skip
    running = await sidecar(
        route_doc(namespace="default", tiers=tiers),
        policy_doc(namespace="default", cache={"exact": {"enabled": False}}),
    )
    client = running.client()
    system = {"role": "system", "content": "You are the support assistant. " * 40}
    for c in range(12):
        messages: list[Any] = [system]
        for turn in range(4):
            messages.append({"role": "user", "content": f"conversation {c} question {turn}"})
            answer = await client.chat.completions.create(model="chat", messages=messages)
            messages.append({"role": "assistant", "content": answer.choices[0].message.content})
    served = {
        r.settings.name: {m["content"] for b in r.settings.requests for m in b["messages"][1:2]}
        for r in replicas
    }
    # Every conversation on one replica, and both replicas used.
    assert not served["r0"] & served["r1"]
    assert served["r0"]
    assert served["r1"]
    assert running.metric("tokenomy_prefix_affinity_total", result="kept") == 12 * 3
    assert running.metric("tokenomy_prefix_affinity_total", result="new") == 12
    cached = running.metric("tokenomy_tokens_total", direction="cached_input")
    total = running.metric("tokenomy_tokens_total", direction="input")
    # Turns 2-4 find everything before their question cached; a moved turn would not.
    assert cached / total > 0.7


async def test_the_provider_cache_key_follows_the_partition_and_is_opt_in(
    standin: StandinFactory, sidecar: SidecarFactory
) -> None:
    keyed, plain = await standin(name="keyed"), await standin(name="plain")
    routes = [
        route_doc("chat", namespace="default", tiers=[
            {"name": "t", "backends": [backend("k", url=keyed.url, promptCacheKey=True)]}]),
        route_doc("other", namespace="default", tiers=[
            {"name": "t", "backends": [backend("p", url=plain.url)]}]),
    ]  # fmt: skip
    running = await sidecar(
        *routes,
        policy_doc(
            namespace="default",
            routes=("chat", "other"),
            cache={"exact": {"enabled": False}, "scope": {"type": "header", "header": "x-tenant"}},
        ),
    )
    client = running.client()

    async def ask(model: str, tenant: str, **extra: Any) -> dict[str, Any]:
        await client.chat.completions.create(
            model=model, messages=[{"role": "user", "content": "hi"}],
            extra_headers={"x-tenant": tenant}, extra_body=extra,
        )  # fmt: skip
        standin_ = keyed if model == "chat" else plain
        return standin_.settings.requests[-1]

    a1, a2, b = await ask("chat", "acme"), await ask("chat", "acme"), await ask("chat", "globex")
    assert a1["prompt_cache_key"] == a2["prompt_cache_key"] != b["prompt_cache_key"]
    assert "acme" not in a1["prompt_cache_key"]  # the tenant id never leaves as sent
    own = await ask("chat", "acme", prompt_cache_key="mine")
    assert own["prompt_cache_key"] == "mine"  # the client's own key is kept
    assert "prompt_cache_key" not in await ask("other", "acme")  # not asked for: never sent
