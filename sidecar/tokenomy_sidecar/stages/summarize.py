"""Stage 5b: a summary from the route's cheapest tier in place of the turns the window dropped.

The history window keeps the newest turns; with ``prompt.summary`` the turns it
dropped are replaced by one system message summarising them ("summary + recent
turns"). Summaries are kept in the cache store, inside the request's cache
partition, keyed by a chain over the dropped turns: turn ``k``'s key hashes the
key of turn ``k - 1`` with turn ``k``. As a conversation grows, each request
drops a little more than the one before, so the summary of a shorter dropped
prefix is found and *extended* with the turns added since (a call reading the
old summary and those turns only), never rewritten from the start.

It runs after the budget stage, so a refused request never pays for a summary,
and after the caches, so an answer served from them never does. A summary that
fails or takes longer than ``prompt.summary.timeout`` is skipped: the turns are
then only dropped, as without the option. What a summary costs is charged to
the request and, in the savings metric, to the ``trim`` lever.
"""

from __future__ import annotations

import asyncio
import hashlib
import logging
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from decimal import Decimal
from typing import Any

import orjson

from tokenomy_api.compiled import CompiledSummary
from tokenomy_sidecar.metrics import Metrics
from tokenomy_sidecar.pipeline import Answer, Exchange, Quiet
from tokenomy_sidecar.request import message_text
from tokenomy_sidecar.stages.identify import may_keep
from tokenomy_sidecar.stages.metering import Meter, Usage
from tokenomy_sidecar.stages.trim import lead_end, message_tokens, turns
from tokenomy_sidecar.stages.upstream import Caller, completion_of
from tokenomy_sidecar.stores import CacheStore

log = logging.getLogger(__name__)

INSTRUCTION = (
    "You condense the earlier part of a conversation between a user and an AI assistant, "
    "so the assistant can go on without it. Keep every fact, number, name, decision, "
    "constraint and open question the user or the tools gave, and what the assistant "
    "committed to; drop pleasantries. Write plain prose or terse bullets, no preamble, "
    "at most {words} words."
)
HEADER = "Summary of the earlier conversation (its turns were left out to save tokens):\n"
SCHEME = "summary/v1"
"""Part of every key: a change to the prompt above must not serve summaries made with the
old one."""
LOOKBACK = 8
"""Dropped-prefix lengths tried in the store, longest first, before starting from scratch:
a conversation's next request usually drops one or two turns more than its last."""
MIN_TOKENS = 16
"""A summary allowed fewer tokens than this (half of a small dropped part) is not asked for."""


def chain(root: str, dropped: Sequence[dict[str, Any]]) -> list[tuple[int, str]]:
    """(messages covered, key) after each whole turn of ``dropped``, oldest first."""
    keys = []
    digest = root
    for turn in turns(list(dropped)):
        h = hashlib.sha256(digest.encode())
        for i in turn:
            h.update(orjson.dumps(dropped[i], option=orjson.OPT_SORT_KEYS))
        digest = h.hexdigest()
        keys.append((turn[-1] + 1, digest))
    return keys


def root_key(
    partition: str, route: str, tier: str, summary: CompiledSummary, lead: Sequence[Any]
) -> str:
    """What every key of one conversation's chain starts from: where the summary may be
    served (partition), who writes it and how, and the app's leading system messages."""
    seed = orjson.dumps(
        [SCHEME, partition, route, tier, summary.max_tokens, list(lead)],
        option=orjson.OPT_SORT_KEYS,
    )
    return hashlib.sha256(seed).hexdigest()


def transcript(messages: Sequence[dict[str, Any]]) -> str:
    """The dropped turns as text: who said what, which tools were called and what they
    returned."""
    lines = []
    for message in messages:
        role = str(message.get("role") or "user")
        text = message_text(message)
        for call in message.get("tool_calls") or []:
            function = call.get("function") if isinstance(call, dict) else None
            if isinstance(function, dict):
                lines.append(
                    f"assistant called {function.get('name')}({function.get('arguments', '')})"
                )
        if text:
            lines.append(f"{'tool result' if role == 'tool' else role}: {text}")
    return "\n".join(lines)


