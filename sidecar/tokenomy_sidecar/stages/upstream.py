"""Stage 6: call a tier's backends in ranked order, moving on within the retry budget.

A try moves on after a connection failure, a timeout, a 5xx or a 429. A
streamed answer is handed to the caller once its status is 200, before any
byte reaches the client, so a stream is never retried after it has started.
:class:`Caller` is what the stages that ask a model use: backends ranked by
placement and health (:mod:`~tokenomy_sidecar.stages.backend_choice`), then
:class:`Upstream` over HTTP, failed tries counted.
"""

from __future__ import annotations

import asyncio
import hashlib
import logging
import random
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import aiohttp
import orjson

from tokenomy_api.clock import Clock
from tokenomy_api.compiled import CompiledBackend, CompiledTier
from tokenomy_sidecar.errors import ApiError
from tokenomy_sidecar.stages.backend_choice import (
    Candidate,
    HealthTracker,
    PrefixAffinity,
    prefix_key,
    rank,
)

if TYPE_CHECKING:
    from tokenomy_sidecar.pipeline import Exchange
    from tokenomy_sidecar.stages.metering import Meter

log = logging.getLogger(__name__)

RETRYABLE_STATUS = frozenset({429, 500, 502, 503, 504})

CredentialLookup = Callable[[CompiledBackend], str | None]


@dataclass
class Reply:
    """A backend's answer: status, headers and, unless streamed, the whole body."""

    candidate: Candidate
    status: int
    content_type: str
    body: bytes = b""
    """The body (empty for a stream that is still open in ``stream``)."""
    stream: aiohttp.ClientResponse | None = None
    """The open response of a streamed answer, to be read and released by the caller."""
    failures: list[tuple[str, str]] = field(default_factory=list)
    """Earlier failed tries: (backend name, reason: ``connect``, ``timeout``, ``status_503``…)."""
    first_byte_seconds: float = 0.0
    """Time from the winning try's start to its response headers."""


class Upstream:
    """The HTTP client side of the sidecar."""

    def __init__(self, session: aiohttp.ClientSession, health: HealthTracker, clock: Clock) -> None:
        self.session = session
        self.health = health
        self.clock = clock

    async def send(
        self,
        candidates: Sequence[Candidate],
        path: str,
        body: dict[str, Any],
        attempts: int,
        timeout: float,
        credential: CredentialLookup,
        stream: bool,
        cache_key: str | None = None,
    ) -> Reply:
        """Try candidates in order (wrapping around) until one answers or tries run out.

        ``cache_key`` goes as ``prompt_cache_key`` to backends that take one, unless the
        client set its own.
        """
        if not candidates:
            raise ApiError(503, "no backend of this tier has a ready endpoint", "server_error")
        failures: list[tuple[str, str]] = []
        last_error: Reply | None = None
        for attempt in range(attempts):
            candidate = candidates[attempt % len(candidates)]
            backend, url = candidate.backend, candidate.endpoint.url
            headers = {"Content-Type": "application/json"}
            key = credential(backend)
            if key:
                headers["Authorization"] = f"Bearer {key}"
            sent = {**body, "model": backend.model}
            if backend.prompt_cache_key and cache_key and "prompt_cache_key" not in body:
                sent["prompt_cache_key"] = cache_key
            payload = orjson.dumps(sent)
            started = self.clock.monotonic()
            response: aiohttp.ClientResponse | None = None
            try:
                async with asyncio.timeout(timeout):
                    response = await self.session.post(url + path, data=payload, headers=headers)
                    if stream and response.status == 200:
                        self.health.succeeded(url, self.clock.monotonic() - started)
                        return Reply(
                            candidate,
                            200,
                            response.content_type,
                            stream=response,
                            failures=failures,
                            first_byte_seconds=self.clock.monotonic() - started,
                        )
                    data = await response.read()
            except TimeoutError:
                failures.append((backend.name, "timeout"))
                self.health.failed(url, self.clock.monotonic())
                if response is not None:
                    response.release()
                continue
            except aiohttp.ClientError:
                failures.append((backend.name, "connect"))
                self.health.failed(url, self.clock.monotonic())
                if response is not None:
                    response.release()
                continue
            elapsed = self.clock.monotonic() - started
            reply = Reply(
                candidate,
                response.status,
                response.content_type,
                body=data,
                failures=failures,
                first_byte_seconds=elapsed,
            )
            if response.status in RETRYABLE_STATUS:
                failures.append((backend.name, f"status_{response.status}"))
                self.health.failed(url, self.clock.monotonic())
                last_error = reply
                continue
            self.health.succeeded(url, elapsed)
            return reply
        if last_error is not None:
            return last_error
        raise ApiError(
            502,
            "every try failed ("
            + ", ".join(f"{name}: {reason}" for name, reason in failures)
            + "); no backend answered",
            "server_error",
            code="upstream_unavailable",
        )


class Caller:
    """Sends a request's body to one of its route's tiers."""

    def __init__(
        self,
        upstream: Upstream,
        meter: Meter,
        rng: random.Random,
        pod_region: str | None,
    ) -> None:
        self.upstream = upstream
        self.meter = meter
        self.rng = rng
        self.pod_region = pod_region
        self.affinity = PrefixAffinity()

    async def send(
        self,
        x: Exchange,
        tier: CompiledTier,
        body: dict[str, Any],
        stream: bool = False,
        path: str = "/chat/completions",
    ) -> Reply:
        """Send to the tier's backends in placement order, within the route's retry budget."""
        upstream = self.upstream
        conversation = prefix_key(body) if path == "/chat/completions" else None
        preferred = self.affinity.preferred(conversation)
        candidates = rank(
            tier, x.runtime.config.placement, self.pod_region, upstream.health.endpoints,
            upstream.clock.monotonic(), self.rng, preferred,
        )  # fmt: skip
        retry = x.route.retry
        reply = await upstream.send(
            candidates,
            path,
            body,
            retry.attempts,
            retry.timeout_seconds,
            x.runtime.credential,
            stream,
            prompt_cache_key(x),
        )
        self.meter.failures(x, reply, tier.name)
        if reply.status == 200 and conversation is not None:
            url = reply.candidate.endpoint.url
            result = "new" if preferred is None else "kept" if url == preferred else "moved"
            self.meter.metrics.prefix_affinity.labels(*x.labels, result).inc()
            self.affinity.served(conversation, url)
        return reply


def prompt_cache_key(x: Exchange) -> str:
    """The provider cache key of a request: its cache partition and route, hashed (a
    tenant's id never leaves the sidecar as it was sent)."""
    partition = x.cache.decision.partition or x.runtime.config.policy.key
    return hashlib.sha256(f"{partition}\0{x.route.name}".encode()).hexdigest()[:32]


def completion_of(reply: Reply) -> dict[str, Any] | None:
    """A successful reply's JSON object; None for an error, or a 200 that is not one."""
    if reply.status != 200:
        return None
    try:
        parsed = orjson.loads(reply.body)
    except orjson.JSONDecodeError:
        parsed = None
    if not isinstance(parsed, dict):
        log.warning("backend %s sent a 200 that is not a JSON object", reply.candidate.backend.name)
        return None
    return parsed
