"""Writing an answer to the client: JSON, a replayed SSE stream, or a relayed live one.

Whatever stage answered, the client gets what it asked for: a stored or
judged completion is replayed as SSE to a streaming client; a live upstream
stream is relayed event by event, metered when its usage arrives (the cost
goes out as an SSE comment before ``[DONE]``) and assembled for the cache
once complete. Latency histograms are observed here, the one place that
knows when the first and last bytes go out.
"""

from __future__ import annotations

import logging

import aiohttp
import orjson
from aiohttp import web

from tokenomy_api.clock import Clock
from tokenomy_sidecar.metrics import Metrics
from tokenomy_sidecar.pipeline import Answer, Exchange
from tokenomy_sidecar.sse import DONE, assemble, event_data, replay, split_events
from tokenomy_sidecar.stages.metering import Usage, usd

log = logging.getLogger(__name__)

SSE_HEADERS = {"Content-Type": "text/event-stream", "Cache-Control": "no-cache"}


class Writer:
    """Writes answers and observes how long they took."""

    def __init__(self, metrics: Metrics, clock: Clock) -> None:
        self.metrics = metrics
        self.clock = clock

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
        """Relay a stream event by event; meter it, and assemble it if it may be stored."""
        reply = answer.reply
        assert reply is not None
        assert reply.stream is not None
        assert answer.settle is not None
        upstream = reply.stream
        response = web.StreamResponse(headers={**x.headers, **SSE_HEADERS})
        keep: list[bytes] | None = [] if x.cache.decision.store else None
        usage = Usage()
        complete = False
        buffer = bytearray()
        try:
            await response.prepare(request)
            self._first_byte(x, answer)
            async for data in upstream.content.iter_any():
                buffer.extend(data)
                out = []
                for event in split_events(buffer):
                    if event.startswith(DONE):
                        complete = True
                        paid = answer.settle(usage)
                        # SSE comments are ignored by clients; this one tells a
                        # person reading the stream what the answer cost.
                        out.append(f": x-tokenomy-cost-usd {usd(paid)}\n\n".encode())
                        out.append(event + b"\n\n")
                        continue
                    forward = True
                    if b'"usage":{' in event or b'"usage": {' in event:
                        data_obj = event_data(event)
                        if data_obj is not None:
                            usage = Usage.from_openai(data_obj.get("usage"))
                            forward = bool(data_obj.get("choices")) or x.chat.client_wants_usage
                    if forward:
                        out.append(event + b"\n\n")
                    if keep is not None:
                        keep.append(event)
                if out:
                    await response.write(b"".join(out))
        except (aiohttp.ClientError, TimeoutError, ConnectionResetError):
            log.warning("stream from %s was cut", reply.candidate.backend.name)
        finally:
            upstream.release()
        if not complete:
            self.metrics.upstream_errors.labels(
                *x.labels, x.routing.tier.name, reply.candidate.backend.name, "stream_cut"
            ).inc()
            answer.settle(usage)
            # Tell the client the answer is incomplete rather than end it quietly.
            if request.transport is not None:
                request.transport.abort()
            return response
        await response.write_eof()
        if keep is not None:
            answer.completion = assemble(keep)
        self._done(x, answer)
        return response

    def _first_byte(self, x: Exchange, answer: Answer) -> None:
        elapsed = self.clock.monotonic() - x.started
        self.metrics.first_byte.labels(*x.labels, answer.source).observe(elapsed)

    def _done(self, x: Exchange, answer: Answer) -> None:
        elapsed = self.clock.monotonic() - x.started
        self.metrics.duration.labels(*x.labels, answer.source).observe(elapsed)
