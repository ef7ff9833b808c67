"""Stage 3a: the exact cache — look up a normalised request within its partition, and store.

The key is a hash of the request without the fields that cannot change the
answer; an entry holds the tier and backend that answered, then the body.
Both cache stages share the entry format and how a hit is served
(:func:`hit`). A store that is down is a miss, never an outage.

Identical requests that arrive while the first is still being answered wait
for it instead of calling the model too: the first one to miss leads, the
others follow and are served its answer as a hit (streamed ones too); if the
answer cannot be cached, they go on as misses of their own.
"""

from __future__ import annotations

import asyncio
import hashlib
import logging
from collections.abc import Awaitable, Callable, Mapping
from typing import Any

import orjson

from tokenomy_sidecar.metrics import Metrics
from tokenomy_sidecar.pipeline import Answer, Exchange, Quiet
from tokenomy_sidecar.sse import cacheable
from tokenomy_sidecar.stages.metering import Meter, Usage

log = logging.getLogger(__name__)

IGNORED_FIELDS = frozenset(
    {"stream", "stream_options", "user", "metadata", "store", "service_tier"}
)
"""Fields that do not change the answer; every other field, known or not, is in the key."""


def exact_key(partition: str, body: Mapping[str, Any]) -> str:
    """A key equal for requests that must get the same answer, and only for those.

    Keys are sorted, so field order does not matter; a stream and a non-stream
    request share a key, since the cache replays either form.
    """
    kept = {k: v for k, v in body.items() if k not in IGNORED_FIELDS}
    digest = hashlib.sha256(partition.encode())
    digest.update(b"\0")
    digest.update(orjson.dumps(kept, option=orjson.OPT_SORT_KEYS))
    return digest.hexdigest()


async def keep(
    metrics: Metrics,
    x: Exchange,
    answer: Answer,
    kind: str,
    put: Callable[[bytes], Awaitable[None]],
) -> bytes | None:
    """Store a fresh answer as an entry (tier, backend, body) with ``put``, and count it.

    An answer that must not be served again (cut short, refused, an error)
    is not stored; a store that fails is counted and otherwise ignored.
    Returns the entry, or None when the answer is not cacheable.
    """
    stores = metrics.cache_stores
    if answer.completion is None or answer.reply is None or not cacheable(answer.completion):
        stores.labels(*x.labels, kind, "not_cacheable").inc()
        return None
    backend = answer.reply.candidate.backend.name
    entry = f"{x.routing.tier.name}\n{backend}\n".encode() + orjson.dumps(answer.completion)
    try:
        await put(entry)
    except Exception:
        log.warning("%s cache store failed", kind, exc_info=True)
        stores.labels(*x.labels, kind, "error").inc()
        return entry
    stores.labels(*x.labels, kind, "stored").inc()
    return entry


def hit(x: Exchange, meter: Meter, entry: bytes, source: str) -> Answer:
    """Serve a stored entry: counted as saving the reference tier's price, costing nothing."""
    tier, backend, body = entry.split(b"\n", 2)
    completion = orjson.loads(body)
    meter.hit(x, tier.decode(), Usage.from_openai(completion.get("usage")), source)
    x.headers.update(
        {
            "x-tokenomy-cache": source,
            "x-tokenomy-tier": tier.decode(),
            "x-tokenomy-backend": backend.decode(),
            "x-tokenomy-cost-usd": "0",
        }
    )
    return Answer(source, body=body, completion=completion)


class ExactCache(Quiet):
    """Answers from the store when the same request was answered before; stores answers."""

    name = "exact_cache"
    optional = True

    def __init__(self, metrics: Metrics, meter: Meter) -> None:
        self.metrics = metrics
        self.meter = meter
        self._leaders: dict[tuple[str, str], asyncio.Future[bytes | None]] = {}
        """The answer each in-flight miss will store, by (partition, key)."""
        self._led: dict[int, tuple[str, str]] = {}
        """What each leading request (by id) leads, released when it ends."""

    async def request(self, x: Exchange) -> Answer | None:
        """Look up the request; a hit answers it."""
        if not x.runtime.config.cache.exact.enabled:
            return None
        decision = x.cache.decision
        if decision.lookup or decision.store:
            x.cache.key = exact_key(decision.partition, x.chat.body)
        lookups = self.metrics.cache_lookups
        if not decision.lookup:
            lookups.labels(*x.labels, "exact", "bypass").inc()
            return None
        try:
            entry = await x.runtime.store.get(decision.partition, x.cache.key)
        except Exception:
            log.warning("cache lookup failed", exc_info=True)
            lookups.labels(*x.labels, "exact", "error").inc()
            return None
        if entry is not None:
            lookups.labels(*x.labels, "exact", "hit").inc()
            return hit(x, self.meter, entry, "exact")
        if decision.store and x.park is None:  # a batch line waits for its job, not a leader
            entry = await self._coalesce(x, (decision.partition, x.cache.key))
            if entry is not None:
                lookups.labels(*x.labels, "exact", "coalesced").inc()
                return hit(x, self.meter, entry, "exact")
        lookups.labels(*x.labels, "exact", "miss").inc()
        return None

    async def _coalesce(self, x: Exchange, slot: tuple[str, str]) -> bytes | None:
        """Follow an identical request in flight (its entry, or None); else lead."""
        leader = self._leaders.get(slot)
        if leader is None:
            self._leaders[slot] = asyncio.get_running_loop().create_future()
            self._led[id(x)] = slot
            return None
        # As long as the leader may take, tries and all; then answer on our own.
        patience = x.route.retry.timeout_seconds * x.route.retry.attempts
        try:
            return await asyncio.wait_for(asyncio.shield(leader), patience)
        except TimeoutError:
            return None

    async def store(self, x: Exchange, answer: Answer) -> None:
        """Keep a fresh answer for the request's key."""
        if not (x.cache.key and x.cache.decision.store):
            return
        ttl = x.runtime.config.cache.exact.ttl_seconds

        async def put(entry: bytes) -> None:
            await x.runtime.store.put(x.cache.decision.partition, x.cache.key, entry, ttl)

        entry = await keep(self.metrics, x, answer, "exact", put)
        self._release(x, entry)

    async def close(self, x: Exchange) -> None:
        """A leader that ends without a stored answer lets its followers go on their own."""
        self._release(x, None)

    def _release(self, x: Exchange, entry: bytes | None) -> None:
        slot = self._led.pop(id(x), None)
        leader = self._leaders.pop(slot, None) if slot is not None else None
        if leader is not None and not leader.done():
            leader.set_result(entry)
