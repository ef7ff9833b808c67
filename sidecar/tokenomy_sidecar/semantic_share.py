"""The semantic cache shared by replicas and restarts, through the exact cache's Redis.

Debian's Redis 7 has no vector search, and a vector store the user does not
already run is one more thing to operate. So Redis is the shared *record*
and every sidecar keeps the *index*: each stored entry (partition, context,
vector, answer, expiry) is appended to one Redis stream per cache scope
(``XADD … MAXLEN ~ store.maxEntries``, so Redis holds a bounded, newest-first
record), and every sidecar follows that stream (``XREAD BLOCK``) into its
own bounded :class:`SemanticIndex`. A paraphrase stored by one replica is
a hit on the others once they read it (milliseconds); a sidecar that starts
reads the stream from its beginning, so it warms without asking a model.
Searches stay local and sub-millisecond, and Redis being down costs only
the sharing: entries stay in the replica that made them, and the follower
reconnects with a backoff and reads on from where it was.

The wrong-hit budget's outcomes travel the same way, on a stream of their own
(``…:outcomes``, the newest :data:`~tokenomy_sidecar.semantic_budget.KEPT`),
so that they never push entries out of the record: what one replica learns,
every replica serves by, and a new one starts with the fleet's evidence.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
import uuid
from collections.abc import Callable
from typing import Any

import numpy as np

from tokenomy_api.compiled import SidecarConfig
from tokenomy_sidecar.semantic_budget import KEPT, Outcome, WrongHitBudget
from tokenomy_sidecar.semantic_index import SemanticIndex, Vector

log = logging.getLogger(__name__)

PREFIX = "tokenomy:semantic:v1:"
BATCH = 500
"""Stream entries read per call."""
BLOCK_MS = 1000
"""How long one read waits for new entries."""
BACKOFF_SECONDS = (0.2, 0.5, 1.0, 2.0, 5.0)
"""Waits between reconnects while Redis is down; the last one repeats."""


def stream_of(config: SidecarConfig) -> str:
    """The stream of the config's cache scope: a policy's, or its namespace's when shared."""
    policy = config.policy
    if config.cache.scope.type == "namespace":
        return f"{PREFIX}namespace/{policy.namespace}"
    return f"{PREFIX}policy/{policy.key}"


class SemanticShare:
    """Publishes this sidecar's semantic entries and follows everyone's into the index."""

    def __init__(
        self,
        redis: Any,
        stream: str,
        index: SemanticIndex,
        max_entries: int,
        outcomes: WrongHitBudget | None = None,
        wall: Callable[[], float] = time.time,
    ) -> None:
        self.redis = redis
        """An asyncio Redis client (the Redis store's, so one pool serves both caches)."""
        self.stream = stream
        self.outcome_stream = f"{stream}:outcomes"
        self.index = index
        self.outcomes = outcomes or WrongHitBudget()
        self.max_entries = max_entries
        """Stream length kept (approximately) by Redis."""
        self.wall = wall
        """Wall-clock seconds: expiries cross processes, so monotonic time will not do."""
        self.origin = uuid.uuid4().hex.encode()
        """This process: its own entries, already indexed, are skipped when read back."""
        self.last_id = {stream: b"0", self.outcome_stream: b"0"}
        self.read = 0
        """Entries indexed from the stream (others' only)."""
        self.learnt = 0
        """Outcomes recorded from the stream (others' only)."""
        self._task: asyncio.Task[None] | None = None

    async def publish(
        self, partition: str, context: str, vector: Vector, value: bytes, ttl: float
    ) -> None:
        """Append a freshly stored entry for the other replicas (raises if Redis is down)."""
        fields = {
            b"p": partition.encode(),
            b"c": context.encode(),
            b"v": np.asarray(vector, dtype=np.float32).tobytes(),
            b"a": value,
            b"e": repr(self.wall() + ttl).encode(),
            b"o": self.origin,
        }
        await self.redis.xadd(self.stream, fields, maxlen=self.max_entries, approximate=True)

    async def publish_outcome(self, route: tuple[str, str, str], outcome: Outcome) -> None:
        """Append an outcome for the other replicas' budgets (raises if Redis is down)."""
        fields = {
            b"r": "/".join(route).encode(),
            b"s": repr(outcome.similarity).encode(),
            b"g": repr(outcome.agreement).encode(),
            b"k": b"1" if outcome.correct else b"0",
            b"w": repr(outcome.weight).encode(),
            b"o": self.origin,
        }
        await self.redis.xadd(self.outcome_stream, fields, maxlen=KEPT, approximate=True)

    def start(self) -> None:
        """Follow the stream in the background, from its beginning."""
        if self._task is None:
            self._task = asyncio.get_running_loop().create_task(self._follow())

    async def stop(self) -> None:
        """Stop following (the Redis client belongs to the store, which closes it)."""
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
            self._task = None

    async def _follow(self) -> None:
        failures = 0
        while True:
            try:
                answer = await self.redis.xread(self.last_id, count=BATCH, block=BLOCK_MS)
                failures = 0
            except asyncio.CancelledError:
                raise
            except Exception as error:  # Redis down or restarting: read on later
                wait = BACKOFF_SECONDS[min(failures, len(BACKOFF_SECONDS) - 1)]
                if failures == 0:
                    log.warning("following %s: %s; retrying", self.stream, error)
                failures += 1
                await asyncio.sleep(wait)
                continue
            for name, entries in answer or []:
                stream = name.decode() if isinstance(name, bytes) else str(name)
                learn = stream == self.outcome_stream
                for entry_id, fields in entries:
                    self.last_id[stream] = entry_id
                    self._learn(fields) if learn else self._index(fields)

    def _learn(self, fields: dict[bytes, bytes]) -> None:
        try:
            if fields[b"o"] == self.origin:
                return
            route = tuple(fields[b"r"].decode().split("/"))
            if len(route) != 3:
                raise ValueError(f"route {route!r}")
            outcome = Outcome(
                float(fields[b"s"]), float(fields[b"g"]), fields[b"k"] == b"1", float(fields[b"w"])
            )
            self.outcomes.record(route, outcome)
            self.learnt += 1
        except (KeyError, ValueError, UnicodeDecodeError) as error:
            log.warning("skipping a malformed outcome of %s: %s", self.outcome_stream, error)

    def _index(self, fields: dict[bytes, bytes]) -> None:
        try:
            if fields[b"o"] == self.origin:
                return
            ttl = float(fields[b"e"]) - self.wall()
            if ttl <= 0:
                return
            vector = np.frombuffer(fields[b"v"], dtype=np.float32)
            partition, context = fields[b"p"].decode(), fields[b"c"].decode()
            self.index.add(partition, context, vector, fields[b"a"], ttl)
            self.read += 1
        except (KeyError, ValueError, UnicodeDecodeError) as error:
            # Another version's or a damaged entry: skipped, never served.
            log.warning("skipping a malformed entry of %s: %s", self.stream, error)
