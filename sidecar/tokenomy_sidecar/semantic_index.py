"""Nearest-neighbour search over cached questions, one index per partition.

HNSW (usearch) rather than a linear scan: a lookup among 100,000 entries
takes tens of microseconds instead of milliseconds, and entries can be
removed when they expire or are evicted. Partitions are separate indexes, so
a search can never return another tenant's answer. Redis from Debian (7.x)
has no vector search, so the index lives in each sidecar; the exact cache is
what replicas share.
"""

from __future__ import annotations

import itertools
from collections import OrderedDict
from dataclasses import dataclass

import numpy as np
import numpy.typing as npt
from usearch.index import Index

from tokenomy_api.clock import Clock

Vector = npt.NDArray[np.float32]

CANDIDATES = 4
"""Neighbours fetched per search, so an expired nearest one does not hide a fresh one."""


@dataclass
class _Entry:
    expires: float
    value: bytes


class _Partition:
    def __init__(self, dimensions: int) -> None:
        self.index = Index(ndim=dimensions, metric="cos", dtype="f32", connectivity=16)
        self.entries: OrderedDict[int, _Entry] = OrderedDict()


class SemanticIndex:
    """Vectors with their cached answers, per partition, with TTL and a size cap."""

    def __init__(self, max_entries: int, clock: Clock) -> None:
        self.max_entries = max_entries
        self.clock = clock
        self._partitions: dict[str, _Partition] = {}
        self._keys = itertools.count()

    def search(self, partition: str, vector: Vector) -> tuple[float, bytes] | None:
        """The most similar fresh entry: (cosine similarity, value), or None."""
        part = self._partitions.get(partition)
        if part is None or not part.entries:
            return None
        matches = part.index.search(vector, min(CANDIDATES, len(part.entries)))
        now = self.clock.monotonic()
        for key, distance in zip(matches.keys, matches.distances, strict=True):
            entry = part.entries.get(int(key))
            if entry is None:
                continue
            if entry.expires <= now:
                self._remove(part, int(key))
                continue
            return 1.0 - float(distance), entry.value
        return None

    def add(self, partition: str, vector: Vector, value: bytes, ttl: float) -> None:
        """Store an answer under its question's vector; the oldest entry goes when full."""
        part = self._partitions.get(partition)
        if part is None:
            part = self._partitions[partition] = _Partition(int(vector.shape[-1]))
        key = next(self._keys)
        part.index.add(key, vector)
        part.entries[key] = _Entry(self.clock.monotonic() + ttl, value)
        while len(part.entries) > self.max_entries:
            oldest = next(iter(part.entries))
            self._remove(part, oldest)

    def bulk_load(self, partition: str, vectors: Vector, values: list[bytes], ttl: float) -> None:
        """Add many entries at once (multi-threaded), e.g. to seed a cache with known answers."""
        part = self._partitions.get(partition)
        if part is None:
            part = self._partitions[partition] = _Partition(int(vectors.shape[-1]))
        keys = np.array([next(self._keys) for _ in values], dtype=np.uint64)
        part.index.add(keys, vectors)
        expires = self.clock.monotonic() + ttl
        for key, value in zip(keys, values, strict=True):
            part.entries[int(key)] = _Entry(expires, value)
        while len(part.entries) > self.max_entries:
            self._remove(part, next(iter(part.entries)))

    def _remove(self, part: _Partition, key: int) -> None:
        part.entries.pop(key, None)
        part.index.remove(key)

    def __len__(self) -> int:
        return sum(len(p.entries) for p in self._partitions.values())
