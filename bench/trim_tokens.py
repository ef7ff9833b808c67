"""Input tokens the token-budget history window saves (the trim stage's own function).

Two transcripts: MT-Bench's second turns (the first question, the model's
answer, the follow-up; reconstructed from RouteLLM's judge prompts for
Mixtral's answers) and a long synthetic agent transcript with tool calls
(60 turns: a question, a tool call, its results, an answer). Tokens are
the sidecar's estimate (4 characters a token); "orphans" counts tool results
kept without their call (must be 0).

Then the same windows with ``prompt.summary`` (the summary stage's own
``summarize``, an in-process store): the agent's transcript replayed request
by request as an agent sends it (turn k's request holds turns 1..k), each
summary as long as the stage allows (``maxTokens``, at most half of what it
replaces), and what the summaries' own calls read and write at the cheapest
tier. Dollars at an example pair: the answering tier at $2.50 per million
input tokens, the cheapest at $0.15 in / $0.60 out.

    python bench/trim_tokens.py [--shared ../shared/data] [--budgets 256,512,1024]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import re
from decimal import Decimal
from pathlib import Path
from typing import Any

from tokenomy_api.clock import SystemClock
from tokenomy_api.compiled import CompiledPrompt, CompiledSummary
from tokenomy_sidecar.memory_budget import MemoryBudget
from tokenomy_sidecar.stages.summarize import (
    allowed_tokens,
    root_key,
    summarize,
    with_summary,
)
from tokenomy_sidecar.stages.trim import input_tokens, trim_prompt
from tokenomy_sidecar.stores import MemoryStore

ANSWERING_INPUT = Decimal("2.50")
CHEAPEST = (Decimal("0.15"), Decimal("0.60"))
MILLION = Decimal(1_000_000)

WEAK = "mistralai/Mixtral-8x7B-Instruct-v0.1"
SECTION = re.compile(r"### (User|Assistant A):\n(.*?)(?=\n\n### |\n\n<\|The End)", re.S)


def mt_bench(folder: Path) -> list[list[dict[str, Any]]]:
    """Second-turn conversations: user, assistant, user."""
    out = []
    for line in (folder / "judgements.jsonl").read_text().splitlines():
        item = json.loads(line)
        if item["model"] != WEAK or item["turn"] != 2:
            continue
        parts = SECTION.findall(item["user_prompt"])
        roles = {"User": "user", "Assistant A": "assistant"}
        messages = [{"role": roles[r], "content": t.strip()} for r, t in parts]
        if len(messages) >= 3 and messages[-1]["role"] == "assistant":
            messages = messages[:-1]  # the answer being judged is not part of the prompt
        if messages and messages[-1]["role"] == "user":
            out.append(messages)
    return out


def agent(turns: int = 60) -> list[dict[str, Any]]:
    """A support agent's transcript: every turn calls a tool and gets two results."""
    messages: list[dict[str, Any]] = [{"role": "system", "content": "You are an order agent."}]
    for i in range(turns):
        call = {"id": f"c{i}", "type": "function",
                "function": {"name": "lookup", "arguments": json.dumps({"order": i})}}  # fmt: skip
        messages += [
            {"role": "user", "content": f"What is the status of order {i}? " * 3},
            {"role": "assistant", "content": None, "tool_calls": [call]},
            {"role": "tool", "tool_call_id": f"c{i}", "content": json.dumps(
                {"order": i, "status": "shipped", "events": ["packed", "left depot"] * 10})},
            {"role": "tool", "tool_call_id": f"c{i}", "content": "carrier: DHL"},
            {"role": "assistant", "content": f"Order {i} has shipped with DHL."},
        ]  # fmt: skip
    messages.append({"role": "user", "content": "Summarise the orders that shipped."})
    return messages


def measure(name: str, conversations: list[list[dict[str, Any]]], budgets: list[int]) -> None:
    before = sum(input_tokens({"messages": c}) for c in conversations)
    print(f"\n{name}: {len(conversations)} conversations, {before:,} input tokens untrimmed\n")
    print("| historyTokens | input tokens | saved | tool results without their call |")
    print("|---|---|---|---|")
    for budget in budgets:
        after, orphans = 0, 0
        for conversation in conversations:
            body = {"messages": [dict(m) for m in conversation]}
            trim_prompt(body, CompiledPrompt(history_tokens=budget))
            after += input_tokens(body)
            calls = {
                c["id"] for m in body["messages"] for c in m.get("tool_calls") or []
            }  # fmt: skip
            orphans += sum(
                m["role"] == "tool" and m["tool_call_id"] not in calls for m in body["messages"]
            )
        print(f"| {budget:,} | {after:,} | {1 - after / before:.1%} | {orphans} |")


