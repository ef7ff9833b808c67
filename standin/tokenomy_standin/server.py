"""The stand-in model server (aiohttp)."""

from __future__ import annotations

import asyncio
import hashlib
import itertools
import math
import time
from collections import deque
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import orjson
from aiohttp import web

from tokenomy_standin.batches import Batches

Fault = Literal["500", "429", "drop", "mid-stream-drop", "mid-stream-stall", "slow"]
FAULTS: tuple[str, ...] = ("500", "429", "drop", "mid-stream-drop", "mid-stream-stall", "slow")

EMBEDDING_DIMENSIONS = 256


@dataclass(frozen=True)
class Scripted:
    """A scripted answer to one question."""

    replies: tuple[str, ...]
    """The answer; with ``n`` > 1 samples, sample ``i`` is ``replies[i % len(replies)]``."""
    logprob: float = -0.05
    """Log-probability of every token of it."""


def load_script(path: Path) -> dict[str, Scripted]:
    """Scripted answers from JSON: ``{question: {"replies": [str, ...], "logprob": float}}``."""
    data = orjson.loads(path.read_bytes())
    return {
        question: Scripted(tuple(item["replies"]), float(item.get("logprob", -0.05)))
        for question, item in data.items()
    }


@dataclass
class StandinSettings:
    """How a stand-in behaves; tests change it between requests."""

    name: str = "standin"
    """Shown in answers and the response's ``model`` unless the request names one."""
    latency: float = 0.0
    """Seconds before the response's first byte."""
    chunk_interval: float = 0.0
    """Seconds between streamed chunks; a whole (not streamed) answer takes ``chunks`` of them."""
    chunks: int = 8
    """Content chunks in a streamed answer (the answer's words are spread over them)."""
    reply: str | None = None
    """Fixed answer text; by default the answer names the server and echoes the question."""
    logprob: float = -0.05
    """Log-probability reported for every answer token when ``logprobs`` is asked for."""
    script: dict[str, Scripted] = field(default_factory=dict)
    """Answers by question (the last message's text), overriding ``reply`` and ``logprob``."""
    slow_seconds: float = 5.0
    """Extra latency of a ``slow`` fault."""
    faults: deque[str] = field(default_factory=deque)
    """Faults applied to the next requests, one each, in order."""
    requests: list[dict[str, Any]] = field(default_factory=list)
    """Bodies received, for tests that check what the proxy sent."""
    headers: list[dict[str, str]] = field(default_factory=list)
    """Headers received, in the same order."""
    batch_seconds: float = 0.05
    """How long a batch takes to run once created."""
    batch_requests: list[dict[str, Any]] = field(default_factory=list)
    """Bodies of batch lines answered (``requests`` holds live ones)."""
    drop_packed: int = 0
    """Leave out the last this many items of a packed request's answer (a model that lost
    some)."""
    prompt_cache: bool = False
    """Report the longest start of a request's messages this server saw before as cached
    input tokens, as a provider's prompt cache or an inference server's prefix cache
    would (one cache per stand-in: a conversation that moves finds it cold)."""


def count_tokens(text: str) -> int:
    """A stand-in tokenizer: whitespace-separated words, at least one."""
    return max(1, len(text.split()))


def _message_text(message: Any) -> str:
    content = message.get("content") if isinstance(message, dict) else None
    if isinstance(content, str):
        return content
    if isinstance(content, list):
        return " ".join(
            p["text"] for p in content if isinstance(p, dict) and isinstance(p.get("text"), str)
        )
    return ""


PACKED = "Requests:\n"
"""Where a packed request's JSON list of numbered items begins (after its instruction)."""


def _packed(settings: StandinSettings, question: str) -> str | None:
    """A packed request's answer, following its instruction: JSON with one answer per item."""
    if PACKED not in question or '"answers"' not in question:
        return None
    try:
        items = orjson.loads(question.split(PACKED, 1)[1])
    except orjson.JSONDecodeError:
        return None
    answers = [
        {"id": item["id"], "answer": _one(settings, str(item["request"]))}
        for item in items
        if isinstance(item, dict) and "id" in item
    ]
    if settings.drop_packed:
        answers = answers[: -settings.drop_packed]
    return orjson.dumps({"answers": answers}).decode()


