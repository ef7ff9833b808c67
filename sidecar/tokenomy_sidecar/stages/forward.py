"""Stage 6: the answering call — the chosen tier answers, streamed if the client asked.

The last stage of every pipeline, so it always answers: a whole reply is
metered and settled here; an open stream is handed to the writer with a
``settle`` callback, called once the stream's usage is known.
"""

from __future__ import annotations

from decimal import Decimal

from tokenomy_sidecar.pipeline import Answer, Exchange, Quiet
from tokenomy_sidecar.stages.metering import Meter, Usage, usd
from tokenomy_sidecar.stages.upstream import Caller, Reply, completion_of


class Forward(Quiet):
    """Sends the request to the tier the routing record names."""

    name = "forward"
    optional = False

    def __init__(self, caller: Caller, meter: Meter, path: str = "/chat/completions") -> None:
        self.caller = caller
        self.meter = meter
        self.path = path

    async def request(self, x: Exchange) -> Answer:
        """Call the tier; the reply, whatever its status, is the answer."""
        body = x.chat.body
        stream = x.chat.stream
        if stream:
            # Ask for usage so the stream can be metered; the extra chunk is
            # removed again if the client did not ask for it.
            body["stream_options"] = {**(body.get("stream_options") or {}), "include_usage": True}
        reply = await self.caller.send(x, x.routing.tier, body, stream, self.path)
        x.answered_by(reply)
        if reply.stream is not None:
            return Answer(
                x.source,
                content_type="text/event-stream",
                reply=reply,
                settle=lambda usage: self._settle(x, reply, usage),
            )
        completion = completion_of(reply)
        usage = Usage.from_openai(completion.get("usage")) if completion is not None else Usage()
        x.headers["x-tokenomy-cost-usd"] = usd(self._settle(x, reply, usage))
        return Answer(
            x.source,
            status=reply.status,
            body=reply.body,
            content_type=reply.content_type or "application/json",
            completion=completion,
            reply=reply,
        )

    def _settle(self, x: Exchange, reply: Reply, usage: Usage) -> Decimal:
        self.meter.call(x, reply, usage)
        self.meter.settle(x, reply, usage, x.source)
        return x.spend.spent
