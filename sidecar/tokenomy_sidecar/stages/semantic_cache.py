"""Stage 3b: the semantic cache — serve the answer to a question that means the same.

Only the last user message's text is embedded. Everything else — system
prompt, earlier turns, parameters, the question's images and ``name`` — must
match exactly: it is the entry's context, an exact filter within the
partition's one index. A paraphrase is served the answer to its twin only
when the conversation around it is the same. An embedder that is down is a
miss.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Mapping
from typing import TYPE_CHECKING, Any

from tokenomy_sidecar.metrics import Metrics
from tokenomy_sidecar.pipeline import Answer, Exchange, Quiet
from tokenomy_sidecar.request import message_text
from tokenomy_sidecar.semantic_index import SemanticIndex
from tokenomy_sidecar.stages.exact_cache import exact_key, hit, keep
from tokenomy_sidecar.stages.metering import Meter

if TYPE_CHECKING:
    from tokenomy_sidecar.semantic_share import SemanticShare
    from tokenomy_sidecar.vectors import SharedVectors

log = logging.getLogger(__name__)


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
    """Answers from the nearest stored question above the threshold; stores answers."""

    name = "semantic_cache"
    optional = True

    def __init__(
        self,
        metrics: Metrics,
        meter: Meter,
        index: SemanticIndex,
        vectors: SharedVectors,
        share: Callable[[], SemanticShare | None] = lambda: None,
    ) -> None:
        self.metrics = metrics
        self.meter = meter
        self.index = index
        self.vectors = vectors
        self.share = share
        """The shared record in force (Redis stores only), read per request."""

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
        found = (
            self.index.search(index_partition(x), x.cache.context, vector)
            if vector is not None
            else None
        )
        if found is None or found.similarity < semantic.threshold:
            lookups.labels(*x.labels, "semantic", "miss").inc()
            return None
        lookups.labels(*x.labels, "semantic", "hit").inc()
        x.headers["x-tokenomy-similarity"] = f"{found.similarity:.4f}"
        return hit(x, self.meter, found.value, "semantic")

    async def store(self, x: Exchange, answer: Answer) -> None:
        """Keep a fresh answer under the question's vector."""
        semantic = x.runtime.config.cache.semantic
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