def summary_body(
    previous: str | None, added: Sequence[dict[str, Any]], tokens: int
) -> dict[str, Any]:
    """The request to the cheapest tier: summarise ``added``, extending ``previous``."""
    words = max(10, tokens * 3 // 4)
    text = transcript(added)
    if previous is not None:
        text = f"The summary so far:\n{previous}\n\nThe turns that follow it:\n{text}"
    return {
        "messages": [
            {"role": "system", "content": INSTRUCTION.format(words=words)},
            {"role": "user", "content": text},
        ],
        "max_tokens": tokens,
        "temperature": 0,
    }


def with_summary(messages: list[dict[str, Any]], summary: str) -> list[dict[str, Any]]:
    """The kept messages with the summary after the app's leading system messages."""
    lead = lead_end(messages)
    note = {"role": "system", "content": HEADER + summary}
    return [*messages[:lead], note, *messages[lead:]]


def allowed_tokens(summary: CompiledSummary, dropped: Sequence[dict[str, Any]]) -> int:
    """The longest summary worth having: the policy's cap, and never more than half of
    what it replaces."""
    return min(summary.max_tokens, sum(message_tokens(m) for m in dropped) // 2)


Ask = Callable[[dict[str, Any]], Awaitable[str | None]]
"""Sends a summary request; the summary's text, or None when no usable answer came."""


@dataclass(frozen=True)
class Made:
    """A summary, and how it came about."""

    text: str | None
    """The summary; None when there is none to use."""
    result: str
    """``cached``, ``made``, ``extended``, ``failed`` or ``skipped``: the metric label."""


async def summarize(
    store: CacheStore,
    partition: str,
    root: str,
    dropped: Sequence[dict[str, Any]],
    tokens: int,
    ttl: float,
    ask: Ask,
    keep: bool,
) -> Made:
    """The summary of ``dropped``: from the store, by extending a shorter one found there,
    or new. ``keep`` is False where the client asked for nothing to be stored."""
    keys = chain(root, dropped)
    if not keys or tokens < MIN_TOKENS:
        return Made(None, "skipped")
    covered, previous = 0, None
    for count, key in reversed(keys[-LOOKBACK:]):
        found = await store.get(partition, key) if keep else None
        if found is not None:
            covered, previous = count, found.decode()
            break
    whole = keys[-1][0]
    if covered == whole and previous is not None:
        return Made(previous, "cached")
    text = await ask(summary_body(previous, dropped[covered:whole], tokens))
    if not text:
        return Made(None, "failed")
    if keep:
        await store.put(partition, keys[-1][1], text.encode(), ttl)
    return Made(text, "extended" if previous is not None else "made")


class Summarize(Quiet):
    """Puts a summary of the dropped turns into the request, when the policy asks."""

    name = "summarize"
    optional = True

    def __init__(self, caller: Caller, meter: Meter, metrics: Metrics) -> None:
        self.caller = caller
        self.meter = meter
        self.metrics = metrics

    async def request(self, x: Exchange) -> Answer | None:
        """Summarise, within the policy's timeout; never answers."""
        summary = x.runtime.config.prompt.summary
        if summary is None or not x.dropped:
            return None
        dropped, x.dropped = x.dropped, []
        tier = x.route.tiers[0]  # the cheapest
        decision = x.cache.decision
        # Summaries are the conversation's content: they stay inside its partition, and
        # are not kept for a client that said no-store (or sent a never-cache header).
        keep = bool(decision.partition) and may_keep(x.runtime.config, x.client_headers)
        messages = x.chat.body["messages"]
        lead = lead_end(messages)
        root = root_key(decision.partition, x.route.name, tier.name, summary, messages[:lead])
        spent = Decimal(0)

        async def ask(body: dict[str, Any]) -> str | None:
            nonlocal spent
            reply = await self.caller.send(x, tier, body)
            completion = completion_of(reply)
            usage = Usage.from_openai(completion.get("usage") if completion else None)
            spent += self.meter.call(x, reply, usage, tier=tier.name)
            choices = completion.get("choices") if completion else None
            if not choices or not isinstance(choices[0], dict):
                return None
            text = message_text(choices[0].get("message") or {}).strip()
            return text or None

        try:
            async with asyncio.timeout(summary.timeout_seconds):
                made = await summarize(
                    x.runtime.store, decision.partition, root, dropped,
                    allowed_tokens(summary, dropped), summary.ttl_seconds, ask, keep,
                )  # fmt: skip
        except Exception as error:  # the turns are then only dropped
            log.warning("summary of %d dropped messages failed: %r", len(dropped), error)
            made = Made(None, "failed")
        x.spend.summary_cost += spent
        self.metrics.summaries.labels(*x.labels, made.result).inc()
        if made.text is None:
            return None
        body = x.chat.body
        body["messages"] = with_summary(messages, made.text)
        x.spend.trimmed_tokens -= message_tokens(body["messages"][lead])
        return None
