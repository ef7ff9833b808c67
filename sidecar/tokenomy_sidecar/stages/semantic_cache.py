"""Stage 3b: the semantic cache — serve the answer to a question that means the same.

Only the last user message's text is embedded. Everything else — system
prompt, earlier turns, parameters, the question's images and ``name`` — must
match exactly: it is the entry's context, an exact filter within the
partition's one index. A paraphrase is served the answer to its twin only
when the conversation around it is the same. An embedder that is down is a
miss.

Which near match is served: at or above the policy's ``threshold``, or, with
a ``wrongHitBudget``, what the outcomes seen so far allow
(:mod:`tokenomy_sidecar.semantic_budget`). A near match not served goes to
the model like a miss; after the answer is written, comparing it with the
stored one makes the lookup an outcome. Hits served by the budget get a
response id of their own, which ``POST /v1/tokenomy/feedback`` takes to
report a wrong answer.
"""

from __future__ import annotations

import logging
import random
import re
import uuid
from collections import OrderedDict
from collections.abc import Callable, Mapping
from dataclasses import replace
from typing import TYPE_CHECKING, Any

import numpy as np
import orjson

from tokenomy_api.compiled import CompiledSemanticCache
from tokenomy_sidecar.metrics import Metrics
from tokenomy_sidecar.pipeline import Answer, Exchange, Quiet
from tokenomy_sidecar.request import message_text
from tokenomy_sidecar.semantic_budget import (
    NEIGHBOURS,
    Candidate,
    Cuts,
    Outcome,
    WrongHitBudget,
    agreement,
    answer_key,
    answer_of,
    answer_text,
    decide,
)
from tokenomy_sidecar.semantic_index import Found, SemanticIndex
from tokenomy_sidecar.sse import cacheable
from tokenomy_sidecar.stages.exact_cache import exact_key, hit, keep
from tokenomy_sidecar.stages.metering import Meter

if TYPE_CHECKING:
    from tokenomy_sidecar.semantic_share import SemanticShare
    from tokenomy_sidecar.vectors import SharedVectors

log = logging.getLogger(__name__)

REMEMBERED = 10_000
"""Served hits whose response id a user can still report as a wrong answer."""
AGREE = 0.9
"""Two answer texts that differ agree when their embeddings are this similar. Strict on
purpose (MiniLM): "The capital of France is Paris." and its reordering score 0.99, but
rewordings of one answer often score 0.74 to 0.84 and count as different, which makes the
budget serve less, never more wrongly; "The answer is 42." and "… 41." score 0.86."""
_NUMBER = re.compile(r"\d+(?:[.,]\d+)*")


def numbers(text: str) -> list[str]:
    """The numbers a text states, in order."""
    return _NUMBER.findall(text)


AGREE_CHARS = 2_000
"""Answer text compared (its start): the embedder reads 256 tokens at most anyway."""


def question(body: Mapping[str, Any]) -> str | None:
    """The text to embed: the last message if a user wrote it, else None (no semantic match)."""
    messages = body.get("messages") or []
    last = messages[-1] if messages else None
    if not isinstance(last, dict) or last.get("role") != "user":
        return None
    text = message_text(last).strip()
    return text or None


def question_context(body: Mapping[str, Any]) -> str:
    """A hash of everything in the request but the question's text.

    Only the text is compared by meaning; the rest of the last message — its
    images, audio and files, its ``name`` — must match exactly like the rest
    of the conversation, or the answer about one picture (or one user) would
    be served for another.
    """
    messages = list(body.get("messages") or [])
    last = messages[-1] if messages and isinstance(messages[-1], dict) else {}
    rest = {k: v for k, v in last.items() if k != "content"}
    content = last.get("content")
    if isinstance(content, list):
        rest["content"] = [
            p for p in content if not (isinstance(p, dict) and p.get("type") == "text")
        ]
    context = {**body, "messages": [*messages[:-1], rest]}
    return exact_key("", context)[:32]


