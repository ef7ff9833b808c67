"""Embeddings the stages share: the question's vector, each domain's example vectors,
and the vectors of tool definitions.

The semantic cache, domain routing and tool pruning compare the request's
last user message by meaning. Its vector is computed once per request and
kept in the request's cache record; example vectors once per config version
and route; tool definitions once per text (an agent sends the same ones on
every call), never on the request's path. Embedder calls are metered like
any model call.
"""

from __future__ import annotations

import asyncio
import logging
from collections import OrderedDict
from collections.abc import Sequence

import aiohttp
import numpy as np

from tokenomy_sidecar.embedders import Embedder, LocalEmbedder, RemoteEmbedder, Vectors
from tokenomy_sidecar.pipeline import Exchange
from tokenomy_sidecar.stages.metering import Meter
from tokenomy_sidecar.stages.semantic_cache import question

log = logging.getLogger(__name__)

DEFINITIONS_KEPT = 8192
"""Tool definition vectors remembered (1.5 KB each with a 384-dimension model): the
newest used; an agent's few hundred definitions stay."""


class SharedVectors:
    """Embedders per route, and the vectors computed with them."""

    def __init__(self, session: aiohttp.ClientSession, meter: Meter) -> None:
        self.session = session
        self.meter = meter
        self._embedders: dict[tuple[str, str], Embedder] = {}
        self._examples: dict[tuple[str, str], dict[str, Vectors]] = {}
        self._examples_lock = asyncio.Lock()
        self._definitions: OrderedDict[tuple[str, str], Vectors] = OrderedDict()
        self._embedding: set[tuple[str, str]] = set()
        """Definitions being embedded in the background (never twice at once)."""
        self._tasks: set[asyncio.Task[None]] = set()

    @staticmethod
    def _key(x: Exchange) -> tuple[str, str]:
        spec = x.route.embedding
        assert spec is not None  # the compiler requires one wherever vectors are needed
        return (x.route.name, spec.model_dump_json())

    def embedder(self, x: Exchange) -> Embedder:
        """The route's embedder (the compiler requires one wherever vectors are needed)."""
        spec = x.route.embedding
        assert spec is not None
        key = self._key(x)
        embedder = self._embedders.get(key)
        if embedder is None:
            if spec.provider == "local":
                embedder = LocalEmbedder()
            else:
                ref = spec.credentials
                secret = x.runtime.credential_for(ref) if ref is not None else None
                embedder = RemoteEmbedder(
                    self.session,
                    spec.url or "",  # the compiler resolved a Service to its address
                    spec.model,
                    secret,
                    x.route.retry.timeout_seconds,
                )
            self._embedders[key] = embedder
        return embedder

    async def question(self, x: Exchange) -> Vectors | None:
        """The question's vector, computed once per request; None when there is no question."""
        if x.cache.vector is None:
            text = question(x.chat.body)
            if text is None:
                return None
            vectors, usage = await self.embedder(x).embed([text])
            x.cache.vector = vectors[0]
            self.meter.embedding(x, usage)
        vector: Vectors = x.cache.vector
        return vector

    async def examples(self, x: Exchange) -> dict[str, Vectors]:
        """Each domain's example embeddings, computed once per config version and route."""
        key = (x.runtime.config.version, x.route.name)
        cached = self._examples.get(key)
        if cached is not None:
            return cached
        # One request embeds them; requests arriving meanwhile wait for it.
        async with self._examples_lock:
            cached = self._examples.get(key)
            if cached is None:
                cached = {}
                for domain in x.runtime.config.routing.domains:
                    if domain.examples:
                        vectors, _ = await self.embedder(x).embed(domain.examples)
                        cached[domain.name] = vectors
                self._examples[key] = cached
        return cached

    def definitions(self, x: Exchange, texts: Sequence[str]) -> Vectors | None:
        """The vectors of these tool definitions, one row each, if all are known; else
        None, and the unknown ones are embedded in the background for later requests."""
        route = self._key(x)[1]
        keys = [(route, t) for t in texts]
        missing = [k for k in dict.fromkeys(keys) if k not in self._definitions]
        if missing:
            fresh = [k for k in missing if k not in self._embedding]
            if fresh:
                self._embedding.update(fresh)
                task = asyncio.create_task(self._embed_definitions(x, fresh))
                self._tasks.add(task)
                task.add_done_callback(self._tasks.discard)
            return None
        for k in keys:
            self._definitions.move_to_end(k)
        return np.stack([self._definitions[k] for k in keys])

    async def _embed_definitions(self, x: Exchange, keys: list[tuple[str, str]]) -> None:
        try:
            vectors, usage = await self.embedder(x).embed([t for _, t in keys])
            self.meter.embedding(x, usage)
            for key, vector in zip(keys, vectors, strict=True):
                self._definitions[key] = vector
            while len(self._definitions) > DEFINITIONS_KEPT:
                self._definitions.popitem(last=False)
        except Exception:
            log.exception("embedding %d tool definitions failed; pruning waits", len(keys))
        finally:
            self._embedding.difference_update(keys)

    async def close(self) -> None:
        """Let background embedding finish (tests and shutdown)."""
        if self._tasks:
            await asyncio.gather(*self._tasks, return_exceptions=True)
