"""Stage 9: shadow comparison — what a cheaper lever's answer is worth, measured on live traffic.

A sampled share of the answers a cheaper lever gave (a semantic cache hit, or
a tier below the reference chosen by the route's default, routing or the
cascade) is sent again, after the client has its answer, to the route's
reference tier; the two answers are compared and the verdict reported to the
operator, which turns the verdicts into an agreement rate with a confidence
interval per lever (``status.quality``). Nothing of it is on the request's
path: the client's answer is written before the stage runs, and a
comparison that fails is counted and forgotten.

Comparison (pure, :func:`agree`): structured answers — JSON, a final number,
a short label, tool calls — by value; free text by the cosine similarity of
the two answers' embeddings, or by a judge prompt on a cheap tier.

What it costs is its own line (``tokenomy_shadow_cost_usd_total``, the
reports' ``shadow`` field). Each sidecar holds its shadow spend to
``maxSpendShare`` of what its requests cost (checked before each comparison,
so it overshoots by the comparisons in flight at most, :data:`MAX_IN_FLIGHT`),
and with a budget each comparison reserves from it like a request: once the
budget is spent, comparisons stop.
"""

from __future__ import annotations

import asyncio
import logging
import random
import re
from collections.abc import Mapping
from dataclasses import dataclass
from decimal import Decimal
from typing import Any

import numpy as np
import orjson

from tokenomy_api.compiled import CompiledShadow, CompiledTier
from tokenomy_api.usage_protocol import RequestUsage
from tokenomy_sidecar.metrics import Metrics
from tokenomy_sidecar.pipeline import Answer, Exchange
from tokenomy_sidecar.request import message_text
from tokenomy_sidecar.routing.confidence import FINAL, NUMBER, final_answer
from tokenomy_sidecar.stages.budget import estimate
from tokenomy_sidecar.stages.metering import Usage, cost
from tokenomy_sidecar.stages.semantic_cache import question
from tokenomy_sidecar.stages.upstream import Caller, completion_of
from tokenomy_sidecar.vectors import SharedVectors
from tokenomy_sidecar.wallet import Reservation

log = logging.getLogger(__name__)

MAX_IN_FLIGHT = 4
"""Comparisons running at once per sidecar; an eligible answer sampled beyond that is
skipped (``busy``): shadow traffic never queues behind itself."""
LABEL_WORDS = 5
"""An answer of at most this many words is a label, compared as normalised text (or, if it
has a number, by its last number)."""
JUDGE_PROMPT = (
    "Two answers to the same request follow. Do they say the same thing: the same facts, "
    "the same conclusion, the same final value? Wording may differ. Reply with one word, "
    "SAME or DIFFERENT.\n\nRequest:\n{question}\n\nAnswer A:\n{reference}\n\n"
    "Answer B:\n{served}"
)
FENCE = re.compile(r"^```[a-zA-Z0-9_-]*\s*\n?(.*?)\n?```$", re.DOTALL)
PUNCTUATION = re.compile(r"[^\w\s.-]")


# --- pure: what is compared, and how ------------------------------------------------


def lever_of(x: Exchange, answer: Answer | None) -> str | None:
    """The lever whose answer this is, when a shadow comparison can measure it."""
    if answer is None or answer.status != 200 or answer.completion is None or x.embedding:
        return None
    if answer.source == "semantic":
        return "semantic_cache"
    if answer.fresh and x.routing.tier.name != x.route.reference_tier:
        return x.routing.lever  # tier (the default), routing or cascade
    return None


def answer_text(completion: Mapping[str, Any] | None) -> str | None:
    """What a completion answered: its first choice's text, or its tool calls as JSON."""
    choices = completion.get("choices") if completion else None
    if not choices or not isinstance(choices[0], dict):
        return None
    message = choices[0].get("message") or {}
    calls = message.get("tool_calls") if isinstance(message, dict) else None
    if calls:
        shown = []
        for call in calls:
            function = call.get("function") if isinstance(call, dict) else None
            if isinstance(function, dict):
                shown.append({"name": function.get("name"), "arguments": _json(function)})
        return orjson.dumps(shown, option=orjson.OPT_SORT_KEYS).decode()
    text = message_text(message).strip() if isinstance(message, dict) else ""
    return text or None


