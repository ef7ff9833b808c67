"""Stage 2: trim the prompt and cap the output, as the policy says."""

from __future__ import annotations

from typing import Any

import orjson

from tokenomy_api.compiled import CompiledOutput, CompiledPrompt
from tokenomy_sidecar.errors import ApiError
from tokenomy_sidecar.pipeline import Answer, Exchange, Quiet
from tokenomy_sidecar.request import message_text, prompt_text
from tokenomy_sidecar.routing.decision import estimate_tokens


def cap_output(body: dict[str, Any], output: CompiledOutput) -> bool:
    """Clamp ``max_tokens`` / ``max_completion_tokens`` to the policy's cap; True if changed.

    A request that asks for nothing gets the cap, since an uncapped answer is
    the one the cap exists for.
    """
    cap = output.max_tokens
    changed = False
    field = "max_completion_tokens" if "max_completion_tokens" in body else "max_tokens"
    asked = body.get(field)
    if cap is not None and (not isinstance(asked, int) or asked > cap):
        body[field] = cap
        changed = True
    if output.brevity:
        messages = body["messages"]
        lead = lead_end(messages)
        brevity = {"role": "system", "content": output.brevity}
        body["messages"] = [*messages[:lead], brevity, *messages[lead:]]
        changed = True
    return changed


def lead_end(messages: list[dict[str, Any]]) -> int:
    """Where the app's leading system (and developer) messages end: what the sidecar adds
    goes there, never before them, so the prefix a provider's prompt cache keys on stays
    the app's."""
    return next(
        (i for i, m in enumerate(messages) if m.get("role") not in ("system", "developer")),
        len(messages),
    )


def trim_prompt(body: dict[str, Any], prompt: CompiledPrompt) -> list[dict[str, Any]]:
    """Apply deduplication, the history window and the token budget; returns the messages
    the window and the budget dropped (oldest first), which a summary may stand in for.

    System messages are always kept; the window counts the others, newest last,
    so the question being asked is never dropped.
    """
    messages: list[dict[str, Any]] = body["messages"]
    kept = messages
    if prompt.deduplicate:
        seen: set[bytes] = set()
        unique = []
        for message in kept:
            fingerprint = orjson.dumps(message, option=orjson.OPT_SORT_KEYS)
            if fingerprint not in seen or message.get("role") == "tool":
                seen.add(fingerprint)
                unique.append(message)
        kept = unique
    deduplicated = kept
    if prompt.history_window is not None:
        others = [i for i, m in enumerate(kept) if m.get("role") != "system"]
        drop = set(others[: max(0, len(others) - prompt.history_window)])
        # A tool result whose assistant call fell out of the window would be
        # refused by providers: drop it too.
        for i in others[len(drop) :]:
            if kept[i].get("role") != "tool":
                break
            drop.add(i)
        kept = [m for i, m in enumerate(kept) if i not in drop]
    if prompt.history_tokens is not None:
        kept = within_tokens(kept, prompt.history_tokens)
    if len(kept) == len(messages):
        return []
    body["messages"] = kept
    # Identity, not equality: a repeated message may be kept once and dropped once.
    still = {id(m) for m in kept}
    return [m for m in deduplicated if id(m) not in still]


def turns(messages: list[dict[str, Any]]) -> list[list[int]]:
    """The non-system messages' indices as turns: an assistant message that calls tools
    and the tool results after it are one turn, so they are kept or dropped together."""
    out: list[list[int]] = []
    calling = False
    for i, message in enumerate(messages):
        role = message.get("role")
        if role == "system":
            continue
        if role == "tool" and out and calling:
            out[-1].append(i)
            continue
        out.append([i])
        calling = role == "assistant" and bool(message.get("tool_calls"))
    return out


def message_tokens(message: dict[str, Any]) -> int:
    """Estimated tokens of one message: its text and any tool calls it makes."""
    calls = message.get("tool_calls")
    made = estimate_tokens(orjson.dumps(calls).decode()) if calls else 0
    return estimate_tokens(message_text(message)) + made


def within_tokens(messages: list[dict[str, Any]], budget: int) -> list[dict[str, Any]]:
    """System messages, and the newest turns whose tokens fit in ``budget`` (the last
    turn, the question, whatever it costs)."""
    kept: set[int] = set()
    spent = 0
    for turn in reversed(turns(messages)):
        cost = sum(message_tokens(messages[i]) for i in turn)
        if kept and spent + cost > budget:
            break
        kept.update(turn)
        spent += cost
    return [m for i, m in enumerate(messages) if i in kept or m.get("role") == "system"]


def input_tokens(body: dict[str, Any]) -> int:
    """Estimated input tokens: the messages' text and any tool definitions offered."""
    tools = body.get("tools")
    offered = estimate_tokens(orjson.dumps(tools).decode()) if tools else 0
    return estimate_tokens(prompt_text(body)) + offered


def fit_within(body: dict[str, Any], limit: int) -> None:
    """Drop the oldest turns until the request's estimated input fits in ``limit`` (what
    system messages and tool definitions take stays; the question is always kept)."""
    messages: list[dict[str, Any]] = body["messages"]
    fixed = input_tokens({**body, "messages": [m for m in messages if m.get("role") == "system"]})
    body["messages"] = within_tokens(messages, max(0, limit - fixed))
    # Per-message estimates round apart from the whole's: drop more while still over.
    while input_tokens(body) > limit and len(turns(body["messages"])) > 1:
        oldest = turns(body["messages"])[0]
        body["messages"] = [m for i, m in enumerate(body["messages"]) if i not in oldest]


class Trim(Quiet):
    """Trims the request's prompt and caps its output, in place; refuses one that is still
    over the policy's input limit."""

    name = "trim"
    optional = True

    async def request(self, x: Exchange) -> Answer | None:
        """Trim, then check the limit; never answers."""
        config = x.runtime.config
        body = x.chat.body
        before = input_tokens(body)
        x.dropped = trim_prompt(body, config.prompt)
        removed = before - input_tokens(body)
        cap_output(body, config.output)
        limit = config.prompt.max_input_tokens
        if limit is not None and config.prompt.trim_to_fit and input_tokens(body) > limit:
            fitted = input_tokens(body)
            fit_within(body, limit)
            removed += fitted - input_tokens(body)
        x.spend.trimmed_tokens = removed
        tokens = input_tokens(body)
        if limit is None or tokens <= limit:
            return None
        trimmed = " even with its oldest turns dropped" if config.prompt.trim_to_fit else ""
        raise ApiError(
            400,
            f"the request is about {tokens} input tokens{trimmed}, over this policy's "
            f"limit of {limit} (spec.prompt.maxInputTokens)",
            param="messages",
            code="context_length_exceeded",
        )
