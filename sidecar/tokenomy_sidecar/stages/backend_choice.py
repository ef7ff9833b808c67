"""Backend choice within a tier: placement preference first, then price, weight and health.

The ranking is a pure function of the tier, the policy's placement, the
pod's region, a health snapshot and a random source, so it is table-tested.
Health is passive: failures eject an endpoint for a while, successes clear it.
"""

from __future__ import annotations

import hashlib
import random
from collections import OrderedDict
from collections.abc import Mapping
from dataclasses import dataclass, field
from decimal import Decimal
from typing import Any

import orjson

from tokenomy_api.compiled import (
    CompiledBackend,
    CompiledEndpoint,
    CompiledPlacement,
    CompiledTier,
)

EJECT_BASE_SECONDS = 0.5
"""First ejection after a failure; doubles with each consecutive failure."""
EJECT_MAX_SECONDS = 30.0
"""Longest an endpoint stays ejected before it is tried again."""
LATENCY_SMOOTHING = 0.2
"""Weight of the newest sample in the moving average of latency."""


@dataclass(frozen=True)
class Candidate:
    """One endpoint of one backend, a place a try can go."""

    backend: CompiledBackend
    endpoint: CompiledEndpoint


@dataclass
class EndpointHealth:
    """What recent tries said about one endpoint."""

    failures: int = 0
    """Consecutive failures."""
    ejected_until: float = 0.0
    """Monotonic time before which the endpoint is tried only when nothing else is left."""
    latency: float | None = None
    """Moving average of seconds to the response's first byte."""


@dataclass
class HealthTracker:
    """Passive health of every endpoint, by URL."""

    endpoints: dict[str, EndpointHealth] = field(default_factory=dict)

    def failed(self, url: str, now: float) -> None:
        """Record a failed try (connect error, timeout, 5xx or 429)."""
        health = self.endpoints.setdefault(url, EndpointHealth())
        health.failures += 1
        eject = min(EJECT_MAX_SECONDS, EJECT_BASE_SECONDS * 2 ** (health.failures - 1))
        health.ejected_until = now + eject

    def succeeded(self, url: str, latency: float) -> None:
        """Record a successful try and its time to first byte."""
        health = self.endpoints.setdefault(url, EndpointHealth())
        health.failures = 0
        health.ejected_until = 0.0
        health.latency = (
            latency
            if health.latency is None
            else (1 - LATENCY_SMOOTHING) * health.latency + LATENCY_SMOOTHING * latency
        )


AFFINITY_MAX = 10_000
"""Conversations whose last endpoint is remembered (the oldest go first)."""


def prefix_key(body: Mapping[str, Any]) -> str | None:
    """What a conversation's requests share at their start: its leading system messages
    and first other message. None for a request without messages.

    Every turn of one conversation has the same key, so its turns go where the earlier
    ones went and an in-cluster server's prefix (KV) cache holds their shared start.
    """
    messages = body.get("messages")
    if not isinstance(messages, list) or not messages:
        return None
    lead = next(
        (i for i, m in enumerate(messages)
         if not (isinstance(m, dict) and m.get("role") in ("system", "developer"))),
        len(messages) - 1,
    )  # fmt: skip
    digest = hashlib.sha256(orjson.dumps(messages[: lead + 1], option=orjson.OPT_SORT_KEYS))
    return digest.hexdigest()


@dataclass
class PrefixAffinity:
    """The endpoint each conversation (by :func:`prefix_key`) was last answered by."""

    last: OrderedDict[str, str] = field(default_factory=OrderedDict)

    def preferred(self, key: str | None) -> str | None:
        """The endpoint URL to prefer for ``key``, if one answered it before."""
        return self.last.get(key) if key is not None else None

    def served(self, key: str | None, url: str) -> None:
        """``url`` answered a request of ``key``."""
        if key is None:
            return
        self.last[key] = url
        self.last.move_to_end(key)
        while len(self.last) > AFFINITY_MAX:
            self.last.popitem(last=False)


def blended_price(backend: CompiledBackend) -> Decimal:
    """One number to compare prices by: input and output per million, summed."""
    return backend.price.input + backend.price.output


def rank(
    tier: CompiledTier,
    placement: CompiledPlacement,
    pod_region: str | None,
    health: Mapping[str, EndpointHealth],
    now: float,
    rng: random.Random,
    preferred: str | None = None,
) -> list[Candidate]:
    """Every endpoint of the tier, best first.

    Order: healthy before ejected; drained (weight 0) last; the compiled
    priority (capacity preference: reserved, then spot or on-demand as the
    policy says); the pod's own region first when the strategy is
    ``nearest``; cheaper first; the ``preferred`` endpoint (the one that
    answered the conversation before) first among equals; then a weighted
    random order, so weights share traffic.
    """
    keyed = []
    for backend in tier.backends:
        for endpoint in backend.endpoints:
            state = health.get(endpoint.url)
            ejected = state is not None and state.ejected_until > now
            far = placement.nearest and endpoint.region != pod_region
            # Weighted random order (Efraimidis-Spirakis): larger key = earlier.
            weight = backend.weight
            lottery = rng.random() ** (1.0 / weight) if weight > 0 else 0.0
            drained = weight == 0
            elsewhere = endpoint.url != preferred
            key = (
                ejected, drained, endpoint.priority, far, blended_price(backend), elsewhere,
                -lottery,
            )  # fmt: skip
            keyed.append((key, Candidate(backend, endpoint)))
    keyed.sort(key=lambda item: item[0])
    return [candidate for _, candidate in keyed]
