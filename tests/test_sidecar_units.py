"""Pure pieces of the sidecar pipeline, table-driven."""

from __future__ import annotations

import random
import re
from decimal import Decimal
from typing import Any

import numpy as np
import orjson
import pytest

from tokenomy_api.clock import ManualClock
from tokenomy_api.compiled import CompiledOutput as Output
from tokenomy_api.compiled import CompiledPlacement, Price, SidecarConfig
from tokenomy_api.compiled import CompiledPrompt as Prompt
from tokenomy_api.compiler import compile_configs
from tokenomy_sidecar.errors import ApiError
from tokenomy_sidecar.memory_budget import MemoryBudget
from tokenomy_sidecar.metrics import Metrics
from tokenomy_sidecar.request import parse_chat
from tokenomy_sidecar.semantic_index import SemanticIndex
from tokenomy_sidecar.sse import assemble, cacheable, replay, split_events
from tokenomy_sidecar.stages.backend_choice import EndpointHealth, HealthTracker, rank
from tokenomy_sidecar.stages.exact_cache import exact_key
from tokenomy_sidecar.stages.identify import decide
from tokenomy_sidecar.stages.metering import Usage, cost, savings, usd
from tokenomy_sidecar.stages.trim import cap_output, fit_within, input_tokens, trim_prompt
from tokenomy_sidecar.stores import MemoryStore

from helpers import backend, policy, route


def config_for(**spec: Any) -> SidecarConfig:
    return compile_configs([policy(**spec)], [route()]).configs["ns/agent"]


# --- metering ---------------------------------------------------------------

PRICE = Price(input=Decimal("2.50"), cached_input=Decimal("1.25"), output=Decimal("10"))


@pytest.mark.parametrize(
    ("usage", "expected"),
    [
        (Usage(), Decimal(0)),
        (Usage(prompt=1_000_000), Decimal("2.5")),
        (Usage(completion=1), Decimal("0.00001")),
        (Usage(prompt=1000, completion=500), Decimal("0.0075")),
        (Usage(prompt=1000, cached=400, completion=500), Decimal("0.007")),
    ],
)
def test_cost(usage: Usage, expected: Decimal) -> None:
    assert cost(usage, PRICE) == expected


def test_cost_without_cached_price_uses_input_price() -> None:
    price = Price(input=Decimal(1), output=Decimal(2))
    assert cost(Usage(prompt=10, cached=10), price) == Decimal("0.00001")


def test_savings_against_reference() -> None:
    cheap = Price(input=Decimal("0.15"), output=Decimal("0.60"))
    usage = Usage(prompt=1000, completion=1000)
    paid = cost(usage, cheap)
    assert savings(usage, paid, PRICE) == Decimal("0.0125") - Decimal("0.00075")


@pytest.mark.parametrize(
    ("raw", "expected"),
    [
        (None, Usage()),
        ({"prompt_tokens": 3, "completion_tokens": 5}, Usage(3, 5, 0)),
        ({"prompt_tokens": 3, "prompt_tokens_details": {"cached_tokens": 2}}, Usage(3, 0, 2)),
        ({"prompt_tokens": 3, "prompt_tokens_details": {"cached_tokens": 9}}, Usage(3, 0, 3)),
        ({"prompt_tokens": "3", "completion_tokens": -1}, Usage()),
        ({"prompt_tokens": True}, Usage()),
    ],
)
def test_usage_from_openai(raw: Any, expected: Usage) -> None:
    assert Usage.from_openai(raw) == expected


@pytest.mark.parametrize(
    ("amount", "text"),
    [
        (Decimal("0.0075000"), "0.0075"),
        (Decimal(0), "0"),
        (Decimal("1E-7"), "0.0000001"),
        (Decimal("12.50"), "12.5"),
    ],
)
def test_usd(amount: Decimal, text: str) -> None:
    assert usd(amount) == text


# --- backend choice ---------------------------------------------------------