def requests_of(conversation: list[dict[str, Any]]) -> list[list[dict[str, Any]]]:
    """The requests an agent sends along a conversation: up to each user message."""
    return [conversation[: i + 1] for i, m in enumerate(conversation) if m["role"] == "user"]


async def with_summaries(
    requests: list[list[dict[str, Any]]], budget: int, max_tokens: int
) -> tuple[int, int, int, int]:
    """Input tokens sent to the answering tier with summaries, and the summary calls'
    (input, output, calls)."""
    store = MemoryStore(100_000, SystemClock(), MemoryBudget(1 << 30))
    summary = CompiledSummary(max_tokens=max_tokens, ttl_seconds=3600, timeout_seconds=10)
    sent = read = written = calls = 0
    for messages in requests:
        body = {"messages": [dict(m) for m in messages]}
        dropped = trim_prompt(body, CompiledPrompt(history_tokens=budget))
        allowed = allowed_tokens(summary, dropped)

        async def ask(request: dict[str, Any], allowed: int = allowed) -> str:
            nonlocal read, written, calls
            read += input_tokens(request)
            written += allowed
            calls += 1
            return "abc " * allowed  # as long as allowed: 4 characters a token

        if dropped:
            lead = [m for m in body["messages"] if m["role"] == "system"]
            root = root_key("p", "chat", "small", summary, lead)
            made = await summarize(store, "p", root, dropped, allowed, 3600, ask, keep=True)
            if made.text is not None:
                body["messages"] = with_summary(body["messages"], made.text)
        sent += input_tokens(body)
    return sent, read, written, calls


def dollars(tokens: int, price: Decimal) -> Decimal:
    return tokens * price / MILLION


def measure_summaries(
    name: str, requests: list[list[dict[str, Any]]], budgets: list[int], max_tokens: int
) -> None:
    before = sum(input_tokens({"messages": r}) for r in requests)
    print(f"\n{name} with summaries (maxTokens {max_tokens}): {len(requests)} requests, "
          f"{before:,} input tokens untrimmed\n")  # fmt: skip
    print(
        "| historyTokens | dropped only | with summaries | summary calls: made, tokens read "
        "+ written | dropped in all (what summaries from scratch would read) "
        "| net saved at the example prices |"
    )
    print("|---|---|---|---|---|---|")
    for budget in budgets:
        dropped_only = 0
        for messages in requests:
            body = {"messages": [dict(m) for m in messages]}
            trim_prompt(body, CompiledPrompt(history_tokens=budget))
            dropped_only += input_tokens(body)
        sent, read, written, calls = asyncio.run(with_summaries(requests, budget, max_tokens))
        untrimmed = dollars(before, ANSWERING_INPUT)
        paid = dollars(sent, ANSWERING_INPUT) + dollars(read, CHEAPEST[0])
        paid += dollars(written, CHEAPEST[1])
        print(f"| {budget:,} | {1 - dropped_only / before:.1%} saved | {1 - sent / before:.1%} "
              f"| {calls}, {read:,} + {written:,} | {before - dropped_only:,} "
              f"| {1 - paid / untrimmed:.1%} |")  # fmt: skip


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--shared", type=Path, default=Path("../shared/data"))
    parser.add_argument("--budgets", default="256,512,1024")
    args = parser.parse_args()
    budgets = [int(b) for b in args.budgets.split(",")]
    measure("MT-Bench second turns", mt_bench(args.shared / "mt-bench"), budgets)
    measure("synthetic agent transcript", [agent()], budgets)
    for max_tokens in (128, 256):
        measure_summaries(
            "MT-Bench second turns", mt_bench(args.shared / "mt-bench"), budgets, max_tokens
        )
        measure_summaries(
            "synthetic agent transcript, request by request",
            requests_of(agent()),
            budgets,
            max_tokens,
        )


if __name__ == "__main__":
    main()