def index_partition(x: Exchange) -> str:
    """The cache partition and the embedder: vectors of two models are never compared."""
    spec = x.route.embedding
    embedder = f"{spec.provider}:{spec.model}" if spec is not None else ""
    return f"{x.cache.decision.partition}|{embedder}"


class SemanticCache(Quiet):
    """Answers from the nearest stored question the rules allow; stores answers."""

    name = "semantic_cache"
    optional = True

    def __init__(
        self,
        metrics: Metrics,
        meter: Meter,
        index: SemanticIndex,
        vectors: SharedVectors,
        share: Callable[[], SemanticShare | None] = lambda: None,
        outcomes: WrongHitBudget | None = None,
        draw: Callable[[], float] = random.random,
    ) -> None:
        self.metrics = metrics
        self.meter = meter
        self.index = index
        self.vectors = vectors
        self.share = share
        """The shared record in force (Redis stores only), read per request."""
        self.draw = draw
        """Uniform in [0, 1): which servable near matches are explored."""
        self.outcomes = outcomes or WrongHitBudget()
        """Outcomes per route; with a Redis store, every replica's."""
        self._served: OrderedDict[str, tuple[tuple[str, str, str], float, float]] = OrderedDict()
        """The newest budget-served hits by response id: what a user's report refers to."""

    async def request(self, x: Exchange) -> Answer | None:
        """Search the request's context for a question this close; a hit answers it."""
        semantic = x.runtime.config.cache.semantic
        if not semantic.enabled:
            return None
        lookups = self.metrics.cache_lookups
        if not x.cache.decision.lookup:
            lookups.labels(*x.labels, "semantic", "bypass").inc()
            return None
        x.cache.context = question_context(x.chat.body)
        try:
            vector = await self.vectors.question(x)
        except Exception:
            log.warning("embedding for the semantic cache failed", exc_info=True)
            lookups.labels(*x.labels, "semantic", "error").inc()
            return None
        k = NEIGHBOURS if semantic.budget is not None else 1
        near = (
            self.index.neighbours(index_partition(x), x.cache.context, vector, k)
            if vector is not None
            else []
        )
        result, judged = self._judge(x, semantic, near)
        lookups.labels(*x.labels, "semantic", result).inc()
        if result != "hit":
            x.cache.candidate = judged  # the fresh answer will tell if it was right
            return None
        x.headers["x-tokenomy-similarity"] = f"{near[0].similarity:.4f}"
        answer = hit(x, self.meter, near[0].value, "semantic")
        if judged is not None and answer.completion is not None:
            # A response id of its own, so that a report of a wrong answer names this hit.
            answer.completion["id"] = f"chatcmpl-tk{uuid.uuid4().hex[:24]}"
            answer.body = b""
            self._remember(answer.completion["id"], x.labels, judged)
        return answer

    def _judge(
        self, x: Exchange, semantic: CompiledSemanticCache, near: list[Found]
    ) -> tuple[str, Candidate | None]:
        """``hit``, ``miss`` or ``explore``, and the near match the budget judged (if any)."""
        budget = semantic.budget
        if budget is None:
            # Raised by shadow comparison when hits were measured below the quality floor.
            threshold = min(1.0, semantic.threshold + x.runtime.config.tuning.semantic)
            served = near and near[0].similarity >= threshold
            return ("hit" if served else "miss"), None
        if not near or near[0].similarity < budget.min_similarity:
            return "miss", None
        similarity = near[0].similarity
        agreeing = agreement([(f.similarity, f.value) for f in near])
        cut = self.outcomes.cuts(x.labels, budget.max_wrong_share)
        self._report(x.labels, cut)
        verdict = decide(cut, similarity, agreeing, budget.explore, self.draw())
        explored = verdict == "explore"
        weight = 1.0 / budget.explore if explored else 1.0
        judged = Candidate(similarity, agreeing, weight, near[0].value, explored)
        return ("hit" if verdict == "serve" else verdict), judged

    def _report(self, labels: tuple[str, str, str], cut: Cuts) -> None:
        self.metrics.semantic_bound.labels(*labels).set(cut.bound)
        self.metrics.semantic_cut.labels(*labels, "similarity").set(cut.similarity)
        self.metrics.semantic_cut.labels(*labels, "agreement").set(cut.agreement)

    def _remember(self, response_id: str, labels: tuple[str, str, str], served: Candidate) -> None:
        self._served[response_id] = (labels, served.similarity, served.agreement)
        while len(self._served) > REMEMBERED:
            self._served.popitem(last=False)

    async def feedback(self, response_id: str, correct: bool) -> bool:
        """A user's report on a served near match; False when the id is not remembered.

        Only wrong answers are learnt from: users report what went wrong far
        more than what went right, so counting their "right" would make the
        served share look better than it is.
        """
        served = self._served.get(response_id)
        if served is None:
            return False
        labels, similarity, agreeing = served
        result = "correct" if correct else "wrong"
        self.metrics.semantic_outcomes.labels(*labels, "feedback", result).inc()
        if not correct:
            await self._learn(labels, Outcome(similarity, agreeing, False))
        return True

    async def _learn(self, labels: tuple[str, str, str], outcome: Outcome) -> None:
        """Record an outcome here and for the other replicas (a Redis down: here only)."""
        self.outcomes.record(labels, outcome)
        share = self.share()
        if share is not None:
            try:
                await share.publish_outcome(labels, outcome)
            except Exception:
                log.warning("sharing a semantic outcome failed", exc_info=True)

    async def store(self, x: Exchange, answer: Answer) -> None:
        """Learn from a candidate the model answered; keep a fresh answer under its vector."""
        semantic = x.runtime.config.cache.semantic
        candidate = x.cache.candidate
        fresh = answer.completion
        # An error or a refusal says nothing about the stored answer.
        if candidate is not None and candidate.entry and fresh is not None and cacheable(fresh):
            correct = await self._agree(x, fresh, candidate.entry)
            await self._learn(x.labels, candidate.outcome(correct))
            source = "explore" if candidate.explored else "miss"
            result = "correct" if correct else "wrong"
            self.metrics.semantic_outcomes.labels(*x.labels, source, result).inc()
            if candidate.explored and x.spend.usage is not None:
                # A sample of what is served: the operator bounds the fleet's wrong share.
                x.spend.usage = replace(x.spend.usage, semantic_check=result)
        partition = x.cache.decision.partition
        if not (semantic.enabled and x.cache.decision.store and partition):
            return
        if question(x.chat.body) is None:
            return  # nothing to find it by

        async def put(entry: bytes) -> None:
            x.cache.context = x.cache.context or question_context(x.chat.body)
            vector = await self.vectors.question(x)
            assert vector is not None  # there is a question
            shared = index_partition(x)
            self.index.add(shared, x.cache.context, vector, entry, semantic.ttl_seconds)
            share = self.share()
            if share is not None:  # a Redis that fails here counts as a store error
                await share.publish(shared, x.cache.context, vector, entry, semantic.ttl_seconds)

        await keep(self.metrics, x, answer, "semantic", put)

    async def _agree(self, x: Exchange, fresh: dict[str, Any], entry: bytes) -> bool:
        """Whether the stored answer says what the model just said.

        Equal after normalising, or texts that state the same numbers and
        whose embeddings (the route's embedder) are at least :data:`AGREE`
        similar.
        """
        if answer_key(fresh) == answer_of(entry):
            return True
        stored = orjson.loads(entry.split(b"\n", 2)[-1])
        texts = [answer_text(fresh)[:AGREE_CHARS], answer_text(stored)[:AGREE_CHARS]]
        if not all(texts):
            return False  # different tool calls, or text against none
        if numbers(texts[0]) != numbers(texts[1]):
            return False  # "the fee is 3 EUR" and "… 5 EUR" embed alike, and differ
        vectors, usage = await self.vectors.embedder(x).embed(texts)
        self.meter.embedding(x, usage)
        a, b = vectors[0], vectors[1]
        return float(a @ b) >= AGREE * float(np.linalg.norm(a) * np.linalg.norm(b))