ROUTE_DOC = {
    "tiers": [
        {
            "name": "small",
            "backends": [
                backend("us-od", region="us", price={"input": "1", "output": "1"}),
                backend(
                    "us-spot", region="us", capacity="spot", price={"input": "1", "output": "1"}
                ),
                backend("eu-cheap", region="eu", price={"input": "0.1", "output": "0.1"}),
                backend(
                    "drained", region="us", weight=0, price={"input": "0.01", "output": "0.01"}
                ),
            ],
        }
    ]
}


def ranked(
    placement: dict[str, Any],
    health: dict[str, EndpointHealth] | None = None,
    pod_region: str | None = "us",
) -> list[str]:
    config = compile_configs([policy(placement=placement)], [route(**ROUTE_DOC)]).configs[
        "ns/agent"
    ]
    tier = config.routes[0].tiers[0]
    return [
        c.backend.name
        for c in rank(tier, config.placement, pod_region, health or {}, 100.0, random.Random(1))
    ]


@pytest.mark.parametrize(
    ("placement", "pod_region", "expected"),
    [
        # spot first, then cheapest among on-demand; drained (weight 0) last of all
        ({"spot": "prefer"}, "us", ["us-spot", "eu-cheap", "us-od", "drained"]),
        ({"spot": "avoid"}, "us", ["eu-cheap", "us-od", "us-spot", "drained"]),
        ({"spot": "only"}, "us", ["us-spot"]),
        # nearest: own region before cheaper far ones
        (
            {"spot": "avoid", "region": {"strategy": "nearest"}},
            "us",
            ["us-od", "eu-cheap", "us-spot", "drained"],
        ),
        (
            {"spot": "avoid", "region": {"strategy": "nearest"}},
            "eu",
            ["eu-cheap", "us-od", "us-spot", "drained"],
        ),
    ],
)
def test_rank_by_placement(placement: dict[str, Any], pod_region: str, expected: list[str]) -> None:
    assert ranked(placement, pod_region=pod_region) == expected


def test_ejected_endpoints_go_last() -> None:
    config = compile_configs([policy()], [route(**ROUTE_DOC)]).configs["ns/agent"]
    spot_url = config.routes[0].tiers[0].backends[1].endpoints[0].url
    health = {spot_url: EndpointHealth(failures=1, ejected_until=101.0)}
    assert ranked({"spot": "prefer"}, health)[-1] == "us-spot"
    expired = {spot_url: EndpointHealth(failures=1, ejected_until=99.0)}
    assert ranked({"spot": "prefer"}, expired)[0] == "us-spot"


def test_weights_share_traffic() -> None:
    doc = {"tiers": [{"name": "t", "backends": [backend("a", weight=3), backend("b", weight=1)]}]}
    config = compile_configs([policy()], [route(**doc)]).configs["ns/agent"]
    tier = config.routes[0].tiers[0]
    rng = random.Random(42)
    firsts = [
        rank(tier, CompiledPlacement(nearest=False), None, {}, 0.0, rng)[0].backend.name
        for _ in range(4000)
    ]
    share = firsts.count("a") / len(firsts)
    assert 0.70 < share < 0.80


def test_health_backoff_doubles_and_resets() -> None:
    tracker = HealthTracker()
    tracker.failed("u", now=0.0)
    assert tracker.endpoints["u"].ejected_until == 0.5
    tracker.failed("u", now=0.0)
    assert tracker.endpoints["u"].ejected_until == 1.0
    for _ in range(20):
        tracker.failed("u", now=0.0)
    assert tracker.endpoints["u"].ejected_until == 30.0
    tracker.succeeded("u", 0.1)
    assert tracker.endpoints["u"].failures == 0
    assert tracker.endpoints["u"].ejected_until == 0.0


# --- cache key and decision ---------------------------------------------------

BASE = {"model": "chat", "messages": [{"role": "user", "content": "hi"}], "temperature": 0}