def _one(settings: StandinSettings, question: str) -> str:
    scripted = settings.script.get(question)
    if scripted is not None:
        return scripted.replies[0]
    if settings.reply is not None:
        return settings.reply
    return f"{settings.name} answers: {question}".strip()


def _answers(settings: StandinSettings, body: dict[str, Any], n: int) -> tuple[list[str], float]:
    """The ``n`` sampled answers to a request, and their tokens' log-probability."""
    messages = body.get("messages") or []
    question = _message_text(messages[-1]) if messages else ""
    packed = _packed(settings, question)
    if packed is not None:
        return [packed] * n, settings.logprob
    scripted = settings.script.get(question)
    if scripted is not None:
        replies = scripted.replies
        return [replies[i % len(replies)] for i in range(n)], scripted.logprob
    if settings.reply is not None:
        return [settings.reply] * n, settings.logprob
    return [f"{settings.name} answers: {question}".strip()] * n, settings.logprob


def _usage(prompt: int, completion: int, cached: int = 0) -> dict[str, Any]:
    return {
        "prompt_tokens": prompt,
        "completion_tokens": completion,
        "total_tokens": prompt + completion,
        "prompt_tokens_details": {"cached_tokens": cached},
    }


PREFIXES_MAX = 100_000
"""Message prefixes a stand-in's prompt cache holds; then it starts over."""


def _limited(text: str, body: dict[str, Any]) -> tuple[list[str], str]:
    """An answer's words within the request's token limit, and why it ended."""
    words = text.split()
    limit = body.get("max_completion_tokens") or body.get("max_tokens")
    if isinstance(limit, int) and len(words) > limit:
        return words[:limit], "length"
    return words, "stop"


def _logprobs(words: list[str], value: float) -> dict[str, Any]:
    return {"content": [{"token": w, "logprob": value, "top_logprobs": []} for w in words]}


