"""The HTTP tool proxy: ``/tools/<name>/<path>`` reaches ``<url>/<path>`` of a tool API.

A successful ``GET`` (200) is kept for the tool's ``ttl`` inside the cache
partition (keyed by path, query and the headers that vary an answer) unless
the tool says ``no-store`` or ``private``; JSON answers are trimmed to the
tool's ``fields`` before they reach the agent (and the cache). Other methods
pass through and are never cached; neither are errors. A tool that does not
answer within its ``timeout`` is a 504, one that cannot be reached a 502, an
answer larger than the sidecar's body limit a 502 too.
"""

from __future__ import annotations

import aiohttp
import orjson
from aiohttp import web

from tokenomy_api.compiled import CompiledToolUpstream
from tokenomy_sidecar.errors import error_response
from tokenomy_sidecar.runtime import Runtime
from tokenomy_sidecar.tools.calls import ToolCall, ToolProxy, cache_partition
from tokenomy_sidecar.tools.forwarding import (
    TooLargeError,
    client_headers,
    read_limited,
    upstream_headers,
)
from tokenomy_sidecar.tools.results import body_tokens, http_key, path_tree, trim

CACHE_HEADER = "x-tokenomy-cache"
NOT_STORED = ("no-store", "private")


def _is_json(content_type: str) -> bool:
    kind = content_type.split(";", maxsplit=1)[0].strip().lower()
    return kind == "application/json" or kind.endswith("+json")


class HttpTools(ToolProxy):
    """The ``/tools/{name}/{path}`` handler; one per sidecar."""

    async def handle(self, request: web.Request) -> web.StreamResponse:
        """Any method on ``/tools/{name}/{path}``."""
        runtime = self.holder.current
        tools = runtime.config.tools if runtime is not None else None
        name = request.match_info["tool"]
        tool = next((u for u in tools.upstreams if u.name == name), None) if tools else None
        if runtime is None or tool is None:
            return self.unknown("tool", name, [u.name for u in tools.upstreams] if tools else [])
        body = await self.body(request)
        if isinstance(body, web.Response):
            return body
        path = request.match_info.get("path", "")
        path_qs = f"/{path}" + (f"?{request.query_string}" if request.query_string else "")
        cacheable = request.method == "GET" and tool.ttl_seconds > 0
        partition = cache_partition(runtime, request.headers) if cacheable else None
        key = http_key(partition, tool.name, path_qs, request.headers) if partition else ""
        if partition:
            stored = await self.meter.lookup(runtime, partition, key)
            if stored is not None:
                content_type, answer = stored.split(b"\n", 1)
                tokens = body_tokens(answer)
                self.meter.count(
                    runtime, ToolCall(tool.name, "hit", tool.price_per_call, tokens, tokens),
                    request.headers,
                )  # fmt: skip
                return web.Response(
                    body=answer,
                    headers={"Content-Type": content_type.decode(), CACHE_HEADER: "hit"},
                )
        return await self._call(request, runtime, tool, body, path_qs, partition, key)

    async def _call(
        self,
        request: web.Request,
        runtime: Runtime,
        tool: CompiledToolUpstream,
        body: bytes,
        path_qs: str,
        partition: str | None,
        key: str,
    ) -> web.StreamResponse:
        """Call the tool; trim a JSON answer, keep a successful GET."""
        failed = ToolCall(tool.name, "error", tool.price_per_call)
        try:
            async with self.session.request(
                request.method,
                tool.url + path_qs,
                headers=upstream_headers(request.headers),
                data=body or None,
                timeout=aiohttp.ClientTimeout(total=tool.timeout_seconds),
            ) as response:
                answer = await read_limited(response, self.max_body_bytes)
                status, headers = response.status, client_headers(response.headers)
        except TimeoutError:
            self.meter.count(runtime, failed, request.headers)
            return error_response(
                504, f"tool `{tool.name}` did not answer within {tool.timeout_seconds:g} s "
                "(spec.tools.upstreams[].timeout)", "server_error", code="tool_timeout",
            )  # fmt: skip
        except TooLargeError:
            self.meter.count(runtime, failed, request.headers)
            return error_response(
                502, f"tool `{tool.name}` answered more than {self.max_body_bytes} bytes",
                "server_error", code="tool_error",
            )  # fmt: skip
        except aiohttp.ClientError as error:
            self.meter.count(runtime, failed, request.headers)
            return error_response(
                502, f"tool `{tool.name}` unreachable: {error}", "server_error", code="tool_error"
            )
        content_type = headers.get("Content-Type", "")
        before = after = body_tokens(answer)
        if (
            tool.fields
            and request.method == "GET"
            and 200 <= status < 300
            and _is_json(content_type)
        ):
            try:
                answer = orjson.dumps(trim(orjson.loads(answer), path_tree(tool.fields)))
                after = body_tokens(answer)
            except orjson.JSONDecodeError:
                pass  # not JSON after all: sent as it came
        control = headers.get("Cache-Control", "").lower()
        keep = partition is not None and status == 200 and not any(d in control for d in NOT_STORED)
        if keep and partition is not None:
            stored = content_type.encode() + b"\n" + answer
            await self.meter.keep(runtime, partition, key, stored, tool.ttl_seconds)
        result = "error" if status >= 400 else "miss" if keep else "bypass"
        call = ToolCall(tool.name, result, tool.price_per_call, before, after)
        self.meter.count(runtime, call, request.headers)
        headers[CACHE_HEADER] = "miss" if keep else "bypass"
        return web.Response(status=status, body=answer, headers=headers)