@pytest.mark.parametrize(
    ("other", "same"),
    [
        (
            {"temperature": 0, "messages": [{"content": "hi", "role": "user"}], "model": "chat"},
            True,
        ),
        ({**BASE, "stream": True, "stream_options": {"include_usage": True}}, True),
        ({**BASE, "user": "someone", "metadata": {"a": 1}}, True),
        ({**BASE, "temperature": 0.7}, False),
        ({**BASE, "max_tokens": 10}, False),
        ({**BASE, "messages": [{"role": "user", "content": "hi!"}]}, False),
        ({**BASE, "model": "other"}, False),
        ({**BASE, "some_future_parameter": 1}, False),
    ],
)
def test_exact_key(other: dict[str, Any], same: bool) -> None:
    assert (exact_key("p", BASE) == exact_key("p", other)) is same


def test_exact_key_depends_on_partition() -> None:
    assert exact_key("tenant-a", BASE) != exact_key("tenant-b", BASE)


HEADER_SCOPE = {"cache": {"scope": {"type": "header", "header": "x-tenant"}}}


@pytest.mark.parametrize(
    ("spec", "body", "headers", "expected"),
    [
        ({}, BASE, {}, ("policy/ns/agent", True, True, "")),
        ({"cache": {"scope": {"type": "namespace"}}}, BASE, {}, ("namespace/ns", True, True, "")),
        (HEADER_SCOPE, BASE, {"x-tenant": "a"}, ("policy/ns/agent/header/a", True, True, "")),
        (HEADER_SCOPE, BASE, {}, ("", False, False, "no-partition-header")),
        (
            {"cache": {"exact": {"enabled": False}}},
            BASE,
            {},
            ("policy/ns/agent", False, False, "disabled"),
        ),
        ({}, BASE, {"Cache-Control": "no-store"}, ("policy/ns/agent", False, False, "no-store")),
        (
            {},
            BASE,
            {"Cache-Control": "max-age=0, no-cache"},
            ("policy/ns/agent", False, True, "no-cache"),
        ),
        (
            {},
            {**BASE, "tools": [{"type": "function"}]},
            {},
            ("policy/ns/agent", False, False, "tools"),
        ),
        (
            {"cache": {"never": {"withTools": False}}},
            {**BASE, "tools": [{}]},
            {},
            ("policy/ns/agent", True, True, ""),
        ),
        (
            {"cache": {"never": {"temperatureAbove": 0.5}}},
            {**BASE, "temperature": 0.9},
            {},
            ("policy/ns/agent", False, False, "temperature"),
        ),
        (
            {"cache": {"never": {"temperatureAbove": 0.5}}},
            {**BASE, "temperature": 0.5},
            {},
            ("policy/ns/agent", True, True, ""),
        ),
        (
            {"cache": {"never": {"headers": ["x-private"]}}},
            BASE,
            {"x-private": "1"},
            ("policy/ns/agent", False, False, "header"),
        ),
    ],
)
def test_cache_decision(
    spec: dict[str, Any],
    body: dict[str, Any],
    headers: dict[str, str],
    expected: tuple[str, bool, bool, str],
) -> None:
    d = decide(config_for(**spec), body, headers)
    assert (d.partition, d.lookup, d.store, d.reason) == expected


# --- trimming and caps --------------------------------------------------------


def msgs(*roles: str) -> list[dict[str, Any]]:
    return [{"role": r, "content": f"{r}{i}"} for i, r in enumerate(roles)]


def agent_transcript() -> list[dict[str, Any]]:
    """System, a question, a tool call with two results, an answer, the next question."""
    call = {"id": "c1", "type": "function",
            "function": {"name": "lookup", "arguments": '{"order": 42}'}}  # fmt: skip
    return [
        {"role": "system", "content": "You help with orders."},
        {"role": "user", "content": "Where is order 42? " * 10},  # ~50 tokens
        {"role": "assistant", "content": None, "tool_calls": [call]},
        {"role": "tool", "tool_call_id": "c1", "content": "shipped " * 20},  # ~40 tokens
        {"role": "tool", "tool_call_id": "c1", "content": "eta friday"},
        {"role": "assistant", "content": "It ships Friday."},
        {"role": "user", "content": "And what did the tool say exactly?"},
    ]


