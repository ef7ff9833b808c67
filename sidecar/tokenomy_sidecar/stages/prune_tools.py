"""Stage: send only the tool definitions relevant to the conversation.

The choice is :mod:`tokenomy_sidecar.tool_pruning`'s (pure); this stage
gathers the question's vector and the definitions' vectors (shared vectors,
embedded once per definition, in the background). Until every offered
definition has a vector the request keeps them all: a cold start costs
tokens, never a tool the answer needed.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from tokenomy_sidecar.metrics import Metrics
from tokenomy_sidecar.pipeline import Answer, Exchange, Quiet
from tokenomy_sidecar.tool_pruning import (
    conversation_query,
    definition_text,
    keep_count,
    prune,
    relevance,
    required,
)
from tokenomy_sidecar.vectors import SharedVectors


class PruneTools(Quiet):
    """Replaces the request's ``tools`` with the relevant ones; never answers."""

    name = "prune-tools"
    optional = True

    def __init__(self, metrics: Metrics, vectors: SharedVectors) -> None:
        self.metrics = metrics
        self.vectors = vectors

    async def request(self, x: Exchange) -> Answer | None:
        """Prune when the policy says so and the request offers more than it keeps."""
        pruning = x.runtime.config.tool_pruning
        body = x.chat.body
        tools: Any = body.get("tools")
        if pruning is None or not isinstance(tools, list) or x.route.embedding is None:
            return None
        if keep_count(len(tools), pruning) >= len(tools):
            return None
        texts = [definition_text(t) for t in tools]
        definitions = self.vectors.definitions(x, texts)
        question = await self.vectors.question(x)
        if definitions is None or question is None:
            self.metrics.tool_pruning.labels(*x.labels, "cold").inc()
            return None
        similarity = (definitions @ question).astype(np.float64)
        query = conversation_query(body["messages"])
        chosen = prune(tools, relevance(texts, query, similarity), required(body), pruning)
        body["tools"] = [tools[i] for i in chosen.kept]
        x.spend.pruned_tokens = chosen.removed_tokens
        m = self.metrics
        m.tool_pruning.labels(*x.labels, "pruned").inc()
        m.tool_definitions.labels(*x.labels, "offered").inc(len(tools))
        m.tool_definitions.labels(*x.labels, "sent").inc(len(chosen.kept))
        return None
