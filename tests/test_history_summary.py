"""Summaries of the turns the history window drops: made once per conversation prefix by the
cheapest tier, extended as the conversation grows, kept inside the partition, metered."""

from __future__ import annotations

from collections import deque
from typing import Any

import openai
import pytest

from tokenomy_api.clock import SystemClock
from tokenomy_api.compiled import CompiledPrompt, CompiledSummary
from tokenomy_api.compiler import compile_configs
from tokenomy_sidecar.memory_budget import MemoryBudget
from tokenomy_sidecar.stages.summarize import (
    HEADER,
    INSTRUCTION,
    MIN_TOKENS,
    chain,
    root_key,
    summarize,
    with_summary,
)
from tokenomy_sidecar.stages.trim import trim_prompt
from tokenomy_sidecar.stores import MemoryStore

from helpers import backend, policy, policy_doc, route, route_doc
from support import SidecarFactory, StandinFactory

SUMMARY = CompiledSummary(max_tokens=64, ttl_seconds=60, timeout_seconds=5)
SYSTEM = {"role": "system", "content": "You are the order desk."}


def conversation(turns: int) -> list[dict[str, Any]]:
    """A user/assistant exchange with one tool call (and its two results) in turn 1."""
    messages: list[dict[str, Any]] = [SYSTEM]
    for i in range(turns):
        messages.append({"role": "user", "content": f"question {i} " + "detail " * 20})
        if i == 1:
            call = {"id": "c1", "type": "function",
                    "function": {"name": "lookup", "arguments": '{"order": 7}'}}  # fmt: skip
            messages += [
                {"role": "assistant", "content": None, "tool_calls": [call]},
                {"role": "tool", "tool_call_id": "c1", "content": '{"status": "shipped"}'},
                {"role": "tool", "tool_call_id": "c1", "content": "carrier: DHL"},
            ]
        messages.append({"role": "assistant", "content": f"answer {i} " + "words " * 20})
    return messages


class Asker:
    """A cheapest tier that answers with what it was shown, and can be made to fail."""

    def __init__(self, fails: bool = False) -> None:
        self.bodies: list[dict[str, Any]] = []
        self.fails = fails

    async def __call__(self, body: dict[str, Any]) -> str | None:
        self.bodies.append(body)
        return None if self.fails else f"summary #{len(self.bodies)}"


def store() -> MemoryStore:
    return MemoryStore(1000, SystemClock(), MemoryBudget(1 << 20))


def dropped_of(turns: int) -> list[dict[str, Any]]:
    return conversation(turns)[1:]


@pytest.mark.parametrize(
    ("stored", "asked", "keep", "tokens", "fails", "result", "shown"),
    [
        # Nothing stored: the whole dropped part is summarised.
        (None, 4, True, 64, False, "made", ["question 0", "question 3"]),
        # The same dropped part stored: served as it is, no call.
        (4, 4, True, 64, False, "cached", []),
        # A shorter part stored: extended with the turns added since, and only those.
        (2, 4, True, 64, False, "extended", ["summary #0", "question 2", "question 3"]),
        # The client said no-store: nothing read, nothing kept.
        (4, 4, False, 64, False, "made", ["question 0"]),
        # Too little dropped to be worth a summary.
        (None, 4, True, MIN_TOKENS - 1, False, "skipped", []),
        # The cheapest tier gave nothing usable: the turns are only dropped.
        (None, 4, True, 64, True, "failed", ["question 0"]),
    ],
)
async def test_a_summary_is_found_extended_or_made(
    stored: int | None,
    asked: int,
    keep: bool,
    tokens: int,
    fails: bool,
    result: str,
    shown: list[str],
) -> None:
    cache = store()
    root = root_key("p", "chat", "small", SUMMARY, [SYSTEM])
    if stored is not None:
        earlier = dropped_of(stored)
        await cache.put("p", chain(root, earlier)[-1][1], b"summary #0", 60)
    ask = Asker(fails)
    dropped = dropped_of(asked)
    made = await summarize(cache, "p", root, dropped, tokens, 60, ask, keep)
    assert made.result == result
    assert len(ask.bodies) == (1 if shown else 0)
    if shown:
        text = ask.bodies[0]["messages"][1]["content"]
        assert all(s in text for s in shown)
        if result == "extended":
            assert "question 0" not in text  # never re-read
            assert "question 1" not in text
        assert ask.bodies[0]["max_tokens"] == tokens
    found = await cache.get("p", chain(root, dropped)[-1][1])
    if result in ("made", "extended") and keep:
        assert found == made.text.encode()  # type: ignore[union-attr]
    else:  # what was there before, and nothing new
        assert found == (b"summary #0" if stored == asked else None)