class Standin:
    """One stand-in server; ``app`` is the aiohttp application."""

    def __init__(self, settings: StandinSettings | None = None) -> None:
        self.settings = settings or StandinSettings()
        self._ids = itertools.count(1)
        self._prefixes: set[bytes] = set()
        self.app = web.Application(client_max_size=64 * 1024 * 1024)
        self.app.router.add_post("/v1/chat/completions", self.chat)
        self.app.router.add_post("/v1/embeddings", self.embeddings)
        self.app.router.add_get("/v1/models", self.models)
        self.app.router.add_post("/_standin/faults", self.add_faults)
        self.app.router.add_post("/_standin/reset", self.reset)
        self.batches = Batches(self._batch_line, self.settings.batch_seconds)
        self.batches.routes(self.app)

    def _cached(self, messages: list[Any]) -> int:
        """Tokens of the longest start of ``messages`` seen before (never the whole: the
        last message is new); every start of them is remembered."""
        digest = hashlib.sha256()
        cached = 0
        hit = True
        for i, message in enumerate(messages):
            digest.update(orjson.dumps(message, option=orjson.OPT_SORT_KEYS))
            start = digest.copy().digest()
            if hit and i < len(messages) - 1 and start in self._prefixes:
                cached += count_tokens(_message_text(message))
            else:
                hit = False
            if len(self._prefixes) >= PREFIXES_MAX:
                self._prefixes.clear()
            self._prefixes.add(start)
        return cached

    def completion(self, body: dict[str, Any]) -> dict[str, Any]:
        """The whole (not streamed) answer to a chat request body."""
        asked = body.get("n")
        n = asked if isinstance(asked, int) else 1
        texts, logprob = _answers(self.settings, body, max(1, n))
        prompt = sum(count_tokens(_message_text(m)) for m in body.get("messages") or [])
        cached = self._cached(body.get("messages") or []) if self.settings.prompt_cache else 0
        choices: list[dict[str, Any]] = []
        for index, text in enumerate(texts):
            words, finish = _limited(text, body)
            choices.append(
                {
                    "index": index,
                    "message": {"role": "assistant", "content": " ".join(words) if finish ==
                                "length" else text, "refusal": None},
                    "finish_reason": finish,
                    "logprobs": _logprobs(words, logprob) if body.get("logprobs") else None,
                }
            )  # fmt: skip
        output = sum(count_tokens(c["message"]["content"]) for c in choices)
        return {
            "id": f"chatcmpl-{self.settings.name}-{next(self._ids)}",
            "object": "chat.completion",
            "created": int(time.time()),
            "model": body.get("model") or self.settings.name,
            "choices": choices,
            "usage": _usage(prompt, output, cached),
        }

    async def _batch_line(self, body: dict[str, Any]) -> tuple[int, dict[str, Any]]:
        """One line of a batch: answered like a request, recorded apart."""
        self.settings.batch_requests.append(body)
        if not isinstance(body.get("messages"), list):
            return 400, {
                "error": {"message": "messages is required", "type": "invalid_request_error"}
            }
        return 200, self.completion(body)

    def _record(self, request: web.Request, body: dict[str, Any]) -> None:
        self.settings.requests.append(body)
        self.settings.headers.append({k.lower(): v for k, v in request.headers.items()})

    async def _fault(self, request: web.Request) -> web.StreamResponse | str | None:
        """Apply the next fault; returns a response to send, or the fault kept for later."""
        if not self.settings.faults:
            return None
        fault = self.settings.faults.popleft()
        if fault == "500":
            return _error(500, "server_error", "injected fault: internal error")
        if fault == "429":
            return _error(429, "rate_limit_exceeded", "injected fault: rate limited")
        if fault == "drop":
            transport = request.transport
            if transport is not None:
                transport.abort()
            raise asyncio.CancelledError  # the handler must not write on the dead socket
        if fault == "slow":
            await asyncio.sleep(self.settings.slow_seconds)
            return None
        return fault  # mid-stream-drop and -stall: applied while streaming

    async def chat(self, request: web.Request) -> web.StreamResponse:
        """``POST /v1/chat/completions``, streamed or not."""
        try:
            body = orjson.loads(await request.read())
        except orjson.JSONDecodeError:
            return _error(400, "invalid_request_error", "body is not JSON")
        self._record(request, body)
        pending = await self._fault(request)
        if isinstance(pending, web.StreamResponse):
            return pending
        if self.settings.latency:
            await asyncio.sleep(self.settings.latency)
        if body.get("stream"):
            texts, logprob = _answers(self.settings, body, 1)
            words, finish = _limited(texts[0], body)
            prompt = sum(count_tokens(_message_text(m)) for m in body.get("messages") or [])
            cached = self._cached(body.get("messages") or []) if self.settings.prompt_cache else 0
            return await self._stream(
                request, body, f"chatcmpl-{self.settings.name}-{next(self._ids)}",
                body.get("model") or self.settings.name, words, finish, (prompt, cached),
                pending, logprob,
            )  # fmt: skip
        if self.settings.chunk_interval:
            # A whole answer takes as long to generate as its stream would.
            await asyncio.sleep(self.settings.chunk_interval * self.settings.chunks)
        payload = self.completion(body)
        return web.Response(body=orjson.dumps(payload), content_type="application/json")

    async def _stream(
        self,
        request: web.Request,
        body: dict[str, Any],
        completion_id: str,
        model: str,
        words: list[str],
        finish: str,
        prompt: tuple[int, int],
        pending: str | None,
        logprob: float,
    ) -> web.StreamResponse:
        response = web.StreamResponse(headers={"Content-Type": "text/event-stream"})
        await response.prepare(request)
        include_usage = bool((body.get("stream_options") or {}).get("include_usage"))
        base = {
            "id": completion_id,
            "object": "chat.completion.chunk",
            "created": int(time.time()),
            "model": model,
        }
        extra = {"usage": None} if include_usage else {}

        def chunk(delta: dict[str, Any], reason: str | None, **more: Any) -> bytes:
            choice = {"index": 0, "delta": delta, "finish_reason": reason, **more}
            return b"data: " + orjson.dumps({**base, "choices": [choice], **extra}) + b"\n\n"

        await response.write(chunk({"role": "assistant", "content": ""}, None))
        per_chunk = max(1, math.ceil(len(words) / max(1, self.settings.chunks)))
        pieces = [words[i : i + per_chunk] for i in range(0, len(words), per_chunk)]
        for n, piece in enumerate(pieces):
            if pending == "mid-stream-drop" and n >= len(pieces) // 2:
                if request.transport is not None:
                    request.transport.abort()
                return response
            if pending == "mid-stream-stall" and n == len(pieces) // 2:
                await asyncio.sleep(self.settings.slow_seconds)  # silent, connection open
            if self.settings.chunk_interval:
                await asyncio.sleep(self.settings.chunk_interval)
            text = (" " if n else "") + " ".join(piece)
            more = {"logprobs": _logprobs(piece, logprob)} if body.get("logprobs") else {}
            await response.write(chunk({"content": text}, None, **more))
        await response.write(chunk({}, finish))
        if include_usage:
            final = {**base, "choices": [], "usage": _usage(prompt[0], len(words), prompt[1])}
            await response.write(b"data: " + orjson.dumps(final) + b"\n\n")
        await response.write(b"data: [DONE]\n\n")
        await response.write_eof()
        return response

    async def embeddings(self, request: web.Request) -> web.StreamResponse:
        """``POST /v1/embeddings``: bag-of-words vectors, so shared words mean similarity."""
        body = orjson.loads(await request.read())
        self._record(request, body)
        pending = await self._fault(request)
        if isinstance(pending, web.StreamResponse):
            return pending
        inputs = body.get("input")
        if isinstance(inputs, str) or (inputs and all(isinstance(t, int) for t in inputs)):
            inputs = [inputs]  # one text, or one array of token ids
        # Token ids are embedded as the words of their numbers.
        texts = [t if isinstance(t, str) else " ".join(map(str, t)) for t in inputs or []]
        data = [
            {"object": "embedding", "index": i, "embedding": bag_of_words_vector(t)}
            for i, t in enumerate(texts)
        ]
        tokens = sum(count_tokens(t) for t in texts)
        payload = {
            "object": "list",
            "data": data,
            "model": body.get("model") or self.settings.name,
            "usage": {"prompt_tokens": tokens, "total_tokens": tokens},
        }
        return web.Response(body=orjson.dumps(payload), content_type="application/json")

    async def models(self, request: web.Request) -> web.StreamResponse:
        """``GET /v1/models``."""
        data = [{"id": self.settings.name, "object": "model", "created": 0, "owned_by": "standin"}]
        return web.json_response({"object": "list", "data": data})

    async def add_faults(self, request: web.Request) -> web.StreamResponse:
        """``POST /_standin/faults {"faults": [...]}``: queue faults for the next requests."""
        faults = (await request.json()).get("faults", [])
        unknown = [f for f in faults if f not in FAULTS]
        if unknown:
            return _error(400, "invalid_request_error", f"unknown faults {unknown}")
        self.settings.faults.extend(faults)
        return web.json_response({"queued": len(self.settings.faults)})

    async def reset(self, request: web.Request) -> web.StreamResponse:
        """``POST /_standin/reset``: forget faults and recorded requests."""
        self.settings.faults.clear()
        self.settings.requests.clear()
        self.settings.headers.clear()
        return web.json_response({})


