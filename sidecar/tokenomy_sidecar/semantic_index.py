"""Nearest-neighbour search over cached questions: one index per partition, bounded.

A partition (tenant scope, route, parameters, embedder) holds every entry
of every conversation context in one place; the context (the history, the
question's non-text parts, ``name``) is an exact filter on the candidates,
never an index of its own — an index per conversation was an unbounded
number of indexes. A small partition, or a context with few entries, is
scanned exactly (a few hundred dot products cost less than an HNSW hop); a
large one is searched with HNSW (usearch), fetching more candidates the
smaller the context's share of the partition. Every entry is charged to
the sidecar's :class:`MemoryBudget`; eviction there removes it here.
"""

from __future__ import annotations

import itertools
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import cast

import numpy as np
import numpy.typing as npt
from usearch.index import Index

from tokenomy_api.clock import Clock
from tokenomy_sidecar.memory_budget import MemoryBudget

Vector = npt.NDArray[np.float32]

SCAN = 256
"""Entries up to which a context (or a whole partition, before it has an HNSW index) is
scanned exactly."""
CANDIDATES = 4
"""HNSW neighbours fetched per search when the context is the whole partition; an expired
nearest one must not hide a fresh one."""
MAX_CANDIDATES = 512
"""The most HNSW neighbours fetched for a context that is a small share of its partition."""
HNSW_BYTES = 16 * 2 * 4 + 64
"""Graph links per entry at connectivity 16 (level 0 holds twice as many), and its slot."""
OVERHEAD = 1_700
"""Bytes per entry beyond its vector, links, answer and context: Python objects, the
index's growth reserve, allocator slack. Measured: 10,000 entries with ~1 KB answers grew
the sidecar's RSS by 37 MiB (bench/semantic_cost.py), 1.7 KB an entry more than those."""


@dataclass(eq=False)
class _Entry:
    key: int
    context: str
    vector: Vector | None
    """Held here only until the partition has an HNSW index, which then holds the one copy."""
    value: bytes
    expires: float


@dataclass(eq=False)
class _Partition:
    dimensions: int
    rows: dict[int, _Entry] = field(default_factory=dict)
    """Insertion order: the oldest entry first."""
    contexts: dict[str, dict[int, None]] = field(default_factory=dict)
    index: Index | None = None
    removed: int = 0
    """Entries removed from ``index`` since it was built (usearch keeps their slots)."""


@dataclass(frozen=True)
class Found:
    """A search's answer."""

    similarity: float
    value: bytes


