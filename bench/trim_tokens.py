"""Input tokens the token-budget history window saves (the trim stage's own function).

Two transcripts: MT-Bench's second turns (the first question, the model's
answer, the follow-up; reconstructed from RouteLLM's judge prompts for
Mixtral's answers) and a long synthetic agent transcript with tool calls
(60 turns: a question, a tool call, its results, an answer). Tokens are
the sidecar's estimate (4 characters a token); "orphans" counts tool results
kept without their call (must be 0).

    python bench/trim_tokens.py [--shared ../shared/data] [--budgets 256,512,1024]
"""

from __future__ import annotations

import argparse
import json
import re
from pathlib import Path
from typing import Any

from tokenomy_api.compiled import CompiledPrompt
from tokenomy_sidecar.stages.trim import input_tokens, trim_prompt

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


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--shared", type=Path, default=Path("../shared/data"))
    parser.add_argument("--budgets", default="256,512,1024")
    args = parser.parse_args()
    budgets = [int(b) for b in args.budgets.split(",")]
    measure("MT-Bench second turns", mt_bench(args.shared / "mt-bench"), budgets)
    measure("synthetic agent transcript", [agent()], budgets)


if __name__ == "__main__":
    main()
