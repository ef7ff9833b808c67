"""The MCP proxy: ``/mcp/<server>`` fronts an MCP server over streamable HTTP.

Everything passes through as the client sent it (sessions, notifications,
the server's listening stream, ``DELETE``), with two requests read on the
way: ``tools/list``, whose tools' annotations say which tools may be cached
(and whose list the policy's ``allow`` filters), and ``tools/call``, whose
results are served from cache for read-only or idempotent tools, trimmed to
the policy's fields, metered per tool. A result streamed as server-sent
events is relayed event by event (a server may ask the client something
mid-call, and wait for its answer); only the response event is rewritten.
Errors are never cached.
"""

from __future__ import annotations

import logging
from collections import OrderedDict
from collections.abc import Callable
from typing import Any

import aiohttp
import orjson
from aiohttp import web

from tokenomy_api.compiled import CompiledMcpServer
from tokenomy_sidecar.runtime import Runtime
from tokenomy_sidecar.tools.calls import ToolCall, ToolProxy, cache_partition
from tokenomy_sidecar.tools.forwarding import (
    TooLargeError,
    client_headers,
    read_limited,
    relay,
    upstream_headers,
)
from tokenomy_sidecar.tools.results import (
    cacheable_tool,
    call_key,
    json_message,
    path_tree,
    response_for,
    result_tokens,
    sse_events,
    trim_tool_result,
)

Rewrite = Callable[[dict[str, Any]], dict[str, Any]]
"""What becomes of the JSON-RPC response to the request relayed."""

log = logging.getLogger(__name__)

LEARNED_MAX = 10_000
"""Tools whose annotations are remembered, across servers (the oldest go first)."""
INVALID_PARAMS = -32602
INTERNAL_ERROR = -32603
REQUEST_TIMEOUT = -32001
CACHE_HEADER = "x-tokenomy-cache"


def rpc_error(request_id: Any, code: int, message: str) -> web.Response:
    """A JSON-RPC error answer to one request."""
    body = {"jsonrpc": "2.0", "id": request_id, "error": {"code": code, "message": message}}
    return web.Response(body=orjson.dumps(body), content_type="application/json")


def rpc_result(request_id: Any, result: Any, cache: str) -> web.Response:
    """A JSON-RPC result answered by the sidecar itself."""
    body = {"jsonrpc": "2.0", "id": request_id, "result": result}
    return web.Response(
        body=orjson.dumps(body), content_type="application/json", headers={CACHE_HEADER: cache}
    )


