"""Stage 5b: request packing — concurrent requests that differ only in their last question
share one call.

Requests of a route that agree on everything but the last user message
(the same system prompt and few-shot examples, the same parameters) and
arrive within ``maxWait`` of each other are sent as one call of up to
``maxBatchSize`` numbered items with a structured answer format (JSON), and
the answer is split back. An item whose answer cannot be matched goes on
alone, as if it had never waited. Only plain requests are packed: no
stream, tools, response format, log-probabilities or several samples, and
none a cascade would judge (one answer per item could not be scored).

The packed call's tokens are split over its items (the prompt evenly, the
output by answer length, remainders to the first), so their costs add up to
the call's exactly; ``tokenomy_packing_input_tokens_saved_total`` counts
each item's own prompt estimate minus its share.
"""

from __future__ import annotations

import asyncio
import hashlib
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import orjson

from tokenomy_sidecar.metrics import Metrics
from tokenomy_sidecar.pipeline import Answer, Exchange, Quiet
from tokenomy_sidecar.request import message_text, prompt_text
from tokenomy_sidecar.routing.decision import estimate_tokens, walk
from tokenomy_sidecar.stages.metering import Meter, Usage, usd
from tokenomy_sidecar.stages.upstream import Caller, Reply, completion_of

INSTRUCTION = (
    "Answer each of the numbered requests below on its own, as if it were the only one. "
    'Reply with JSON only, in the form {"answers": [{"id": <id>, "answer": "<answer>"}]}, '
    "one entry per request. Requests:\n"
)
UNPACKABLE = frozenset(
    {"stream", "tools", "functions", "tool_choice", "response_format", "logprobs",
     "top_logprobs", "n", "prompt_cache_key"}
)  # fmt: skip


def pack_key(body: Mapping[str, Any], tier: str) -> str | None:
    """What requests must share to be packed together, or None when this one cannot be.

    Everything but the last message, which must be a user's plain text.
    """
    for name in UNPACKABLE:
        value = body.get(name)
        if value is None or value is False or (name == "n" and value == 1 and value is not True):
            continue
        return None
    messages = body.get("messages")
    if not isinstance(messages, list) or not messages:
        return None
    last = messages[-1]
    if not isinstance(last, dict) or last.get("role") != "user":
        return None
    if not isinstance(last.get("content"), str):
        return None
    shared = {k: v for k, v in body.items() if k != "messages"}
    digest = hashlib.sha256(tier.encode() + b"\0")
    digest.update(orjson.dumps([shared, messages[:-1]], option=orjson.OPT_SORT_KEYS))
    return digest.hexdigest()


def packed_body(bodies: Sequence[Mapping[str, Any]]) -> dict[str, Any]:
    """One request asking every body's last question, numbered from 0."""
    first = bodies[0]
    items = [{"id": i, "request": message_text(b["messages"][-1])} for i, b in enumerate(bodies)]
    question = {"role": "user", "content": INSTRUCTION + orjson.dumps(items).decode()}
    out = {**first, "messages": [*first["messages"][:-1], question]}
    asked = [b.get("max_completion_tokens") or b.get("max_tokens") for b in bodies]
    limits = [limit for limit in asked if isinstance(limit, int)]
    if len(limits) == len(bodies):
        field_name = "max_completion_tokens" if "max_completion_tokens" in first else "max_tokens"
        out[field_name] = sum(limits) + 16 * len(bodies)  # the JSON around the answers
    return out


def split_answers(completion: Mapping[str, Any] | None, count: int) -> dict[int, str]:
    """The answers a packed completion gives, by item id (those it gives well-formed)."""
    try:
        text = completion["choices"][0]["message"]["content"]  # type: ignore[index]
        parsed = orjson.loads(text[text.index("{") : text.rindex("}") + 1])
    except (KeyError, IndexError, TypeError, ValueError, orjson.JSONDecodeError):
        return {}
    answers = parsed.get("answers") if isinstance(parsed, dict) else None
    out: dict[int, str] = {}
    for item in answers if isinstance(answers, list) else []:
        if not isinstance(item, dict):
            continue
        number, answer = item.get("id"), item.get("answer")
        if isinstance(number, int) and 0 <= number < count and isinstance(answer, str):
            out.setdefault(number, answer)
    return out


