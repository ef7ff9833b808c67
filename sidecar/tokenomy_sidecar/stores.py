"""Where exact-cache entries live: in process (LRU with TTL) or in a shared Redis."""

from __future__ import annotations

from collections import OrderedDict
from typing import Protocol

from tokenomy_api.clock import Clock


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
    """Per-partition LRU dictionaries with per-entry expiry; one sidecar's own."""

    def __init__(self, max_entries: int, clock: Clock) -> None:
        self.max_entries = max_entries
        self.clock = clock
        self._partitions: dict[str, OrderedDict[str, tuple[float, bytes]]] = {}

    async def get(self, partition: str, key: str) -> bytes | None:
        """The value if present and fresh; a hit becomes the most recently used."""
        entries = self._partitions.get(partition)
        item = entries.get(key) if entries is not None else None
        if item is None or entries is None:
            return None
        expires, value = item
        if expires <= self.clock.monotonic():
            del entries[key]
            return None
        entries.move_to_end(key)
        return value

    async def put(self, partition: str, key: str, value: bytes, ttl: float) -> None:
        """Store, evicting the least recently used entry of a full partition."""
        entries = self._partitions.setdefault(partition, OrderedDict())
        entries[key] = (self.clock.monotonic() + ttl, value)
        entries.move_to_end(key)
        while len(entries) > self.max_entries:
            entries.popitem(last=False)

    def __len__(self) -> int:
        return sum(len(e) for e in self._partitions.values())

    async def close(self) -> None:
        """Drop every entry (a retired store's memory goes back at once)."""
        self._partitions.clear()


class RedisStore:
    """A Redis shared by the replicas of a policy, so one replica's answer serves all."""

    PREFIX = "tokenomy:cache:v1:"

    def __init__(self, url: str, password: str | None = None) -> None:
        # Imported here: Redis is optional, and most sidecars never load the client.
        from redis.asyncio import Redis  # noqa: PLC0415

        self.url = url
        self._redis = Redis.from_url(url, password=password)

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