class McpProxy(ToolProxy):
    """The ``/mcp/{server}`` handler; one per sidecar."""

    learned: OrderedDict[tuple[str, str], bool]
    """Whether each (server URL, tool) may be cached, from the server's ``tools/list``."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.learned = OrderedDict()

    async def handle(self, request: web.Request) -> web.StreamResponse:
        """Any method on ``/mcp/{server}``."""
        runtime = self.holder.current
        tools = runtime.config.tools if runtime is not None else None
        name = request.match_info["server"]
        server = next((s for s in tools.mcp_servers if s.name == name), None) if tools else None
        if runtime is None or server is None:
            served = [s.name for s in tools.mcp_servers] if tools else []
            return self.unknown("MCP server", name, served)
        body = await self.body(request)
        if isinstance(body, web.Response):
            return body
        message = json_message(body) if request.method == "POST" and body else None
        if isinstance(message, dict) and "id" in message:
            if message.get("method") == "tools/call":
                return await self._call(request, runtime, server, body, message)
            if message.get("method") == "tools/list":
                return await self._list(request, server, body, message)
        return await self._pass(request, server, body)

    def _timeout(self, server: CompiledMcpServer, listening: bool) -> aiohttp.ClientTimeout:
        # A GET is the server's listening stream: open as long as the session lasts.
        if listening:
            return aiohttp.ClientTimeout(total=None, sock_connect=server.timeout_seconds)
        return aiohttp.ClientTimeout(total=server.timeout_seconds)

    async def _pass(
        self, request: web.Request, server: CompiledMcpServer, body: bytes
    ) -> web.StreamResponse:
        """Relay as is."""
        try:
            async with self.session.request(
                request.method,
                server.url,
                headers=upstream_headers(request.headers),
                data=body or None,
                timeout=self._timeout(server, request.method == "GET"),
            ) as response:
                return await relay(request, response, {})
        except TimeoutError:
            return web.json_response({"error": f"MCP server `{server.name}` timed out"}, status=504)
        except aiohttp.ClientError as error:
            message = f"MCP server `{server.name}` unreachable: {error}"
            return web.json_response({"error": message}, status=502)

    async def _list(
        self, request: web.Request, server: CompiledMcpServer, body: bytes, message: Any
    ) -> web.StreamResponse:
        """``tools/list``: learn which tools may be cached; leave out those not allowed."""

        def rewrite(reply: dict[str, Any]) -> dict[str, Any]:
            result = reply.get("result")
            listed = result.get("tools") if isinstance(result, dict) else None
            if not isinstance(result, dict) or not isinstance(listed, list):
                return reply
            kept = []
            for tool in listed:
                if not isinstance(tool, dict) or not isinstance(tool.get("name"), str):
                    continue
                self._learn(server.url, tool["name"], cacheable_tool(tool.get("annotations")))
                if not server.allow or tool["name"] in server.allow:
                    kept.append(tool)
            return {**reply, "result": {**result, "tools": kept}}

        return await self._exchange(request, server, body, message["id"], rewrite, "bypass")

    def _learn(self, url: str, tool: str, cacheable: bool) -> None:
        self.learned[(url, tool)] = cacheable
        self.learned.move_to_end((url, tool))
        while len(self.learned) > LEARNED_MAX:
            self.learned.popitem(last=False)

    async def _call(
        self,
        request: web.Request,
        runtime: Runtime,
        server: CompiledMcpServer,
        body: bytes,
        message: dict[str, Any],
    ) -> web.StreamResponse:
        """``tools/call``: refuse, serve from cache, or call and trim (and keep)."""
        request_id = message["id"]
        params = message.get("params")
        tool = params.get("name") if isinstance(params, dict) else None
        if not isinstance(tool, str) or not isinstance(params, dict):
            return await self._pass(request, server, body)  # the server says what is wrong
        label = f"{server.name}/{tool}"
        price = server.price_per_call
        if server.allow and tool not in server.allow:
            self.meter.count(runtime, ToolCall(label, "refused"), request.headers)
            policy = runtime.config.policy.key
            return rpc_error(
                request_id,
                INVALID_PARAMS,
                f"tool `{tool}` is not allowed on MCP server `{server.name}` by CostPolicy "
                f"{policy} (spec.tools.mcpServers[].allow)",
            )
        cacheable = server.ttl_seconds > 0 and self.learned.get((server.url, tool), False)
        partition = cache_partition(runtime, request.headers) if cacheable else None
        key = call_key(partition, server.name, tool, params.get("arguments")) if partition else ""
        if partition:
            stored = await self.meter.lookup(runtime, partition, key)
            if stored is not None:
                result = orjson.loads(stored)
                tokens = result_tokens(result)
                call = ToolCall(label, "hit", price, tokens, tokens)
                self.meter.count(runtime, call, request.headers)
                return rpc_result(request_id, result, "hit")
        tree = path_tree(server.results.get(tool, []))
        outcome: dict[str, Any] = {}

        def rewrite(reply: dict[str, Any]) -> dict[str, Any]:
            result = reply.get("result")
            if not isinstance(result, dict) or result.get("isError") is True:
                outcome["error"] = True
                return reply
            trimmed = trim_tool_result(result, tree)
            outcome.update(before=result_tokens(result), after=result_tokens(trimmed))
            outcome["result"] = trimmed
            return {**reply, "result": trimmed}

        cache = "miss" if partition else "bypass"
        response = await self._exchange(request, server, body, request_id, rewrite, cache)
        if "result" in outcome:
            result = "miss" if partition else "bypass"
            call = ToolCall(label, result, price, outcome["before"], outcome["after"])
            if partition:
                kept = orjson.dumps(outcome["result"])
                await self.meter.keep(runtime, partition, key, kept, server.ttl_seconds)
        else:
            call = ToolCall(label, "error", price)
        self.meter.count(runtime, call, request.headers)
        return response

    async def _exchange(
        self,
        request: web.Request,
        server: CompiledMcpServer,
        body: bytes,
        request_id: Any,
        rewrite: Rewrite,
        cache: str,
    ) -> web.StreamResponse:
        """Send one request; answer with its response rewritten (JSON or event by event)."""
        try:
            async with self.session.post(
                server.url,
                headers=upstream_headers(request.headers),
                data=body,
                timeout=self._timeout(server, listening=False),
            ) as response:
                kind = response.headers.get("Content-Type", "").split(";")[0].strip().lower()
                if response.status != 200 or kind not in ("application/json", "text/event-stream"):
                    return await relay(request, response, {})
                if kind == "text/event-stream":
                    return await self._events(request, response, request_id, rewrite, cache)
                reply = orjson.loads(await read_limited(response, self.max_body_bytes))
                if response_for(reply, request_id):
                    reply = rewrite(reply)
                headers = client_headers(response.headers)
                headers[CACHE_HEADER] = cache
                return web.Response(body=orjson.dumps(reply), headers=headers)
        except TimeoutError:
            return rpc_error(
                request_id,
                REQUEST_TIMEOUT,
                f"MCP server `{server.name}` did not answer within {server.timeout_seconds:g} s "
                "(spec.tools.mcpServers[].timeout)",
            )
        except TooLargeError:
            return rpc_error(
                request_id,
                INTERNAL_ERROR,
                f"MCP server `{server.name}` answered more than {self.max_body_bytes} bytes",
            )
        except (aiohttp.ClientError, orjson.JSONDecodeError) as error:
            return rpc_error(
                request_id, INTERNAL_ERROR, f"MCP server `{server.name}` failed: {error}"
            )

    async def _events(
        self,
        request: web.Request,
        response: aiohttp.ClientResponse,
        request_id: Any,
        rewrite: Rewrite,
        cache: str,
    ) -> web.StreamResponse:
        """Relay a stream of events as they come, the response event rewritten."""
        out = web.StreamResponse(status=200, headers=client_headers(response.headers))
        out.headers[CACHE_HEADER] = cache
        await out.prepare(request)
        pending = b""
        try:
            async for chunk in response.content.iter_any():
                pending = (pending + chunk).replace(b"\r\n", b"\n")
                *done, pending = pending.split(b"\n\n")
                for raw in done:
                    await out.write(self._event(raw + b"\n\n", request_id, rewrite))
            if pending.strip():
                await out.write(self._event(pending + b"\n\n", request_id, rewrite))
            await out.write_eof()
        except (TimeoutError, ConnectionResetError, aiohttp.ClientError):
            pass  # a stream cut midway ends here; the client sees it end without a response
        return out

    @staticmethod
    def _event(raw: bytes, request_id: Any, rewrite: Rewrite) -> bytes:
        events = list(sse_events(raw))
        if len(events) != 1:
            return raw
        event = events[0]
        message = json_message(event.data) if event.data else None
        if not isinstance(message, dict) or not response_for(message, request_id):
            return raw
        return event.with_data(orjson.dumps(rewrite(message)).decode()).encode()
