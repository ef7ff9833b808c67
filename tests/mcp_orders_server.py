"""A real MCP server (the official SDK, streamable HTTP) for the tool proxy's tests.

``python mcp_orders_server.py PORT json|sse CALLS_FILE``: every tool call
appends the tool's name to CALLS_FILE, so a test counts what reached the
server (and what the sidecar answered from its cache).
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

from mcp.server.mcpserver import MCPServer
from mcp_types import ToolAnnotations

port, mode, calls_file = int(sys.argv[1]), sys.argv[2], Path(sys.argv[3])
server = MCPServer("orders")


def called(name: str) -> int:
    with calls_file.open("a") as out:
        out.write(name + "\n")
    return len(calls_file.read_text().split())


@server.tool(annotations=ToolAnnotations(readOnlyHint=True))
def lookup_order(order_id: str) -> dict[str, Any]:
    """Look up an order: its status, items and the warehouse's internal notes."""
    called("lookup_order")
    return {
        "id": order_id,
        "status": "shipped",
        "items": [
            {"sku": f"SKU-{i}", "name": f"item {i}", "description": "a long description " * 20}
            for i in range(3)
        ],
        "warehouse": {"notes": "internal routing notes " * 40, "bin": "A-17"},
    }


@server.tool(annotations=ToolAnnotations(idempotentHint=True))
def set_status(order_id: str, status: str) -> str:
    """Set an order's status (setting it twice changes nothing more)."""
    called("set_status")
    return f"{order_id} is {status}"


@server.tool()
def create_ticket(title: str) -> str:
    """Open a support ticket (a new one on every call)."""
    return f"ticket {called('create_ticket')}: {title}"


@server.tool(annotations=ToolAnnotations(readOnlyHint=True))
def stock_level(sku: str) -> str:
    """How many of a SKU are in stock; fails while the stock service is down."""
    called("stock_level")
    raise ValueError("the stock service is down")


@server.tool(annotations=ToolAnnotations(readOnlyHint=True))
def audit_log(order_id: str) -> str:
    """Who touched an order (not allowed by the tests' policy)."""
    called("audit_log")
    return "audit"


server.run("streamable-http", host="127.0.0.1", port=port, json_response=mode == "json")
