"""The demo's tool server: a bank's CRM as an MCP server (the official SDK, streamable HTTP).

``python -m tokenomy_demo.crm --port P``. ``lookup_customer`` is read-only
(its annotations say so) and answers a full customer record, most of which
an answer to a support question never needs; ``open_ticket`` has a side
effect on every call. Both take about as long as a CRM's API would (20 ms).
"""

from __future__ import annotations

import argparse
import asyncio
import itertools
import random
from typing import Any

from mcp.server.mcpserver import MCPServer
from mcp_types import ToolAnnotations

LATENCY = [0.02]
"""Seconds a call takes (``--latency``)."""
PLANS = ("standard", "plus", "premium", "metal")

server = MCPServer("crm")
opened = itertools.count(1)


def customer(customer_id: str) -> dict[str, Any]:
    """A customer's record, the same for the same id."""
    rng = random.Random(customer_id)
    return {
        "id": customer_id,
        "name": f"Customer {customer_id}",
        "plan": rng.choice(PLANS),
        "cards": [
            {
                "last4": f"{rng.randrange(10_000):04d}",
                "status": rng.choice(("active", "active", "frozen", "expired")),
                "issued": f"202{rng.randrange(6)}-0{rng.randrange(1, 10)}-1{rng.randrange(10)}",
                "limits": {"atm": 500, "online": 5_000, "contactless": 100},
            }
            for _ in range(rng.randrange(1, 4))
        ],
        "openTickets": rng.randrange(3),
        "transactions": [
            {
                "id": f"tx-{customer_id}-{i}",
                "amount": round(rng.uniform(-400, 900), 2),
                "merchant": rng.choice(("grocer", "airline", "cafe", "atm", "transfer")),
                "booked": f"2026-11-{rng.randrange(1, 29):02d}",
            }
            for i in range(25)
        ],
        "kyc": {"verified": True, "documents": ["passport", "utility bill"], "score": 0.97},
        "notes": "Internal notes from previous contacts. " * 30,
    }


@server.tool(annotations=ToolAnnotations(readOnlyHint=True))
async def lookup_customer(customer_id: str) -> dict[str, Any]:
    """The customer's record: plan, cards, open tickets, recent transactions, notes."""
    await asyncio.sleep(LATENCY[0])
    return customer(customer_id)


@server.tool()
async def open_ticket(customer_id: str, subject: str) -> str:
    """Open a support ticket for the customer (a new ticket on every call)."""
    await asyncio.sleep(LATENCY[0])
    return f"ticket T-{next(opened)} opened for {customer_id}: {subject}"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--latency", type=float, default=LATENCY[0], help="seconds a call takes")
    args = parser.parse_args()
    LATENCY[0] = args.latency
    server.run("streamable-http", host="127.0.0.1", port=args.port, json_response=True)


if __name__ == "__main__":
    main()