class SemanticIndex:
    """Vectors with their cached answers, per partition and context, with TTL and a budget."""

    def __init__(self, budget: MemoryBudget, clock: Clock, max_entries: int = 10_000) -> None:
        self.budget = budget
        self.clock = clock
        self.max_entries = max_entries
        """Entries kept per partition, whatever the budget."""
        self._partitions: dict[str, _Partition] = {}
        self._keys = itertools.count()

    def search(self, partition: str, context: str, vector: Vector) -> Found | None:
        """The most similar fresh entry of this partition and context, or None."""
        nearest = self.neighbours(partition, context, vector, 1)
        return nearest[0] if nearest else None

    def neighbours(self, partition: str, context: str, vector: Vector, k: int) -> list[Found]:
        """Up to ``k`` fresh entries of this partition and context, most similar first."""
        part = self._partitions.get(partition)
        ids = part.contexts.get(context) if part is not None else None
        if part is None or not ids:
            return []
        now = self.clock.monotonic()
        found: list[Found] = []
        expired: list[int] = []
        for similarity, entry in self._ranked(part, context, ids, vector, k):
            if entry.expires <= now:
                expired.append(entry.key)
                continue
            if not found:
                self.budget.touch(("semantic", entry.key))
            found.append(Found(similarity, entry.value))
            if len(found) == k:
                break
        for key in expired:  # after the read: dropping may rebuild the index
            self._drop(partition, key)
        return found

    def _ranked(
        self, part: _Partition, context: str, ids: dict[int, None], vector: Vector, k: int
    ) -> Iterator[tuple[float, _Entry]]:
        """The context's entries, most similar first (lazily: usually the first one answers)."""
        if part.index is None or len(ids) <= SCAN:
            candidates = [part.rows[k] for k in ids]
            similarities = self._vectors(part, candidates) @ vector
            for i in np.argsort(-similarities):
                yield float(similarities[i]), candidates[i]
            return
        wanted = (CANDIDATES + k - 1) * -(-len(part.rows) // len(ids))
        matches = part.index.search(vector, min(wanted, MAX_CANDIDATES, len(part.rows)))
        for key, distance in zip(matches.keys, matches.distances, strict=True):
            entry = part.rows.get(int(key))
            if entry is not None and entry.context == context:
                yield 1.0 - float(distance), entry

    def add(self, partition: str, context: str, vector: Vector, value: bytes, ttl: float) -> None:
        """Store an answer under its question's vector."""
        self.bulk_load(partition, context, vector[None], [value], ttl)

    def bulk_load(
        self, partition: str, context: str, vectors: Vector, values: list[bytes], ttl: float
    ) -> None:
        """Add many entries at once (the HNSW insert is multi-threaded)."""
        part = self._partitions.get(partition)
        if part is None:
            part = self._partitions[partition] = _Partition(int(vectors.shape[-1]))
        if int(vectors.shape[-1]) != part.dimensions:
            raise ValueError(f"{vectors.shape[-1]}-dimensional vectors in a {part.dimensions} one")
        expires = self.clock.monotonic() + ttl
        ids = part.contexts.setdefault(context, {})
        entries = []
        for vector, value in zip(vectors, values, strict=True):
            entry = _Entry(next(self._keys), context, np.ascontiguousarray(vector), value, expires)
            part.rows[entry.key] = entry
            ids[entry.key] = None
            entries.append(entry)
        if part.index is not None:
            part.index.add(np.array([e.key for e in entries], dtype=np.uint64), vectors)
            for entry in entries:
                entry.vector = None
        elif len(part.rows) > SCAN:
            self._build(part)
        for entry in entries:
            self.budget.charge(
                ("semantic", entry.key),
                self._size(part, entry),
                self._evictor(partition, entry.key),
            )
        while len(part.rows) > self.max_entries:
            self._drop(partition, next(iter(part.rows)))

    def _evictor(self, partition: str, key: int) -> Callable[[], None]:
        return lambda: self._drop(partition, key, charged=False)

    def _size(self, part: _Partition, entry: _Entry) -> int:
        # One copy of the vector (f32 here or f16 in the index) and, as if indexed, its links.
        held = part.dimensions * 4 + HNSW_BYTES + len(entry.value) + len(entry.context)
        return OVERHEAD + held

    @staticmethod
    def _vectors(part: _Partition, entries: list[_Entry]) -> Vector:
        """The entries' vectors, one row each, from wherever they are held."""
        if part.index is None:
            return np.stack([e.vector for e in entries if e.vector is not None])
        keys = np.array([e.key for e in entries], dtype=np.uint64)
        held = cast("tuple[Vector, ...]", part.index.get(keys))  # one row per key, all live
        return np.stack(held).astype(np.float32)

    def _build(self, part: _Partition) -> None:
        entries = list(part.rows.values())
        vectors = self._vectors(part, entries)  # from the old index when compacting
        # Half precision: half the memory and insert time of f32 (random 384-d vectors:
        # 0.39 ms of CPU an insert instead of 0.69, same recall), similarity within ~1e-3.
        part.index = Index(ndim=part.dimensions, metric="cos", dtype="f16", connectivity=16)
        part.index.add(np.array([e.key for e in entries], dtype=np.uint64), vectors)
        for entry in entries:
            entry.vector = None
        part.removed = 0

    def _drop(self, partition: str, key: int, charged: bool = True) -> None:
        part = self._partitions.get(partition)
        entry = part.rows.pop(key, None) if part is not None else None
        if part is None or entry is None:
            return
        if charged:
            self.budget.release(("semantic", key))
        ids = part.contexts[entry.context]
        del ids[key]
        if not ids:
            del part.contexts[entry.context]
        if not part.rows:
            del self._partitions[partition]  # its index's memory goes with it
            return
        if part.index is not None:
            part.index.remove(key)
            part.removed += 1
            if part.removed > max(len(part.rows), SCAN):
                self._build(part)  # usearch keeps removed slots: compact

    def __len__(self) -> int:
        return sum(len(p.rows) for p in self._partitions.values())

    def partitions(self) -> int:
        """How many partitions hold entries."""
        return len(self._partitions)