def shares(total: int, weights: Sequence[int]) -> list[int]:
    """``total`` split in proportion to ``weights`` (evenly when they are all 0), summing
    to it exactly; the remainder goes to the first."""
    if not weights:
        return []
    whole = sum(weights)
    if whole == 0:
        parts = [total // len(weights)] * len(weights)
    else:
        parts = [total * w // whole for w in weights]
    parts[0] += total - sum(parts)
    return parts


@dataclass
class Group:
    """Requests waiting to share a call."""

    items: list[tuple[Exchange, asyncio.Future[Answer | None]]] = field(default_factory=list)
    timer: asyncio.TimerHandle | None = None


class Pack(Quiet):
    """Holds packable requests up to ``maxWait``, then sends them as one call."""

    name = "pack"
    optional = True

    def __init__(self, caller: Caller, meter: Meter, metrics: Metrics) -> None:
        self.caller = caller
        self.meter = meter
        self.metrics = metrics
        self.groups: dict[str, Group] = {}

    async def request(self, x: Exchange) -> Answer | None:
        """The item's share of a packed call, or None to go on alone."""
        config = x.runtime.config.packing
        if config is None or x.park is not None or x.embedding:
            return None
        if config.routes and x.route.name not in config.routes:
            return None
        routing = x.routing
        if not routing.straight and len(walk(x.route, routing.tier.name)) > 1:
            return None  # the cascade judges it
        key = pack_key(x.chat.body, routing.tier.name)
        if key is None:
            return None
        group = self.groups.get(key)
        loop = asyncio.get_running_loop()
        if group is None:
            group = self.groups[key] = Group()
            group.timer = loop.call_later(config.max_wait_seconds, self._flush, key)
        future: asyncio.Future[Answer | None] = loop.create_future()
        group.items.append((x, future))
        if len(group.items) >= config.max_batch_size:
            self._flush(key)
        return await future

    def _flush(self, key: str) -> None:
        group = self.groups.pop(key, None)
        if group is None:
            return
        if group.timer is not None:
            group.timer.cancel()
        if len(group.items) == 1:
            group.items[0][1].set_result(None)  # nobody to share with: alone
            return
        task = asyncio.get_running_loop().create_task(self._send(group.items))
        # _send answers every item whatever happens; a cancelled task (shutdown) says nothing.
        task.add_done_callback(lambda t: t.cancelled() or t.exception())

    async def _send(self, items: Sequence[tuple[Exchange, asyncio.Future[Answer | None]]]) -> None:
        lead = items[0][0]
        labels = lead.labels
        try:
            body = packed_body([x.chat.body for x, _ in items])
            reply = await self.caller.send(lead, lead.routing.tier, body)
            completion = completion_of(reply)
            answers = split_answers(completion, len(items))
        except Exception:
            answers, completion, reply = {}, None, None
        if reply is None or completion is None or not answers:
            self.metrics.packing_items.labels(*labels, "resent").inc(len(items))
            for _, future in items:
                future.set_result(None)
            if reply is not None and completion is not None:
                self._charge_unanswered(lead, reply, completion)
            return
        usage = Usage.from_openai(completion.get("usage"))
        answered = [(i, x, f) for i, (x, f) in enumerate(items) if i in answers]
        prompts = shares(usage.prompt, [1] * len(answered))
        cached = shares(usage.cached, [1] * len(answered))
        outputs = shares(usage.completion, [len(answers[i]) for i, _, _ in answered])
        # An item's own prompt, in the provider's tokens: our estimate of it, scaled by how
        # the provider counted the packed prompt against our estimate of that.
        scale = usage.prompt / max(1, estimate_tokens(prompt_text(body)))
        for n, (i, x, future) in enumerate(answered):
            share = Usage(prompt=prompts[n], completion=outputs[n], cached=cached[n])
            own = round(estimate_tokens(prompt_text(x.chat.body)) * scale)
            saved = max(0, own - share.prompt)
            self.metrics.packing_saved_tokens.labels(*labels).inc(saved)
            future.set_result(self._answer(x, reply, answers[i], share, len(items)))
        self.metrics.packing_items.labels(*labels, "packed").inc(len(answered))
        unmatched = [f for i, (_, f) in enumerate(items) if i not in answers]
        self.metrics.packing_items.labels(*labels, "resent").inc(len(unmatched))
        for future in unmatched:
            future.set_result(None)

    def _charge_unanswered(self, x: Exchange, reply: Reply, completion: Mapping[str, Any]) -> None:
        """A packed call that answered nothing usable still cost: on its lead request."""
        self.meter.call(x, reply, Usage.from_openai(completion.get("usage")))

    def _answer(self, x: Exchange, reply: Reply, text: str, usage: Usage, size: int) -> Answer:
        x.answered_by(reply)
        x.routing.reason = f"{x.routing.reason}; packed with {size - 1} others"
        x.headers["x-tokenomy-route-reason"] = x.routing.reason
        self.meter.call(x, reply, usage)
        self.meter.settle(x, reply, usage, x.source)
        x.headers["x-tokenomy-cost-usd"] = usd(x.spend.spent)
        completion = {
            "id": f"chatcmpl-tkpack{time.monotonic_ns()}",
            "object": "chat.completion",
            "created": int(time.time()),
            "model": x.chat.body.get("model"),
            "choices": [{"index": 0, "finish_reason": "stop", "logprobs": None,
                         "message": {"role": "assistant", "content": text, "refusal": None}}],
            "usage": {"prompt_tokens": usage.prompt, "completion_tokens": usage.completion,
                      "total_tokens": usage.prompt + usage.completion,
                      "prompt_tokens_details": {"cached_tokens": usage.cached}},
        }  # fmt: skip
        return Answer(x.source, body=orjson.dumps(completion), completion=completion, reply=reply)