def test_the_chain_ends_only_after_whole_turns() -> None:
    dropped = dropped_of(3)
    ends = [count for count, _ in chain("r", dropped)]
    # A tool call and its two results are one turn: no key ends between them.
    calling = next(i for i, m in enumerate(dropped) if m.get("tool_calls"))
    assert {calling + 1, calling + 2}.isdisjoint(ends)
    assert ends[-1] == len(dropped)
    # The same turns give the same keys; another root (partition, tier...) others.
    assert chain("r", dropped) == chain("r", [dict(m) for m in dropped])
    assert not {k for _, k in chain("r", dropped)} & {k for _, k in chain("s", dropped)}


def test_the_root_separates_partitions_and_settings() -> None:
    base = root_key("p", "chat", "small", SUMMARY, [SYSTEM])
    assert base != root_key("q", "chat", "small", SUMMARY, [SYSTEM])
    assert base != root_key("p", "chat", "small", SUMMARY.model_copy(update={"max_tokens": 65}),
                            [SYSTEM])  # fmt: skip
    assert base != root_key("p", "chat", "small", SUMMARY, [{"role": "system", "content": "x"}])


def test_the_summary_follows_the_apps_system_messages() -> None:
    messages = [SYSTEM, {"role": "user", "content": "q"}]
    out = with_summary(messages, "s")
    assert out[0] == SYSTEM
    assert out[1] == {"role": "system", "content": HEADER + "s"}
    assert out[2:] == messages[1:]


def test_the_window_returns_what_it_dropped() -> None:
    messages = conversation(4)
    body = {"messages": list(messages)}
    dropped = trim_prompt(body, CompiledPrompt(history_window=2))
    assert dropped + body["messages"][1:] == messages[1:]  # nothing lost, nothing twice
    assert trim_prompt({"messages": list(messages)}, CompiledPrompt()) == []


def test_summary_without_a_window_is_a_notice_and_compiles_to_nothing() -> None:
    on = {"summary": {"enabled": True}}
    result = compile_configs([policy(prompt=on)], [route()])
    assert [n.field for n in result.notices] == ["spec.prompt.summary.enabled"]
    assert result.configs["ns/agent"].prompt.summary is None
    windowed = compile_configs([policy(prompt={**on, "historyTokens": 100})], [route()])
    assert windowed.notices == []
    assert windowed.configs["ns/agent"].prompt.summary == CompiledSummary(
        max_tokens=256, ttl_seconds=3600, timeout_seconds=10
    )


def summary_requests(requests: list[dict[str, Any]]) -> list[str]:
    """The text of the summary requests a stand-in received."""
    prefix = INSTRUCTION[:30]
    return [
        b["messages"][1]["content"] for b in requests if b["messages"][0]["content"][:30] == prefix
    ]


async def chat_sidecar(
    standin: StandinFactory, sidecar: SidecarFactory, settings: Any = None, **spec: Any
) -> tuple[Any, Any, Any]:
    small, large = await standin(name="small"), await standin(name="large")
    tiers = [
        {"name": "small", "backends": [backend("s", url=small.url)]},
        {"name": "large", "backends": [backend("l", url=large.url,
                                               price={"input": "10", "output": "30"})]},
    ]  # fmt: skip
    prompt = {"historyTokens": 80, "summary": {"enabled": True, "maxTokens": 40}}
    running = await sidecar(
        route_doc(namespace="default", tiers=tiers, defaultTier="large"),
        policy_doc(namespace="default", cache={"exact": {"enabled": False}},
                   prompt=prompt, **spec),
        **(settings or {}),
    )  # fmt: skip
    return running, small, large