def _json(function: Mapping[str, Any]) -> Any:
    arguments = function.get("arguments")
    try:
        return orjson.loads(arguments) if isinstance(arguments, str) else arguments
    except orjson.JSONDecodeError:
        return arguments


def structured(text: str) -> str | None:
    """The value of a structured answer (JSON, a final number, a short label), normalised
    for comparison; None for free text."""
    body = text.strip()
    fenced = FENCE.match(body)
    if fenced:
        body = fenced.group(1).strip()
    if body[:1] in ("{", "["):
        try:
            return "json:" + orjson.dumps(orjson.loads(body), option=orjson.OPT_SORT_KEYS).decode()
        except orjson.JSONDecodeError:
            pass
    marked = FINAL.findall(body)
    if marked:
        return "number:" + _number(marked[-1])
    if NUMBER.fullmatch(body.rstrip(".")):
        return "number:" + _number(body.rstrip("."))
    words = PUNCTUATION.sub(" ", body.lower()).split()
    if 0 < len(words) <= LABEL_WORDS:
        numbers = NUMBER.findall(body)
        if numbers:  # a short answer with a number in it ("2 + 3 = 5") is that number
            return "number:" + _number(numbers[-1])
        return "label:" + " ".join(w.strip(".") for w in words)
    return None


def _number(text: str) -> str:
    value = Decimal(text.replace(",", ""))
    return format(value.normalize(), "f") if value else "0"


def same_structure(reference: str, served: str) -> bool:
    """Whether a structured reference answer and the served one have the same value; a
    served answer of another shape agrees when its final number is the reference's."""
    want = structured(reference)
    got = structured(served)
    if want is None:  # free text: its final number, else its words
        return final_answer(reference) == final_answer(served)
    if got == want:
        return True
    if want.startswith("number:"):
        numbers = NUMBER.findall(served)
        return bool(numbers) and "number:" + _number(numbers[-1]) == want
    return False


def method_for(spec: CompiledShadow, reference: str, has_embedder: bool) -> str:
    """``exact``, ``similarity`` or ``judge``: how these answers are compared."""
    if spec.compare != "auto":
        return spec.compare
    if structured(reference) is not None:
        return "exact"
    return "similarity" if has_embedder else "judge"


def judged(text: str) -> bool | None:
    """A judge's reply: SAME is True, DIFFERENT False, anything else None."""
    word = text.strip().strip("*.\"'").lower()
    if word.startswith("same") or word.startswith("yes"):
        return True
    if word.startswith("diff") or word.startswith("no"):
        return False
    return None


def reference_body(body: Mapping[str, Any]) -> dict[str, Any]:
    """The request as the reference tier is asked it: as the served tier was, unstreamed."""
    out = {k: v for k, v in body.items() if k not in ("stream", "stream_options")}
    out.pop("n", None)  # one answer to compare
    return out


@dataclass
class ShadowSpend:
    """One policy's spend in this sidecar: its requests', and its comparisons'."""

    requests: Decimal = Decimal(0)
    shadow: Decimal = Decimal(0)

    def allows(self, share: float) -> bool:
        """Whether another comparison stays within ``share`` of the requests' spend."""
        return self.shadow <= self.requests * Decimal(repr(share))


# --- the stage ----------------------------------------------------------------------


@dataclass
class Comparison:
    """One comparison's running cost and tokens."""

    cost: Decimal = Decimal(0)
    input_tokens: int = 0
    output_tokens: int = 0

    def add(self, usage: Usage, paid: Decimal) -> None:
        self.cost += paid
        self.input_tokens += usage.prompt
        self.output_tokens += usage.completion


