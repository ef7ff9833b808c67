"""Writing an answer to the client: JSON, a replayed SSE stream, or a relayed live one.

Whatever stage answered, the client gets what it asked for: a stored or
judged completion is replayed as SSE to a streaming client; a live upstream
stream is relayed event by event, metered when its usage arrives (the cost
goes out as an SSE comment before ``[DONE]``) and assembled for the cache
once complete. Latency histograms are observed here, the one place that
knows when the first and last bytes go out.
"""

from __future__ import annotations

import asyncio
import logging
from dataclasses import dataclass, field

import aiohttp
import orjson
from aiohttp import web

from tokenomy_api.clock import Clock
from tokenomy_sidecar.metrics import Metrics
from tokenomy_sidecar.pipeline import Answer, Exchange
from tokenomy_sidecar.sse import DONE, assemble, event_data, replay, split_events
from tokenomy_sidecar.stages.metering import Usage, estimate_stream, usd

log = logging.getLogger(__name__)

SSE_HEADERS = {"Content-Type": "text/event-stream", "Cache-Control": "no-cache"}


class Writer:
    """Writes answers and observes how long they took."""

    def __init__(self, metrics: Metrics, clock: Clock, stream_idle_seconds: float = 300.0) -> None:
        self.metrics = metrics
        self.clock = clock
        self.stream_idle_seconds = stream_idle_seconds
        """Longest silence of a backend's stream after its first byte before it counts as cut."""

    async def write(self, request: web.Request, x: Exchange, answer: Answer) -> web.StreamResponse:
        """The answer as the client asked for it."""
        if answer.reply is not None and answer.reply.stream is not None:
            return await self._relay(request, x, answer)
        if x.chat.stream and answer.completion is not None:
            response = web.StreamResponse(headers={**x.headers, **SSE_HEADERS})
            await response.prepare(request)
            self._first_byte(x, answer)
            await response.write(b"".join(replay(answer.completion, x.chat.client_wants_usage)))
            await response.write_eof()
        else:
            body = answer.body
            if not body and answer.completion is not None:
                body = orjson.dumps(answer.completion)
            response = web.Response(
                status=answer.status,
                body=body,
                content_type=answer.content_type,
                headers=x.headers,
            )
            self._first_byte(x, answer)
        self._done(x, answer)
        return response

    async def _relay(self, request: web.Request, x: Exchange, answer: Answer) -> web.StreamResponse:
        """Relay a stream event by event; meter it, and assemble it if it may be kept.

        A client that leaves does not end the reading: the provider bills the
        whole answer, so it is read to its usage chunk and metered (and may
        still be cached). A stream the backend cuts before its usage arrived
        is billed as estimated: the prompt and one token per chunk relayed.
        """
        reply = answer.reply
        assert reply is not None
        assert reply.stream is not None
        assert answer.settle is not None
        upstream = reply.stream
        response = web.StreamResponse(headers={**x.headers, **SSE_HEADERS})
        # Assembled where the cache may store it or a shadow comparison will read it.
        seen = _Seen(keep=[] if x.cache.decision.store or x.shadowed else None)
        client_gone = False
        buffer = bytearray()
        try:
            try:
                await response.prepare(request)
            except ConnectionResetError:
                client_gone = True  # left before the first byte; the answer is still billed
                self.metrics.client_disconnects.labels(*x.labels).inc()
            self._first_byte(x, answer)
            while data := await self._next(upstream):
                buffer.extend(data)
                out = [b"".join(self._take(x, answer, seen, e)) for e in split_events(buffer)]
                if not client_gone and any(out):
                    client_gone = not await _write(response, b"".join(out))
                    if client_gone:
                        self.metrics.client_disconnects.labels(*x.labels).inc()
        except (aiohttp.ClientError, TimeoutError, ConnectionResetError):
            log.warning("stream from %s was cut", reply.candidate.backend.name)
        finally:
            upstream.release()
        if not seen.complete:
            self.metrics.upstream_errors.labels(
                *x.labels, x.routing.tier.name, reply.candidate.backend.name, "stream_cut"
            ).inc()
            answer.settle(seen.billed(x))
            # Tell the client the answer is incomplete rather than end it quietly.
            if request.transport is not None:
                request.transport.abort()
            return response
        if not client_gone:
            await _write(response, None)
        if seen.keep is not None:
            answer.completion = assemble(seen.keep)
        self._done(x, answer)
        return response

    async def _next(self, upstream: aiohttp.ClientResponse) -> bytes:
        """The stream's next bytes (empty at its end); TimeoutError after a long silence."""
        async with asyncio.timeout(self.stream_idle_seconds):
            return await upstream.content.readany()

    def _take(self, x: Exchange, answer: Answer, seen: _Seen, event: bytes) -> list[bytes]:
        """What of one upstream event goes to the client; notes usage and chunks."""
        if event.startswith(DONE):
            seen.complete = True
            assert answer.settle is not None
            paid = answer.settle(seen.billed(x))
            # SSE comments are ignored by clients; this one tells a person
            # reading the stream what the answer cost.
            return [f": x-tokenomy-cost-usd {usd(paid)}\n\n".encode(), event + b"\n\n"]
        forward = True
        if b'"usage":{' in event or b'"usage": {' in event:
            data = event_data(event)
            if data is not None:
                seen.usage = Usage.from_openai(data.get("usage"))
                forward = bool(data.get("choices")) or x.chat.client_wants_usage
        elif b'"content":"' in event:
            seen.chunks += 1
        if seen.keep is not None:
            seen.keep.append(event)
        return [event + b"\n\n"] if forward else []

    def _first_byte(self, x: Exchange, answer: Answer) -> None:
        elapsed = self.clock.monotonic() - x.started
        self.metrics.first_byte.labels(*x.labels, answer.source).observe(elapsed)

    def _done(self, x: Exchange, answer: Answer) -> None:
        elapsed = self.clock.monotonic() - x.started
        self.metrics.duration.labels(*x.labels, answer.source).observe(elapsed)


async def _write(response: web.StreamResponse, data: bytes | None) -> bool:
    """Write (``None``: end the stream); False when the client has gone."""
    try:
        if data is None:
            await response.write_eof()
        else:
            await response.write(data)
    except ConnectionResetError:
        return False
    return True


@dataclass
class _Seen:
    """What a relayed stream has shown so far."""

    keep: list[bytes] | None
    """Its events, when the answer may be stored."""
    usage: Usage = field(default_factory=Usage)
    chunks: int = 0
    """Content chunks relayed: the estimate of output tokens if no usage arrives."""
    complete: bool = False

    def billed(self, x: Exchange) -> Usage:
        """The usage the backend reported, else an estimate (noted on the request)."""
        if self.usage.completion:
            return self.usage
        x.spend.estimated = True
        return estimate_stream(x.chat.body, self.chunks)