def bag_of_words_vector(text: str) -> list[float]:
    """A unit vector with one hashed dimension per word."""
    vector = [0.0] * EMBEDDING_DIMENSIONS
    for word in text.lower().split():
        digest = hashlib.blake2b(word.strip(".,?!").encode(), digest_size=4).digest()
        vector[int.from_bytes(digest, "little") % EMBEDDING_DIMENSIONS] += 1.0
    norm = math.sqrt(sum(v * v for v in vector)) or 1.0
    return [v / norm for v in vector]


def _error(status: int, kind: str, message: str) -> web.Response:
    body = {"error": {"message": message, "type": kind, "param": None, "code": kind}}
    return web.Response(status=status, body=orjson.dumps(body), content_type="application/json")


async def start(
    settings: StandinSettings, host: str = "127.0.0.1", port: int = 0
) -> tuple[web.AppRunner, str]:
    """Start a stand-in; returns its runner and base URL (``http://host:port/v1``)."""
    runner = web.AppRunner(Standin(settings).app, access_log=None)
    await runner.setup()
    site = web.TCPSite(runner, host, port)
    await site.start()
    server = site._server
    assert server is not None
    sockets = getattr(server, "sockets", None) or []
    bound = sockets[0].getsockname()[1]
    return runner, f"http://{host}:{bound}/v1"