class Shadow:
    """Samples eligible answers and compares them with the reference tier's, off the path."""

    name = "shadow"
    optional = True

    def __init__(
        self, caller: Caller, vectors: SharedVectors, metrics: Metrics, rng: random.Random
    ) -> None:
        self.caller = caller
        self.vectors = vectors
        self.metrics = metrics
        self.rng = rng
        self.spend: dict[str, ShadowSpend] = {}
        self.tasks: set[asyncio.Task[None]] = set()

    async def request(self, x: Exchange) -> Answer | None:
        """Draw the sample now, so that only a sampled stream is kept whole; never answers."""
        spec = x.runtime.config.shadow
        x.shadowed = spec is not None and self.rng.random() < spec.sample
        return None

    async def store(self, x: Exchange, answer: Answer) -> None:
        """Nothing to store."""

    async def close(self, x: Exchange) -> None:
        """The client has its answer: sample it for a comparison, in the background."""
        spend = self.spend.setdefault(x.runtime.config.policy.key, ShadowSpend())
        spend.requests += x.spend.spent
        spec = x.runtime.config.shadow
        lever = lever_of(x, x.answer)
        if spec is None or lever is None or not x.shadowed:
            return
        assert x.answer is not None
        served = answer_text(x.answer.completion)
        if served is None:
            return
        if not spend.allows(spec.max_spend_share):
            self.metrics.shadow_skipped.labels(*x.labels, "spend_share").inc()
            return
        if len(self.tasks) >= MAX_IN_FLIGHT:
            self.metrics.shadow_skipped.labels(*x.labels, "busy").inc()
            return
        task = asyncio.create_task(self._compare(x, spec, lever, served, spend))
        self.tasks.add(task)
        task.add_done_callback(self.tasks.discard)

    async def drain(self) -> None:
        """Shutdown: comparisons still running are abandoned (what they spent is reported)."""
        for task in list(self.tasks):
            task.cancel()
        if self.tasks:
            await asyncio.gather(*self.tasks, return_exceptions=True)

    async def _compare(
        self, x: Exchange, spec: CompiledShadow, lever: str, served: str, spend: ShadowSpend
    ) -> None:
        reference_tier = x.route.tier(x.route.reference_tier)
        body = reference_body(x.chat.body)
        keeper = x.spend.keeper
        reservation: Reservation | None = None
        if keeper is not None and x.runtime.config.budget is not None:
            reservation = await keeper.reserve(estimate([reference_tier], body))
            if reservation is None:
                self.metrics.shadow_skipped.labels(*x.labels, "budget").inc()
                return
        run = Comparison()
        verdict: bool | None = None
        try:
            reference = await self._ask(x, reference_tier, body, run)
            if reference is not None:
                verdict = await self._agree(x, spec, reference, served, run)
        except Exception:
            log.exception("shadow comparison on route %s failed", x.route.name)
        finally:
            result = "failed" if verdict is None else "agree" if verdict else "disagree"
            self.metrics.shadow_comparisons.labels(*x.labels, lever, result).inc()
            self.metrics.money(self.metrics.shadow_cost, run.cost, *x.labels)
            spend.shadow += run.cost
            if keeper is not None:
                usage = RequestUsage(
                    cost=run.cost,
                    route=x.route.name,
                    input_tokens=run.input_tokens,
                    output_tokens=run.output_tokens,
                    shadow=lever,
                    verdict="" if verdict is None else result,
                )
                keeper.settle(reservation or Reservation(Decimal(0)), usage)

    async def _ask(
        self, x: Exchange, tier: CompiledTier, body: dict[str, Any], run: Comparison
    ) -> str | None:
        reply = await self.caller.send(x, tier, body)
        completion = completion_of(reply)
        usage = Usage.from_openai(completion.get("usage") if completion else None)
        run.add(usage, cost(usage, reply.candidate.backend.price))
        return answer_text(completion)

    async def _agree(
        self, x: Exchange, spec: CompiledShadow, reference: str, served: str, run: Comparison
    ) -> bool | None:
        method = method_for(spec, reference, x.route.embedding is not None)
        if method == "exact":
            return same_structure(reference, served)
        if method == "similarity":
            vectors, usage = await self.vectors.embedder(x).embed([reference, served])
            price = x.route.embedding.price if x.route.embedding is not None else None
            if price is not None:
                run.add(Usage(), cost(usage, price))
            return float(np.dot(vectors[0], vectors[1])) >= spec.similarity
        tier = x.route.tier(spec.judge_tier or x.route.tiers[0].name)
        prompt = JUDGE_PROMPT.format(
            question=question(x.chat.body) or "", reference=reference, served=served
        )
        body = {"messages": [{"role": "user", "content": prompt}], "max_tokens": 4,
                "temperature": 0}  # fmt: skip
        text = await self._ask(x, tier, body, run)
        return judged(text) if text is not None else None
