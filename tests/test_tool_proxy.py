"""The tool proxy: a real MCP server (official SDK) and an HTTP tool API behind the sidecar.

The agent's side is the official ``mcp`` client, over both protocol eras the
SDK speaks (the per-request 2026-07-28 envelope, and the initialize
handshake with sessions), against a server answering JSON and one answering
server-sent events.
"""

from __future__ import annotations

import asyncio
import subprocess
import sys
import time
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import aiohttp
import pytest
import pytest_asyncio
from aiohttp import web
from mcp import Client
from mcp.shared.exceptions import MCPError

from tokenomy_sidecar.tools.results import (
    cacheable_tool,
    call_key,
    http_key,
    path_tree,
    result_tokens,
    sse_events,
    trim,
    trim_tool_result,
)

from helpers import policy_doc, route_doc
from support import LiveSidecar, SidecarFactory, free_port

SERVER = Path(__file__).parent / "mcp_orders_server.py"


class OrdersServer:
    """The MCP server process and the file its tool calls are written to."""

    def __init__(self, url: str, calls: Path) -> None:
        self.url = url
        self.calls_file = calls

    def calls(self, tool: str) -> int:
        """How many calls of ``tool`` reached the server."""
        if not self.calls_file.exists():
            return 0
        return self.calls_file.read_text().split().count(tool)


