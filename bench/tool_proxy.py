"""Latency the sidecar's MCP proxy adds: a cached read-only call, and a call passed through.

The demo's CRM (``tokenomy_demo.crm``, the official MCP SDK, answering at
once with ``--latency 0``) and a sidecar fronting it run as processes. One
client sends JSON-RPC ``tools/call`` requests one at a time, each a
self-contained 2026-07-28 request (no session): ``lookup_customer``
(read-only: after the first, answered from the sidecar's cache and trimmed)
and ``open_ticket`` (never cached: every call reaches the CRM), both
straight to the CRM and through the sidecar. A cached answer never reaches
the CRM, so its whole time is what the sidecar adds.

    python bench/tool_proxy.py [--requests 2000]
"""

from __future__ import annotations

import argparse
import asyncio
import sys
import tempfile
from pathlib import Path
from typing import Any

from harness import bench_resources, free_port, load, start, tokenomy

TOOLS = {
    "enabled": True,
    "mcpServers": [
        {
            "name": "crm",
            "url": "",
            "results": [{"tool": "lookup_customer", "fields": ["id", "name", "plan"]}],
        }
    ],
}


def call(tool: str, arguments: dict[str, Any]) -> tuple[dict[str, Any], dict[str, str]]:
    """One tools/call as a 2026-07-28 client sends it, and its headers."""
    meta = {
        "io.modelcontextprotocol/protocolVersion": "2026-07-28",
        "io.modelcontextprotocol/clientInfo": {"name": "bench", "version": "1"},
        "io.modelcontextprotocol/clientCapabilities": {},
    }
    body = {
        "jsonrpc": "2.0",
        "id": 1,
        "method": "tools/call",
        "params": {"name": tool, "arguments": arguments, "_meta": meta},
    }
    headers = {
        "Accept": "application/json, text/event-stream",
        "MCP-Protocol-Version": "2026-07-28",
        "Mcp-Method": "tools/call",
        "Mcp-Name": tool,
    }
    return body, headers


async def learn(url: str) -> None:
    """A tools/list through the sidecar: what tells it lookup_customer is read-only."""
    import aiohttp  # noqa: PLC0415

    body, headers = call("lookup_customer", {})
    body = {**body, "method": "tools/list", "params": {"_meta": body["params"]["_meta"]}}
    headers = {**headers, "Mcp-Method": "tools/list"}
    headers.pop("Mcp-Name")
    async with aiohttp.ClientSession() as http, http.post(url, json=body, headers=headers) as r:
        assert r.status == 200, await r.text()


async def measure(crm: str, sidecar: str, requests: int, pid: int) -> None:
    await learn(sidecar)
    print("| call | path | p50 ms | p99 ms | sidecar CPU-s / 1000 |")
    print("|---|---|---|---|---|")
    rows = [
        ("lookup_customer (read-only)", {"customer_id": "C001"}),
        ("open_ticket (never cached)", {"customer_id": "C001", "subject": "bench"}),
    ]
    p50: dict[tuple[str, str], float] = {}
    for label, arguments in rows:
        body, headers = call(label.split()[0], arguments)
        for path, url in (("straight to the CRM", crm), ("through the sidecar", sidecar)):
            through = url == sidecar
            result = await load(url, body, requests, 1, headers, pid=pid if through else None)
            assert result.errors == 0, f"{label} {path}: {result.errors} errors"
            p50[(label, path)] = result.p50
            cpu = f"{result.cpu / requests * 1000:.2f}" if through else "—"
            name = f"{label}, {'cache hit' if through and 'read-only' in label else 'called'}"
            print(
                f"| {name} | {path} | {result.p50 * 1000:.2f} | {result.p99 * 1000:.2f} | {cpu} |",
                flush=True,
            )
    miss = p50[(rows[1][0], "through the sidecar")] - p50[(rows[1][0], "straight to the CRM")]
    hit = p50[(rows[0][0], "through the sidecar")]
    print(f"\ncached call: {hit * 1000:.2f} ms p50 in all (the CRM is not asked)")
    print(f"passed-through call: {miss * 1000:.2f} ms p50 added")


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--requests", type=int, default=2000)
    args = parser.parse_args()
    folder = Path(tempfile.mkdtemp())
    crm_port, upstream_port, port = free_port(), free_port(), free_port()
    crm_command = [sys.executable, "-m", "tokenomy_demo.crm", "--port", str(crm_port)]
    crm = start("crm", [*crm_command, "--latency", "0"], crm_port)
    crm_url = f"http://127.0.0.1:{crm_port}/mcp"
    TOOLS["mcpServers"][0]["url"] = crm_url  # type: ignore[index]
    bench_resources(folder, upstream_port, {"tools": TOOLS})
    sidecar = start(
        "sidecar",
        tokenomy("sidecar", "--config", str(folder), "--listen", f"127.0.0.1:{port}",
                 "--metrics", f"127.0.0.1:{free_port()}", "--log-level", "WARNING"),
        port,
    )  # fmt: skip
    try:
        asyncio.run(
            measure(crm_url, f"http://127.0.0.1:{port}/mcp/crm", args.requests, sidecar.process.pid)
        )
    finally:
        sidecar.stop()
        crm.stop()


if __name__ == "__main__":
    main()
