"""Stage 4: choose the starting tier — domain rules, then complexity, else the default.

The decision itself is pure (:func:`tokenomy_sidecar.routing.decision.decide`);
this stage gathers what it needs: the domains' similarity to the question
(shared vectors) and the complexity model's prediction.
"""

from __future__ import annotations

import functools

from tokenomy_api.compiled import CompiledDomain
from tokenomy_sidecar.metrics import Metrics
from tokenomy_sidecar.pipeline import Answer, Exchange, Quiet, RoutingRecord
from tokenomy_sidecar.request import prompt_text
from tokenomy_sidecar.routing.decision import Complexity, decide, estimate_tokens, walk
from tokenomy_sidecar.stages.semantic_cache import question
from tokenomy_sidecar.vectors import SharedVectors


class Route(Quiet):
    """Writes the request's routing record: tier, reason, whether a cascade follows."""

    name = "route"
    optional = True

    def __init__(self, metrics: Metrics, vectors: SharedVectors) -> None:
        self.metrics = metrics
        self.vectors = vectors

    async def request(self, x: Exchange) -> Answer | None:
        """Decide; never answers."""
        routing = x.runtime.config.routing
        text = question(x.chat.body)
        similarity = None
        if text is not None and x.route.embedding is not None:
            examples = await self.vectors.examples(x)
            if examples:
                vector = await self.vectors.question(x)
                if vector is not None:
                    scores = {name: float((m @ vector).max()) for name, m in examples.items()}
                    similarity = functools.partial(_similarity, scores)
        complexity = None
        model = x.runtime.complexity
        if routing.complexity and model is not None:
            prompt = prompt_text(x.chat.body)
            complexity = Complexity(
                gain=model.score(text or prompt),
                cut=model.cut,
                input_tokens=estimate_tokens(prompt),
                output_tokens=model.mean_output_tokens,
                mean_input_tokens=model.mean_input_tokens,
                tighten=x.runtime.config.tuning.routing,
            )
        decision = decide(x.route, routing, text, similarity, complexity)
        straight = decision.kind == "domain"
        lever = "tier"
        if not straight and len(walk(x.route, decision.tier)) > 1:
            lever = "cascade"
        elif decision.kind != "default":
            lever = "routing"
        x.routing = RoutingRecord(x.route.tier(decision.tier), decision.reason, straight, lever)
        self.metrics.route_decisions.labels(*x.labels, decision.tier, decision.kind).inc()
        return None


def _similarity(scores: dict[str, float], domain: CompiledDomain) -> float:
    return scores.get(domain.name, 0.0)