@pytest.fixture(params=["json", "sse"], scope="module")
def orders(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[OrdersServer]:
    port = free_port()
    calls = tmp_path_factory.mktemp("mcp") / "calls.txt"
    process = subprocess.Popen(
        [sys.executable, str(SERVER), str(port), request.param, str(calls)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        try:
            with socket_to(port):
                break
        except OSError:
            time.sleep(0.1)
    else:
        process.kill()
        raise RuntimeError("the MCP server did not start")
    try:
        yield OrdersServer(f"http://127.0.0.1:{port}/mcp", calls)
    finally:
        process.terminate()
        process.wait(timeout=10)


def socket_to(port: int) -> Any:
    import socket  # noqa: PLC0415

    return socket.create_connection(("127.0.0.1", port), timeout=1)


def tools_policy(mcp_url: str = "", http_url: str = "", **extra: Any) -> dict[str, Any]:
    servers = (
        [
            {
                "name": "orders",
                "url": mcp_url,
                "ttl": "5m",
                "allow": ["lookup_order", "set_status", "create_ticket", "stock_level"],
                "results": [
                    {"tool": "lookup_order", "fields": ["id", "status", "items.sku", "items.name"]}
                ],
                "pricePerCall": "0.01",
            }
        ]
        if mcp_url
        else []
    )
    upstreams = (
        [{"name": "weather", "url": http_url, "ttl": "5m", "timeout": "1s",
          "fields": ["city", "daily.day", "daily.high"], "pricePerCall": "0.002"}]
        if http_url
        else []
    )  # fmt: skip
    return policy_doc(
        namespace="default",
        tools={"enabled": True, "mcpServers": servers, "upstreams": upstreams},
        **extra,
    )


async def tool_sidecar(sidecar: SidecarFactory, **kwargs: str) -> LiveSidecar:
    return await sidecar(
        route_doc(namespace="default"), tools_policy(**kwargs), enforce_local_budget=True
    )


@pytest.mark.parametrize("mode", ["auto", "legacy"])
async def test_mcp_results_of_read_only_tools_are_cached_and_trimmed(
    orders: OrdersServer, sidecar: SidecarFactory, mode: str
) -> None:
    running = await tool_sidecar(sidecar, mcp_url=orders.url)
    url = running.sidecar.api_url + "/mcp/orders"
    order = f"o-{mode}-{time.monotonic_ns()}"
    before = orders.calls("lookup_order")
    async with Client(url, mode=mode) as client:  # type: ignore[arg-type]
        listed = [t.name for t in (await client.list_tools()).tools]
        # audit_log is not in the policy's allow list: left out, and its calls refused.
        assert sorted(listed) == ["create_ticket", "lookup_order", "set_status", "stock_level"]
        first = await client.call_tool("lookup_order", {"order_id": order})
        again = await client.call_tool("lookup_order", {"order_id": order})
        assert orders.calls("lookup_order") == before + 1  # the second came from the cache
        assert first.structured_content == again.structured_content
        content = first.structured_content
        assert content is not None
        assert content["id"] == order
        assert content["status"] == "shipped"
        assert content["items"][0] == {"sku": "SKU-0", "name": "item 0"}
        assert "warehouse" not in content  # trimmed to the policy's fields
        other = await client.call_tool("lookup_order", {"order_id": order + "-x"})
        assert other.structured_content is not None
        assert orders.calls("lookup_order") == before + 2  # other arguments: called
    sent = running.metric(
        "tokenomy_tool_result_tokens_total", tool="orders/lookup_order", stage="sent"
    )
    upstream = running.metric(
        "tokenomy_tool_result_tokens_total", tool="orders/lookup_order", stage="upstream"
    )
    assert 0 < sent < upstream / 3
    hits = running.metric("tokenomy_tool_calls_total", tool="orders/lookup_order", result="hit")
    assert hits == 1
    assert running.metric("tokenomy_savings_usd_total", lever="tool_cache") == pytest.approx(0.01)
    assert running.metric(
        "tokenomy_tool_cost_usd_total", tool="orders/lookup_order"
    ) == pytest.approx(0.02)


@pytest.mark.parametrize("mode", ["auto", "legacy"])
async def test_mcp_calls_with_side_effects_errors_and_refusals_are_never_cached(
    orders: OrdersServer, sidecar: SidecarFactory, mode: str
) -> None:
    running = await tool_sidecar(sidecar, mcp_url=orders.url)
    url = running.sidecar.api_url + "/mcp/orders"
    async with Client(url, mode=mode) as client:  # type: ignore[arg-type]
        await client.list_tools()
        tickets = orders.calls("create_ticket")
        one = await client.call_tool("create_ticket", {"title": "broken"})
        two = await client.call_tool("create_ticket", {"title": "broken"})
        assert orders.calls("create_ticket") == tickets + 2  # no annotations: every call made
        assert one.content != two.content
        stock = orders.calls("stock_level")
        for _ in range(2):
            failed = await client.call_tool("stock_level", {"sku": "S"})
            assert failed.is_error
        assert orders.calls("stock_level") == stock + 2  # an error is never kept
        statuses = orders.calls("set_status")
        for _ in range(2):
            await client.call_tool("set_status", {"order_id": "o", "status": "closed"})
        assert orders.calls("set_status") == statuses + 1  # idempotent: once is enough
        audits = orders.calls("audit_log")
        with pytest.raises(MCPError, match="not allowed on MCP server `orders`"):
            await client.call_tool("audit_log", {"order_id": "o"})
        assert orders.calls("audit_log") == audits
    assert running.metric("tokenomy_tool_calls_total", result="refused") == 1
    assert (
        running.metric("tokenomy_tool_calls_total", tool="orders/stock_level", result="error") == 2
    )
    assert (
        running.metric("tokenomy_tool_calls_total", tool="orders/create_ticket", result="bypass")
        == 2
    )


async def test_mcp_cache_keeps_tenants_apart(orders: OrdersServer, sidecar: SidecarFactory) -> None:
    running = await sidecar(
        route_doc(namespace="default"),
        tools_policy(mcp_url=orders.url, cache={"scope": {"type": "header", "header": "x-tenant"}}),
    )
    url = running.sidecar.api_url + "/mcp/orders"
    before = orders.calls("lookup_order")
    order = f"tenant-{time.monotonic_ns()}"
    for tenant in ("a", "b", "a", ""):
        headers = {"x-tenant": tenant} if tenant else {}
        async with aiohttp.ClientSession(headers=headers) as http:
            await call_raw(http, url, "tools/list", {})
            await call_raw(
                http, url, "tools/call", {"name": "lookup_order", "arguments": {"order_id": order}}
            )
    # a, b, then a again from a's cache; no tenant header: never cached, called.
    assert orders.calls("lookup_order") == before + 3


async def call_raw(http: aiohttp.ClientSession, url: str, method: str, params: Any) -> Any:
    """One JSON-RPC request as a 2026-07-28 client sends it (no session needed)."""
    body = {
        "jsonrpc": "2.0",
        "id": 1,
        "method": method,
        "params": {**params, "_meta": {
            "io.modelcontextprotocol/protocolVersion": "2026-07-28",
            "io.modelcontextprotocol/clientInfo": {"name": "test", "version": "1"},
            "io.modelcontextprotocol/clientCapabilities": {},
        }},
    }  # fmt: skip
    headers = {
        "Accept": "application/json, text/event-stream",
        "MCP-Protocol-Version": "2026-07-28",
        "Mcp-Method": method,
    }
    if method == "tools/call":
        headers["Mcp-Name"] = params["name"]
    async with http.post(url, json=body, headers=headers) as response:
        text = await response.text()
        assert response.status == 200, text
        return text


async def test_an_unknown_server_and_a_sidecar_without_tools_answer_404(
    sidecar: SidecarFactory,
) -> None:
    running = await sidecar(route_doc(namespace="default"), policy_doc(namespace="default"))
    async with aiohttp.ClientSession() as http:
        async with http.post(running.sidecar.api_url + "/mcp/orders", json={}) as response:
            assert response.status == 404
            assert "no MCP server `orders`" in await response.text()
        async with http.get(running.sidecar.api_url + "/tools/weather/today") as response:
            assert response.status == 404


# --- HTTP tools --------------------------------------------------------------------


class WeatherApi:
    """An HTTP tool API: counts its calls, can be slow, fails on demand."""

    def __init__(self) -> None:
        self.calls: list[str] = []
        self.delay = 0.0
        self.runner: web.AppRunner | None = None
        self.url = ""

    async def forecast(self, request: web.Request) -> web.Response:
        self.calls.append(request.method + " " + request.path_qs)
        await asyncio.sleep(self.delay)
        city = request.match_info["city"]
        if city == "atlantis":
            return web.json_response({"error": "no such city"}, status=404)
        if city == "private":
            return web.json_response({"city": city}, headers={"Cache-Control": "private"})
        days = [{"day": d, "high": 20 + d, "low": 10, "hourly": list(range(24))} for d in range(7)]
        return web.json_response({"city": city, "daily": days, "source": "x" * 2000})

    async def report(self, request: web.Request) -> web.Response:
        self.calls.append(request.method + " " + request.path_qs)
        return web.json_response({"received": await request.json()}, status=201)

    async def start(self) -> None:
        app = web.Application()
        app.router.add_get("/forecast/{city}", self.forecast)
        app.router.add_post("/reports", self.report)
        self.runner = web.AppRunner(app)
        await self.runner.setup()
        port = free_port()
        await web.TCPSite(self.runner, "127.0.0.1", port).start()
        self.url = f"http://127.0.0.1:{port}"


@pytest_asyncio.fixture
async def weather() -> AsyncIterator[WeatherApi]:
    api = WeatherApi()
    await api.start()
    yield api
    assert api.runner is not None
    await api.runner.cleanup()


async def test_http_tool_gets_are_cached_and_trimmed_other_methods_pass(
    weather: WeatherApi, sidecar: SidecarFactory
) -> None:
    running = await tool_sidecar(sidecar, http_url=weather.url)
    base = running.sidecar.api_url + "/tools/weather"
    async with aiohttp.ClientSession() as http:
        for _ in range(2):
            async with http.get(base + "/forecast/paris?units=metric") as response:
                assert response.status == 200
                body = await response.json()
        assert response.headers["x-tokenomy-cache"] == "hit"
        assert body == {"city": "paris", "daily": [{"day": d, "high": 20 + d} for d in range(7)]}
        assert weather.calls == ["GET /forecast/paris?units=metric"]
        async with http.get(base + "/forecast/paris?units=imperial") as response:
            assert response.headers["x-tokenomy-cache"] == "miss"  # another query: called
        for _ in range(2):
            async with http.get(base + "/forecast/atlantis") as response:
                assert response.status == 404  # errors pass through, never kept
            async with http.get(base + "/forecast/private") as response:
                assert response.headers["x-tokenomy-cache"] == "bypass"  # the API said private
            async with http.post(base + "/reports", json={"n": 1}) as response:
                assert response.status == 201
                assert await response.json() == {"received": {"n": 1}}
        assert weather.calls.count("GET /forecast/atlantis") == 2
        assert weather.calls.count("GET /forecast/private") == 2
        assert weather.calls.count("POST /reports") == 2
    assert running.metric("tokenomy_tool_calls_total", tool="weather", result="hit") == 1
    sent = running.metric("tokenomy_tool_result_tokens_total", tool="weather", stage="sent")
    upstream = running.metric("tokenomy_tool_result_tokens_total", tool="weather", stage="upstream")
    assert sent < upstream / 4


async def test_http_tool_timeouts_and_limits_answer_clearly(
    weather: WeatherApi, sidecar: SidecarFactory
) -> None:
    running = await sidecar(
        route_doc(namespace="default"), tools_policy(http_url=weather.url), max_body_bytes=1000
    )
    base = running.sidecar.api_url + "/tools/weather"
    async with aiohttp.ClientSession() as http:
        async with http.get(base + "/forecast/paris") as response:
            assert response.status == 502  # the answer is larger than 1,000 bytes
            assert "more than 1000 bytes" in await response.text()
        async with http.post(base + "/reports", data=b"x" * 2000) as response:
            assert response.status == 413
        weather.delay = 2
        async with http.get(base + "/forecast/rome") as response:
            assert response.status == 504
            assert "within 1 s" in await response.text()
    assert running.metric("tokenomy_tool_calls_total", tool="weather", result="error") == 2


# --- the pure decisions ------------------------------------------------------------


@pytest.mark.parametrize(
    ("paths", "value", "kept"),
    [
        ([], {"a": 1}, {"a": 1}),  # nothing listed: all kept
        (["a"], {"a": {"x": 1}, "b": 2}, {"a": {"x": 1}}),
        (["a.x"], {"a": {"x": 1, "y": 2}}, {"a": {"x": 1}}),
        (["a.x", "a"], {"a": {"x": 1, "y": 2}}, {"a": {"x": 1, "y": 2}}),  # the whole a wins
        (["items.sku"], {"items": [{"sku": 1, "d": 2}, {"d": 3}]}, {"items": [{"sku": 1}, {}]}),
        (["a.b"], {"a": "text"}, {"a": "text"}),  # deeper than the value: the value
        (["missing"], {"a": 1}, {}),  # never invented
        (["a"], [{"a": 1, "b": 2}, 5], [{"a": 1}, 5]),  # a list at the top
    ],
)
def test_trim_keeps_the_listed_paths(paths: list[str], value: Any, kept: Any) -> None:
    assert trim(value, path_tree(paths)) == kept


def test_a_tool_result_is_trimmed_in_structured_content_and_json_text_only() -> None:
    result = {
        "content": [
            {"type": "text", "text": '{"id": 1, "notes": "long"}'},
            {"type": "text", "text": "plain words stay"},
            {"type": "image", "data": "..."},
        ],
        "structuredContent": {"id": 1, "notes": "long"},
        "isError": False,
    }
    trimmed = trim_tool_result(result, path_tree(["id"]))
    assert trimmed["structuredContent"] == {"id": 1}
    assert trimmed["content"][0]["text"] == '{"id":1}'
    assert trimmed["content"][1:] == result["content"][1:]
    assert result_tokens(trimmed) < result_tokens(result)


@pytest.mark.parametrize(
    ("annotations", "cacheable"),
    [
        (None, False),  # the spec's defaults: may have side effects
        ({}, False),
        ({"readOnlyHint": True}, True),
        ({"idempotentHint": True}, True),
        ({"readOnlyHint": False, "destructiveHint": True}, False),
        ({"readOnlyHint": "true"}, False),  # only a real true counts
    ],
)
def test_only_tools_declared_read_only_or_idempotent_are_cacheable(
    annotations: Any, cacheable: bool
) -> None:
    assert cacheable_tool(annotations) is cacheable


def test_keys_ignore_argument_order_and_keep_partitions_and_credentials_apart() -> None:
    assert call_key("p", "s", "t", {"a": 1, "b": 2}) == call_key("p", "s", "t", {"b": 2, "a": 1})
    assert call_key("p", "s", "t", {"a": 1}) != call_key("q", "s", "t", {"a": 1})
    assert call_key("p", "s", "t", {"a": 1}) != call_key("p", "s", "u", {"a": 1})
    assert http_key("p", "w", "/x", {"authorization": "a"}) != http_key(
        "p", "w", "/x", {"authorization": "b"}
    )
    assert http_key("p", "w", "/x", {"user-agent": "a"}) == http_key("p", "w", "/x", {})


def test_events_keep_their_fields_when_their_data_is_rewritten() -> None:
    body = b'event: message\r\nid: 7\r\ndata: {"a":\r\ndata: 1}\r\n\r\n: ping\n\n'
    first, ping = sse_events(body)
    assert first.data == '{"a":\n1}'
    assert first.with_data('{"b":2}').encode() == b'event: message\nid: 7\ndata: {"b":2}\n\n'
    assert ping.encode() == b":ping\n\n"  # a comment, as a comment
