"""Relaying an HTTP exchange to a tool server and back: headers, limits, timeouts."""

from __future__ import annotations

from collections.abc import Mapping

import aiohttp
from aiohttp import web
from multidict import CIMultiDict

HOP_BY_HOP = frozenset(
    {
        "connection", "keep-alive", "proxy-authenticate", "proxy-authorization", "te",
        "trailer", "transfer-encoding", "upgrade", "host", "content-length",
        "accept-encoding", "content-encoding",
    }
)  # fmt: skip
"""Headers that belong to one hop (RFC 9110 7.6.1), and the encodings: the sidecar asks
tools for identity bodies, since it reads the ones it caches or trims."""


def upstream_headers(headers: Mapping[str, str]) -> CIMultiDict[str]:
    """A client's request headers as the tool server gets them."""
    out = CIMultiDict((k, v) for k, v in headers.items() if k.lower() not in HOP_BY_HOP)
    out["Accept-Encoding"] = "identity"
    return out


def client_headers(headers: Mapping[str, str]) -> CIMultiDict[str]:
    """A tool server's response headers as the client gets them."""
    return CIMultiDict((k, v) for k, v in headers.items() if k.lower() not in HOP_BY_HOP)


class TooLargeError(Exception):
    """A tool's answer is larger than the sidecar accepts."""


async def read_limited(response: aiohttp.ClientResponse, limit: int) -> bytes:
    """The whole body of a tool's answer, refusing one larger than ``limit`` bytes."""
    if response.content_length is not None and response.content_length > limit:
        raise TooLargeError
    body = bytearray()
    async for chunk in response.content.iter_any():
        body += chunk
        if len(body) > limit:
            raise TooLargeError
    return bytes(body)


async def relay(
    request: web.Request, response: aiohttp.ClientResponse, extra: Mapping[str, str]
) -> web.StreamResponse:
    """Stream a tool server's answer to the client as it comes (SSE listening streams too)."""
    out = web.StreamResponse(status=response.status, headers=client_headers(response.headers))
    out.headers.update(extra)
    await out.prepare(request)
    try:
        async for chunk in response.content.iter_any():
            await out.write(chunk)
        await out.write_eof()
    except (ConnectionResetError, aiohttp.ClientError):
        pass  # either side left; the other is closed with it
    return out