@pytest.mark.parametrize(
    ("budget", "kept_roles"),
    [
        (5, ["system", "user"]),  # the question always, whatever it costs
        (20, ["system", "assistant", "user"]),
        # the tool call and both results fit (about 60 tokens): all three, never one alone
        (80, ["system", "assistant", "tool", "tool", "assistant", "user"]),
        (10_000, ["system", "user", "assistant", "tool", "tool", "assistant", "user"]),
    ],
)
def test_the_token_window_keeps_tool_calls_with_their_results(
    budget: int, kept_roles: list[str]
) -> None:
    body = {"messages": agent_transcript()}
    trim_prompt(body, Prompt(history_tokens=budget))
    roles = [m["role"] for m in body["messages"]]
    assert roles == kept_roles
    for i, message in enumerate(body["messages"]):  # no result without its call before it
        if message["role"] == "tool":
            assert any(m.get("tool_calls") for m in body["messages"][:i])


@pytest.mark.parametrize(
    ("prompt", "messages", "kept"),
    [
        (
            Prompt(),
            msgs("system", "user", "assistant", "user"),
            ["system0", "user1", "assistant2", "user3"],
        ),
        (
            Prompt(history_window=2),
            msgs("system", "user", "assistant", "user"),
            ["system0", "assistant2", "user3"],
        ),
        (Prompt(history_window=1), msgs("user", "assistant", "tool", "tool", "user"), ["user4"]),
        (
            Prompt(history_window=3),
            msgs("user", "assistant", "tool", "tool", "user"),
            ["tool3", "user4"][1:],
        ),
        (
            Prompt(deduplicate=True),
            [
                {"role": "user", "content": "same"},
                {"role": "user", "content": "same"},
                {"role": "user", "content": "x"},
            ],
            ["same", "x"],
        ),
    ],
)
def test_trim_prompt(prompt: Prompt, messages: list[dict[str, Any]], kept: list[str]) -> None:
    body = {"messages": messages}
    dropped = trim_prompt(body, prompt)
    assert [m["content"] for m in body["messages"]] == kept
    # What the window dropped, for a summary to stand in for; repeats are not in it.
    window = [m["content"] for m in messages if m["content"] not in kept]
    assert [m["content"] for m in dropped] == ([] if prompt.deduplicate else window)


@pytest.mark.parametrize(
    ("cap", "body", "expected"),
    [
        (None, {"max_tokens": 5000}, {"max_tokens": 5000}),
        (1024, {"max_tokens": 5000}, {"max_tokens": 1024}),
        (1024, {"max_tokens": 10}, {"max_tokens": 10}),
        (1024, {}, {"max_tokens": 1024}),
        (1024, {"max_completion_tokens": 4096}, {"max_completion_tokens": 1024}),
    ],
)
def test_cap_output(cap: int | None, body: dict[str, Any], expected: dict[str, Any]) -> None:
    body = {**body, "messages": []}
    cap_output(body, Output(max_tokens=cap))
    assert {k: v for k, v in body.items() if k != "messages"} == expected


@pytest.mark.parametrize(
    ("roles", "at"),
    [
        (("user",), 0),
        (("system", "user"), 1),  # after the app's system prompt: its prefix stays first
        (("system", "developer", "user", "assistant", "user"), 2),
    ],
)
def test_brevity_adds_a_system_message_after_the_apps_own(roles: tuple[str, ...], at: int) -> None:
    body: dict[str, Any] = {"messages": msgs(*roles)}
    original = list(body["messages"])
    cap_output(body, Output(brevity="Be brief."))
    assert body["messages"][at] == {"role": "system", "content": "Be brief."}
    assert body["messages"][:at] == original[:at]
    assert len(body["messages"]) == len(original) + 1


