"""Which tier a request starts on: domain rules first, then complexity, else the default.

Pure functions. The proxy supplies the question, the similarity to each
domain's examples and the complexity score; ``tokenomy eval routing`` calls
the same :func:`relative_cost` and :func:`skips` on recorded data, so the
numbers in the README are the sidecar's own decisions.
"""

from __future__ import annotations

import functools
import math
import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from decimal import Decimal

from tokenomy_api.compiled import CompiledDomain, CompiledRoute, CompiledRouting, Price


@dataclass(frozen=True)
class Decision:
    """The starting tier and why."""

    tier: str
    reason: str
    """For ``x-tokenomy-route-reason``, e.g. ``domain refunds (keyword "refund")``."""
    kind: str
    """For metrics: ``domain``, ``complexity`` or ``default``."""


@dataclass(frozen=True)
class Complexity:
    """A complexity prediction for one request, and how to weigh it."""

    gain: float
    """Predicted chance that the reference tier answers better than a cheaper one."""
    cut: float
    """The model's calibrated cut, used where a tier has no threshold of its own."""
    input_tokens: int
    """Estimated input tokens of this request."""
    output_tokens: float
    """Expected output tokens (the training answers' mean)."""
    mean_input_tokens: float
    """Input tokens of an average request, from the training data."""
    tighten: float = 0.0
    """Taken off every cut: shadow comparison measured routing below the quality floor."""


def estimate_tokens(text: str) -> int:
    """About 4 characters a token for English (OpenAI's rule of thumb), at least 1."""
    return max(1, round(len(text) / 4))


@functools.lru_cache(maxsize=1024)
def _keyword_pattern(keyword: str) -> re.Pattern[str]:
    # No word character before the keyword ("art" must not fire inside "start"),
    # anything after it ("refund" fires in "refunds").
    return re.compile(r"(?<!\w)" + re.escape(keyword))


def matching_keyword(domain: CompiledDomain, text: str) -> str | None:
    """The first of the domain's keywords found in ``text`` (keywords are lower case)."""
    lowered = text.lower()
    return next((k for k in domain.keywords if _keyword_pattern(k).search(lowered)), None)


def relative_cost(
    cheap: Price, strong: Price, input_tokens: float, output_tokens: float, mean_input: float
) -> float:
    """What moving this request to ``strong`` adds, relative to an average request.

    1.0 for an average request; 3.0 for a prompt three times as long (when
    input dominates). Independent of the price level, so a model calibrated
    on one price pair transfers to another with a similar input/output ratio.
    """
    extra_in = strong.input - cheap.input
    extra_out = strong.output - cheap.output
    tokens_out = Decimal(str(output_tokens))
    this = extra_in * Decimal(str(input_tokens)) + extra_out * tokens_out
    average = extra_in * Decimal(str(mean_input)) + extra_out * tokens_out
    if this <= 0 or average <= 0:
        return 1.0
    return float(this / average)


def routing_score(gain: float, relative: float) -> float:
    """The complexity score a threshold is compared with: gain per unit of relative cost.

    A request costlier than average needs that much more gain to escalate; a
    cheaper one is judged on its gain alone. Dividing by a relative cost
    below 1 inflated every short prompt's score and sent "hi" and "What is
    2 + 2?" to the strongest tier.
    """
    return gain / max(1.0, relative)


def skips(score: float, cut: float) -> bool:
    """Whether a request with this score skips the cheaper tier."""
    return score >= cut


def complexity_tier(route: CompiledRoute, c: Complexity, cost_aware: bool) -> Decision:
    """The cheapest tier the request does not skip; the reference tier at the latest.

    A tier without a threshold of its own skips at the model's cut, raised
    for each tier above the cheapest so that the cheaper tiers share the
    range above the cut evenly (three tiers, cut 0.5: small under 0.5,
    medium under 0.75): with one cut for all, a middle tier was never chosen.
    """
    reference = next(t for t in route.tiers if t.name == route.reference_tier)
    strong = reference.backends[0].price
    cheaper = [t for t in route.tiers[: route.tiers.index(reference)]]
    score, cut = c.gain, c.cut
    for i, tier in enumerate(cheaper):
        cut = c.cut
        if tier.routing_threshold is not None:
            cut = tier.routing_threshold
        elif i and math.isfinite(c.cut):
            cut = c.cut + (1.0 - c.cut) * i / len(cheaper)
        cut -= c.tighten
        relative = (
            relative_cost(
                tier.backends[0].price,
                strong,
                c.input_tokens,
                c.output_tokens,
                c.mean_input_tokens,
            )
            if cost_aware
            else 1.0
        )
        score = routing_score(c.gain, relative)
        if not skips(score, cut):
            return Decision(tier.name, f"complexity {score:.2f} < {cut:.2f}", "complexity")
    if cut == -math.inf:
        # The model's calibration supports no saving at the policy's quality target.
        why = f"complexity: no saving at the quality target: needs {reference.name}"
        return Decision(reference.name, why, "complexity")
    return Decision(
        reference.name, f"complexity {score:.2f} >= {cut:.2f}: needs {reference.name}", "complexity"
    )


def decide(
    route: CompiledRoute,
    routing: CompiledRouting,
    question: str | None,
    similarity: Callable[[CompiledDomain], float] | None,
    complexity: Complexity | None,
) -> Decision:
    """The starting tier of a request.

    Domains are checked in order, each by keyword and then by example
    similarity (``similarity`` is None when no embedding is available);
    then complexity routing, when a prediction was made; else the cascade's
    first tier, or the route's default tier.
    """
    tiers = {t.name for t in route.tiers}
    if question is not None:
        for domain in routing.domains:
            if domain.tier not in tiers:
                continue
            keyword = matching_keyword(domain, question)
            if keyword is not None:
                return Decision(
                    domain.tier, f'domain {domain.name} (keyword "{keyword}")', "domain"
                )
            if domain.examples and similarity is not None:
                value = similarity(domain)
                if value >= domain.similarity:
                    return Decision(
                        domain.tier, f"domain {domain.name} (example {value:.2f})", "domain"
                    )
    if complexity is not None:
        return complexity_tier(route, complexity, routing.cost_aware)
    if route.cascade_tiers:
        return Decision(route.cascade_tiers[0], "cascade", "default")
    return Decision(route.default_tier, "default", "default")


def walk(route: CompiledRoute, start: str) -> Sequence[str]:
    """The tiers a request may be tried on: ``start``, then the cascade's tiers above it.

    Just ``[start]`` when the cascade is off or ``start`` is past its tiers.
    """
    order = [t.name for t in route.tiers]
    floor = order.index(start)
    return [start, *(t for t in route.cascade_tiers if order.index(t) > floor)]
