"""Where the semantic cache gets vectors: a local model, or an embeddings API."""

from __future__ import annotations

import asyncio
import threading
from typing import ClassVar, Protocol

import aiohttp
import numpy as np
import numpy.typing as npt
import orjson

from tokenomy_sidecar.local_embedder import MiniLM
from tokenomy_sidecar.stages.metering import Usage

Vectors = npt.NDArray[np.float32]


class Embedder(Protocol):
    """Turns texts into unit vectors."""

    async def embed(self, texts: list[str]) -> tuple[Vectors, Usage]:
        """One unit-length row per text, and the tokens the call was billed for."""
        ...


class LocalEmbedder:
    """all-MiniLM-L6-v2 in this process; the model (90 MB) loads once per process."""

    _model: ClassVar[MiniLM | None] = None
    _lock: ClassVar[threading.Lock] = threading.Lock()

    def _load(self) -> MiniLM:
        with LocalEmbedder._lock:
            if LocalEmbedder._model is None:
                LocalEmbedder._model = MiniLM()
            return LocalEmbedder._model

    def _embed(self, texts: list[str]) -> Vectors:
        return self._load().embed(texts)

    async def embed(self, texts: list[str]) -> tuple[Vectors, Usage]:
        """Embed in a worker thread: numpy releases the GIL, the event loop keeps serving."""
        return await asyncio.to_thread(self._embed, texts), Usage()

    async def warm(self) -> None:
        """Load the model now rather than on the first request."""
        await asyncio.to_thread(self._load)


class RemoteEmbedder:
    """An OpenAI-compatible ``/v1/embeddings`` API."""

    def __init__(
        self, session: aiohttp.ClientSession, url: str, model: str, key: str | None, timeout: float
    ) -> None:
        self.session = session
        self.url = url.rstrip("/") + "/embeddings"
        self.model = model
        self.headers = {"Content-Type": "application/json"}
        if key:
            self.headers["Authorization"] = f"Bearer {key}"
        self.timeout = timeout

    async def embed(self, texts: list[str]) -> tuple[Vectors, Usage]:
        """Call the API; raises on any failure (the caller treats it as a cache miss)."""
        payload = orjson.dumps({"model": self.model, "input": texts})
        async with asyncio.timeout(self.timeout):
            async with self.session.post(self.url, data=payload, headers=self.headers) as response:
                response.raise_for_status()
                body = orjson.loads(await response.read())
        rows = sorted(body["data"], key=lambda d: d["index"])
        vectors = np.array([row["embedding"] for row in rows], dtype=np.float32)
        norms = np.linalg.norm(vectors, axis=1, keepdims=True)
        return vectors / np.maximum(norms, 1e-12), Usage.from_openai(body.get("usage"))