# --- request checks -------------------------------------------------------------


@pytest.mark.parametrize(
    ("raw", "message"),
    [
        (b"{", "request body is not valid JSON"),
        (b"[]", "request body must be a JSON object"),
        (b'{"messages": [{"role": "user"}]}', "`model` is required"),
        (b'{"model": "m"}', "`messages` must be a non-empty array"),
        (b'{"model": "m", "messages": ["hi"]}', "`messages[0]` must be an object with a `role`"),
        (
            b'{"model": "m", "messages": [{"role": "user"}], "stream": "yes"}',
            "`stream` must be a boolean",
        ),
        (
            b'{"model": "m", "messages": [{"role": "user"}], "max_tokens": "10"}',
            "`max_tokens` must be an integer",
        ),
        (
            b'{"model": "m", "messages": [{"role": "user"}], "temperature": "hot"}',
            "`temperature` must be a number",
        ),
    ],
)
def test_parse_chat_refuses(raw: bytes, message: str) -> None:
    with pytest.raises(ApiError, match=re.escape(message)) as error:
        parse_chat(raw)
    assert error.value.status == 400


def test_parse_chat_keeps_unknown_fields() -> None:
    chat = parse_chat(b'{"model": "m", "messages": [{"role": "user"}], "x_vendor": {"a": 1}}')
    assert chat.body["x_vendor"] == {"a": 1}


# --- SSE ------------------------------------------------------------------------------

COMPLETION = {
    "id": "c1",
    "object": "chat.completion",
    "created": 1,
    "model": "m",
    "choices": [
        {
            "index": 0,
            "message": {"role": "assistant", "content": "hello world", "refusal": None},
            "finish_reason": "stop",
            "logprobs": None,
        }
    ],
    "usage": {"prompt_tokens": 2, "completion_tokens": 2, "total_tokens": 4},
}


@pytest.mark.parametrize("include_usage", [True, False])
def test_replay_then_assemble_round_trips(include_usage: bool) -> None:
    buffer = bytearray(b"".join(replay(COMPLETION, include_usage)))
    events = list(split_events(buffer))
    assert buffer == b""
    assert events[-1] == b"data: [DONE]"
    rebuilt = assemble(events)
    assert rebuilt is not None
    assert rebuilt["choices"][0]["message"]["content"] == "hello world"
    assert ("usage" in rebuilt) is include_usage


def test_split_events_keeps_partial_event() -> None:
    buffer = bytearray(b"data: 1\n\ndata: 2\n")
    assert list(split_events(buffer)) == [b"data: 1"]
    assert buffer == b"data: 2\n"


def test_assemble_refuses_unfinished_and_tool_call_streams() -> None:
    unfinished = [b'data: {"choices":[{"index":0,"delta":{"content":"a"},"finish_reason":null}]}']
    assert assemble(unfinished) is None
    tools = [
        b'data: {"choices":[{"index":0,"delta":{"tool_calls":[{}]},"finish_reason":"tool_calls"}]}'
    ]
    assert assemble(tools) is None


def test_a_streamed_refusal_stays_a_refusal_and_is_not_cacheable() -> None:
    events = [
        b'data: {"choices":[{"index":0,"delta":{"role":"assistant","refusal":""}}]}',
        b'data: {"choices":[{"index":0,"delta":{"refusal":"I can\'t help"}}]}',
        b'data: {"choices":[{"index":0,"delta":{"refusal":" with that."}}]}',
        b'data: {"choices":[{"index":0,"delta":{},"finish_reason":"stop"}]}',
    ]
    rebuilt = assemble(events)
    assert rebuilt is not None
    assert rebuilt["choices"][0]["message"]["refusal"] == "I can't help with that."
    assert not cacheable(rebuilt)


