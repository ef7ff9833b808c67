"""The demo agent's tool calls: the CRM's MCP server, through the sidecar and without it.

Before answering a support question the agent looks its customer up
(``lookup_customer``, read-only: the sidecar may answer it from cache) and
now and then opens a ticket (``open_ticket``: never cached). The client is
the official ``mcp`` SDK. Without Tokenomy every call reaches the CRM and
every result goes whole into the agent's next prompt; with it, repeats come
from the cache and results are trimmed to the fields the policy lists.
"""

from __future__ import annotations

import asyncio
import random
from collections.abc import Sequence
from dataclasses import dataclass
from decimal import Decimal
from typing import Any

from tokenomy_sidecar.tools.results import result_tokens

MILLION = Decimal(1_000_000)
CUSTOMERS = 40
"""Customers the workload's questions come from; the busiest ask most (Zipf-like)."""
TICKET_EVERY = 8
CONCURRENCY = 8


@dataclass(frozen=True)
class ToolCall:
    """One tool call the agent makes."""

    tool: str
    arguments: dict[str, Any]


def tool_calls(questions: int, seed: int) -> list[ToolCall]:
    """A lookup per question, a ticket every :data:`TICKET_EVERY` questions."""
    rng = random.Random(seed)
    weights = [1 / (rank + 1) for rank in range(CUSTOMERS)]
    calls = []
    for i in range(questions):
        customer = f"C{rng.choices(range(CUSTOMERS), weights)[0]:03d}"
        calls.append(ToolCall("lookup_customer", {"customer_id": customer}))
        if i % TICKET_EVERY == TICKET_EVERY - 1:
            calls.append(ToolCall("open_ticket", {"customer_id": customer, "subject": "card"}))
    return calls


def _client(url: str, headers: dict[str, str]) -> Any:
    try:
        import httpx2  # noqa: PLC0415
        from mcp import Client  # noqa: PLC0415
        from mcp.client.streamable_http import streamable_http_client  # noqa: PLC0415
    except ImportError:
        raise RuntimeError("the demo needs the mcp SDK: pip install 'tokenomy[demo]'") from None
    http = httpx2.AsyncClient(headers=headers, timeout=httpx2.Timeout(30, read=300))
    return Client(streamable_http_client(url, http_client=http)), http


async def call_all(url: str, calls: Sequence[ToolCall], headers: dict[str, str]) -> list[int]:
    """Make every call (a few at a time) on one MCP session; each result's tokens."""
    client, http = _client(url, headers)
    gate = asyncio.Semaphore(CONCURRENCY)

    async def one(call: ToolCall) -> int:
        async with gate:
            result = await client.call_tool(call.tool, call.arguments)
        return result_tokens(result.model_dump(by_alias=True, exclude_none=True))

    try:
        async with client:
            await client.list_tools()  # what an agent does first; teaches the sidecar
            return list(await asyncio.gather(*(one(c) for c in calls)))
    finally:
        await http.aclose()


@dataclass(frozen=True)
class ToolsReport:
    """The tool calls' part of the report."""

    calls: int
    hits: int
    """Calls the sidecar answered from its cache."""
    not_cacheable: int
    """Calls of tools whose annotations allow no caching (``open_ticket``)."""
    price: Decimal
    """USD a call costs (the policy's ``pricePerCall``)."""
    tokens_without: int
    """Result tokens the agent's next prompts carry when it calls the CRM directly."""
    tokens_with: int
    """... and through the sidecar, trimmed."""
    input_price: Decimal
    """USD per million input tokens on the reference tier, where result tokens are priced."""

    @property
    def cache_saved(self) -> Decimal:
        """Calls the cache answered, at the tool's price."""
        return self.hits * self.price

    @property
    def trim_saved(self) -> Decimal:
        """Result tokens trimming kept out of the prompts, at the reference input price."""
        return (self.tokens_without - self.tokens_with) * self.input_price / MILLION

    @property
    def without(self) -> Decimal:
        """Spend on the calls and their results without Tokenomy."""
        return self.calls * self.price + self.tokens_without * self.input_price / MILLION

    @property
    def with_tokenomy(self) -> Decimal:
        """... and with it."""
        return self.without - self.cache_saved - self.trim_saved


async def tool_counts(metrics_url: str) -> dict[str, float]:
    """The sidecar's ``tokenomy_tool_calls_total`` by result."""
    return by_label(await scrape(metrics_url), "tokenomy_tool_calls_total", "result")


async def scrape(metrics_url: str) -> str:
    """A Prometheus page."""
    import aiohttp  # noqa: PLC0415

    async with aiohttp.ClientSession() as http, http.get(metrics_url) as response:
        return await response.text()


def by_label(page: str, name: str, label: str) -> dict[str, float]:
    """A metric's samples on ``page`` summed by one label's values (``""`` without one)."""
    from prometheus_client.parser import text_string_to_metric_families  # noqa: PLC0415

    counts: dict[str, float] = {}
    for family in text_string_to_metric_families(page):
        for sample in family.samples:
            if sample.name == name:
                value = sample.labels.get(label, "")
                counts[value] = counts.get(value, 0) + sample.value
    return counts


def crm_server(docs: Sequence[dict[str, Any]]) -> dict[str, Any] | None:
    """The policy's MCP server ``crm``, when its tool proxy is on."""
    for doc in docs:
        tools = doc["spec"].get("tools", {}) if doc["kind"] == "CostPolicy" else {}
        if tools.get("enabled"):
            for server in tools.get("mcpServers", []):
                if server["name"] == "crm":
                    return dict(server)
    return None


def tool_report(
    calls: Sequence[ToolCall],
    direct: Sequence[int],
    through: Sequence[int],
    metrics: dict[str, float],
    price: Decimal,
    input_price: Decimal,
) -> ToolsReport:
    """The report from both runs' result tokens and the sidecar's counts."""
    return ToolsReport(
        calls=len(calls),
        hits=int(metrics.get("hit", 0)),
        not_cacheable=int(metrics.get("bypass", 0)),
        price=price,
        tokens_without=sum(direct),
        tokens_with=sum(through),
        input_price=input_price,
    )