async def test_a_conversation_is_summarised_once_and_extended_turn_by_turn(
    standin: StandinFactory, sidecar: SidecarFactory
) -> None:
    running, small, large = await chat_sidecar(standin, sidecar)
    client = running.client()
    messages: list[Any] = [SYSTEM]
    for turn in range(8):
        messages.append({"role": "user", "content": f"question {turn} " + "detail " * 30})
        answer = await client.chat.completions.create(model="chat", messages=messages)
        messages.append({"role": "assistant", "content": answer.choices[0].message.content})
    asked = summary_requests(small.settings.requests)
    sent = large.settings.requests
    assert len(sent) == 8  # every question answered by the large tier
    with_note = [b for b in sent if b["messages"][1]["content"].startswith(HEADER)]
    # The window drops turns from the second question on; each of those carries a summary.
    assert len(with_note) == 7
    assert all(b["messages"][0] == SYSTEM for b in sent)
    made = running.metric("tokenomy_summaries_total", result="made")
    extended = running.metric("tokenomy_summaries_total", result="extended")
    assert made == 1
    assert made + extended + running.metric("tokenomy_summaries_total", result="cached") == 7
    assert len(asked) == made + extended
    # An extension reads the summary so far and the newly dropped turns, never the first.
    for text in asked[1:]:
        assert text.startswith("The summary so far:")
        assert "question 0" not in text.split("The turns that follow it:")[1]
    # The summaries' calls are counted on the cheapest tier, and trimming saves net of them.
    assert running.metric("tokenomy_cost_usd_total", tier="small") > 0
    assert running.metric("tokenomy_savings_usd_total", lever="trim") > 0


async def test_no_store_clients_get_summaries_that_are_never_kept(
    standin: StandinFactory, sidecar: SidecarFactory
) -> None:
    running, small, _ = await chat_sidecar(standin, sidecar)
    client = running.client()
    messages = [SYSTEM, *conversation(4)[1:], {"role": "user", "content": "and now?"}]
    for _ in range(2):
        await client.chat.completions.create(
            model="chat", messages=messages, extra_headers={"Cache-Control": "no-store"}
        )
    assert running.metric("tokenomy_summaries_total", result="made") == 2
    assert running.metric("tokenomy_summaries_total", result="cached") == 0
    await client.chat.completions.create(model="chat", messages=messages)
    await client.chat.completions.create(model="chat", messages=messages)
    assert running.metric("tokenomy_summaries_total", result="cached") == 1
    assert len(summary_requests(small.settings.requests)) == 3


async def test_a_failing_cheapest_tier_only_drops_the_turns(
    standin: StandinFactory, sidecar: SidecarFactory
) -> None:
    running, small, large = await chat_sidecar(standin, sidecar)
    small.settings.faults = deque(["500"] * 10)
    messages = [SYSTEM, *conversation(4)[1:], {"role": "user", "content": "and now?"}]
    answer = await running.client().chat.completions.create(model="chat", messages=messages)
    assert answer.choices[0].message.content
    sent = large.settings.requests[-1]["messages"]
    assert not any(HEADER in (m.get("content") or "") for m in sent)
    assert len(sent) < len(messages)  # the window still applied
    assert running.metric("tokenomy_summaries_total", result="failed") == 1
    assert running.metric("tokenomy_fail_open_total") == 0


async def test_a_refused_request_pays_for_no_summary(
    standin: StandinFactory, sidecar: SidecarFactory
) -> None:
    budget = {"amount": "0.000001", "period": "monthly", "onExceeded": "reject"}
    running, small, large = await chat_sidecar(
        standin, sidecar, {"enforce_local_budget": True}, budget=budget
    )
    messages = [SYSTEM, *conversation(4)[1:], {"role": "user", "content": "and now?"}]
    with pytest.raises(openai.RateLimitError):
        await running.client().chat.completions.create(model="chat", messages=messages)
    assert small.settings.requests == large.settings.requests == []
    assert running.metric("tokenomy_summaries_total", result="made") == 0
