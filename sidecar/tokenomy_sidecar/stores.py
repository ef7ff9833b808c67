"""Where exact-cache entries live: in process (LRU with TTL) or in a shared Redis."""

from __future__ import annotations

from collections import OrderedDict
from typing import Any, Protocol

from tokenomy_api.clock import Clock
from tokenomy_sidecar.memory_budget import ENTRY_OVERHEAD, MemoryBudget


class CacheStore(Protocol):
    """A byte store with expiry, partitioned."""

    async def get(self, partition: str, key: str) -> bytes | None:
        """The stored value, or None when absent or expired."""
        ...

    async def put(self, partition: str, key: str, value: bytes, ttl: float) -> None:
        """Store a value for ``ttl`` seconds."""
        ...

    async def close(self) -> None:
        """Release connections."""
        ...


class MemoryStore:
    """Per-partition LRU dictionaries with per-entry expiry; one sidecar's own.

    Each entry is charged to the sidecar's memory budget, which may evict it
    for an entry of any partition or cache.
    """

    def __init__(self, max_entries: int, clock: Clock, budget: MemoryBudget) -> None:
        self.max_entries = max_entries
        self.clock = clock
        self.budget = budget
        self._partitions: dict[str, OrderedDict[str, tuple[float, bytes]]] = {}

    async def get(self, partition: str, key: str) -> bytes | None:
        """The value if present and fresh; a hit becomes the most recently used."""
        entries = self._partitions.get(partition)
        item = entries.get(key) if entries is not None else None
        if item is None or entries is None:
            return None
        expires, value = item
        if expires <= self.clock.monotonic():
            self._drop(partition, key)
            return None
        entries.move_to_end(key)
        self.budget.touch(self._charge_key(partition, key))
        return value

    async def put(self, partition: str, key: str, value: bytes, ttl: float) -> None:
        """Store, evicting the least recently used entry of a full partition."""
        entries = self._partitions.setdefault(partition, OrderedDict())
        entries[key] = (self.clock.monotonic() + ttl, value)
        entries.move_to_end(key)
        self.budget.charge(
            self._charge_key(partition, key),
            ENTRY_OVERHEAD + len(partition) + len(key) + len(value),
            lambda: self._drop(partition, key, charged=False),
        )
        while len(entries) > self.max_entries:
            self._drop(partition, next(iter(entries)))

    def _charge_key(self, partition: str, key: str) -> tuple[object, ...]:
        return ("exact", id(self), partition, key)

    def _drop(self, partition: str, key: str, charged: bool = True) -> None:
        entries = self._partitions.get(partition)
        if entries is None or entries.pop(key, None) is None:
            return
        if charged:
            self.budget.release(self._charge_key(partition, key))
        if not entries:
            del self._partitions[partition]

    def __len__(self) -> int:
        return sum(len(e) for e in self._partitions.values())

    async def close(self) -> None:
        """Drop every entry (a retired store's memory goes back at once)."""
        for partition, entries in list(self._partitions.items()):
            for key in list(entries):
                self._drop(partition, key)


class RedisStore:
    """A Redis shared by the replicas of a policy, so one replica's answer serves all."""

    PREFIX = "tokenomy:cache:v1:"

    def __init__(self, url: str, password: str | None = None) -> None:
        # Imported here: Redis is optional, and most sidecars never load the client.
        from redis.asyncio import Redis  # noqa: PLC0415

        self.url = url
        self._redis = Redis.from_url(url, password=password)

    @property
    def client(self) -> Any:
        """The asyncio client, for the semantic cache's shared record (semantic_share.py)."""
        return self._redis

    async def get(self, partition: str, key: str) -> bytes | None:
        """The value, or None; Redis expires entries itself."""
        value = await self._redis.get(self.PREFIX + key)
        return value if isinstance(value, bytes) else None

    async def put(self, partition: str, key: str, value: bytes, ttl: float) -> None:
        """Store with a TTL in milliseconds (the key already encodes the partition)."""
        await self._redis.set(self.PREFIX + key, value, px=max(1, int(ttl * 1000)))

    async def close(self) -> None:
        """Close the connection pool."""
        await self._redis.aclose()