def _with(**choice: Any) -> dict[str, Any]:
    base = COMPLETION["choices"][0]  # type: ignore[index]
    return {**COMPLETION, "choices": [{**base, **choice}]}


@pytest.mark.parametrize(
    ("completion", "ok"),
    [
        (COMPLETION, True),
        (_with(finish_reason="length"), False),
        (_with(finish_reason="content_filter"), False),
        (_with(message={"role": "assistant", "content": None, "tool_calls": [{}]}), False),
        (_with(message={"role": "assistant", "content": "", "refusal": "no"}), False),
        ({**COMPLETION, "choices": [COMPLETION["choices"][0]] * 2}, False),  # type: ignore[index]
        ({"error": {}}, False),
    ],
)
def test_cacheable(completion: dict[str, Any], ok: bool) -> None:
    assert cacheable(completion) is ok


# --- memory store ---------------------------------------------------------------------


async def test_memory_store_ttl_and_lru() -> None:
    clock = ManualClock()
    store = MemoryStore(max_entries=2, clock=clock, budget=MemoryBudget(1 << 20))
    await store.put("p", "a", b"A", ttl=10)
    await store.put("p", "b", b"B", ttl=10)
    assert await store.get("p", "a") == b"A"  # a is now most recent
    await store.put("p", "c", b"C", ttl=10)  # evicts b
    assert await store.get("p", "b") is None
    assert await store.get("p", "a") == b"A"
    assert await store.get("other", "a") is None  # partitions are separate
    clock.advance(10)
    assert await store.get("p", "a") is None
    assert len(store) == 1


async def test_both_caches_share_one_memory_budget_and_its_gauge() -> None:
    metrics = Metrics()
    budget = MemoryBudget(1 << 20, metrics.cache_memory)
    store = MemoryStore(max_entries=1_000, clock=ManualClock(), budget=budget)
    index = SemanticIndex(budget, ManualClock())
    vector = np.ones(8, dtype=np.float32) / np.sqrt(8)
    index.add("p", "c", vector, b"semantic answer", ttl=10)
    assert budget.used > 0
    budget.max_bytes = budget.used + 20 * 1_000  # about 20 exact entries more
    for i in range(100):
        await store.put(f"tenant{i}", "k", b"x" * 600, ttl=10)
    assert index.search("p", "c", vector) is None  # the oldest entry went, across caches
    assert 10 < len(store) < 30
    assert budget.used <= budget.max_bytes
    exact = metrics.registry.get_sample_value("tokenomy_cache_memory_bytes", {"cache": "exact"})
    semantic = metrics.registry.get_sample_value(
        "tokenomy_cache_memory_bytes", {"cache": "semantic"}
    )
    assert (exact, semantic) == (budget.used, 0)
    await store.close()
    assert budget.used == 0


def test_orjson_is_what_the_key_hashes() -> None:
    # Guard: the key must not depend on dict insertion order.
    assert orjson.dumps({"b": 1, "a": 2}, option=orjson.OPT_SORT_KEYS) == b'{"a":2,"b":1}'


def test_fit_within_drops_the_oldest_turns_and_keeps_calls_with_their_results() -> None:
    messages = agent_transcript()
    body: dict[str, Any] = {"messages": [*messages]}
    whole = input_tokens(body)
    fit_within(body, whole - 1)
    kept = body["messages"]
    assert input_tokens(body) <= whole - 1
    assert kept[0] == messages[0]  # the system message stays
    assert kept[-1] == messages[-1]  # and the question
    # Every tool result still follows the assistant message that called it.
    for i, message in enumerate(kept):
        if message.get("role") == "tool":
            assert kept[i - 1].get("role") in ("assistant", "tool")
    tiny: dict[str, Any] = {"messages": [*messages]}
    fit_within(tiny, 1)  # cannot fit: system and the question are what is left
    assert [m.get("role") for m in tiny["messages"]] == ["system", messages[-1]["role"]]
