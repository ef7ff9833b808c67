"""One memory budget for everything a sidecar caches in process, with one LRU order.

The exact cache's memory store and the semantic index both charge their
entries here. When the total passes the budget, the least recently used
entry goes, whichever cache, partition or conversation it belongs to: a
per-partition cap alone bounds nothing when partitions (tenants, contexts)
are unbounded.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Callable, Hashable

from prometheus_client import Gauge

ENTRY_OVERHEAD = 400
"""Bytes of Python objects around an entry (dict slots, tuples, the key), measured roughly."""


class MemoryBudget:
    """Bytes charged per entry; evicts the least recently used past ``max_bytes``."""

    def __init__(self, max_bytes: int, gauge: Gauge | None = None) -> None:
        self.max_bytes = max_bytes
        """The budget; lowering it evicts at the next charge (or :meth:`enforce`)."""
        self.gauge = gauge
        """``tokenomy_cache_memory_bytes``, labelled by the cache (the key's first item)."""
        self.used = 0
        self._used_by: dict[Hashable, int] = {}
        self._order: OrderedDict[tuple[Hashable, ...], tuple[int, Callable[[], None]]] = (
            OrderedDict()
        )

    def charge(self, key: tuple[Hashable, ...], size: int, evict: Callable[[], None]) -> None:
        """Hold ``size`` bytes for ``key`` (``key[0]`` names the cache); ``evict`` drops it."""
        self.release(key)
        self._order[key] = (size, evict)
        self._add(key[0], size)
        self.enforce()

    def touch(self, key: tuple[Hashable, ...]) -> None:
        """A hit: the entry becomes the most recently used."""
        if key in self._order:
            self._order.move_to_end(key)

    def release(self, key: tuple[Hashable, ...]) -> None:
        """The owner dropped the entry itself (expired, replaced, closed)."""
        held = self._order.pop(key, None)
        if held is not None:
            self._add(key[0], -held[0])

    def enforce(self) -> None:
        """Evict least recently used entries until the total fits."""
        while self.used > self.max_bytes and self._order:
            key, (size, evict) = self._order.popitem(last=False)
            self._add(key[0], -size)
            evict()

    def _add(self, cache: Hashable, size: int) -> None:
        self.used += size
        used = self._used_by[cache] = self._used_by.get(cache, 0) + size
        if self.gauge is not None:
            self.gauge.labels(str(cache)).set(used)
