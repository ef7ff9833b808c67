"""Embeddings the stages share: the question's vector, and each domain's example vectors.

The semantic cache and domain routing both compare the request's last user
message by meaning. Its vector is computed once per request and kept in the
request's cache record; example vectors once per config version and route.
Embedder calls are metered like any model call.
"""

from __future__ import annotations

import asyncio

import aiohttp

from tokenomy_sidecar.embedders import Embedder, LocalEmbedder, RemoteEmbedder, Vectors
from tokenomy_sidecar.pipeline import Exchange
from tokenomy_sidecar.stages.metering import Meter
from tokenomy_sidecar.stages.semantic_cache import question


class SharedVectors:
    """Embedders per route, and the vectors computed with them."""

    def __init__(self, session: aiohttp.ClientSession, meter: Meter) -> None:
        self.session = session
        self.meter = meter
        self._embedders: dict[tuple[str, str], Embedder] = {}
        self._examples: dict[tuple[str, str], dict[str, Vectors]] = {}
        self._examples_lock = asyncio.Lock()

    def embedder(self, x: Exchange) -> Embedder:
        """The route's embedder (the compiler requires one wherever vectors are needed)."""
        spec = x.route.embedding
        assert spec is not None
        key = (x.route.name, spec.model_dump_json())
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
