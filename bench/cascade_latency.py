"""What the cascade costs in latency for a streaming client.

Stand-ins in child processes behave like hosted models: the small tier
answers in 0.15 s to first token plus 20 chunks x 10 ms, the large in 0.40 s
plus 20 x 25 ms; a whole (not streamed) answer takes as long as its stream.
One sidecar (child process) serves three routes: ``direct`` (the large tier
only), ``kept`` (cascade small -> large, small confident) and ``escalated``
(the same, small unsure). The client streams, one request at a time, and
records time to first content byte and time to ``[DONE]``.

    python bench/cascade_latency.py [--requests 30]
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import tempfile
import time
from pathlib import Path
from typing import Any

import aiohttp
import orjson
import yaml
from harness import free_port, start, tokenomy

SMALL = ("--latency", "0.15", "--chunk-interval", "0.01", "--chunks", "20", "--words", "60")
LARGE = ("--latency", "0.40", "--chunk-interval", "0.025", "--chunks", "20", "--words", "60")


def tier(name: str, port: int, price: dict[str, str]) -> dict[str, Any]:
    url = f"http://127.0.0.1:{port}/v1"
    return {"name": name, "backends": [{"name": name, "model": name, "url": url, "price": price}]}


def resources(folder: Path, sure: int, unsure: int, large: int) -> Path:
    small_price, large_price = (
        {"input": "0.15", "output": "0.60"},
        {"input": "2.50", "output": "10"},
    )
    routes = {
        "direct": [tier("large", large, large_price)],
        "kept": [tier("small", sure, small_price), tier("large", large, large_price)],
        "escalated": [tier("small", unsure, small_price), tier("large", large, large_price)],
    }
    docs: list[dict[str, Any]] = [
        {
            "apiVersion": "tokenomy.dev/v1alpha1",
            "kind": "ModelRoute",
            "metadata": {"name": name, "namespace": "bench"},
            "spec": {"model": name, "tiers": tiers},
        }
        for name, tiers in routes.items()
    ]
    docs.append(
        {
            "apiVersion": "tokenomy.dev/v1alpha1",
            "kind": "CostPolicy",
            "metadata": {"name": "bench", "namespace": "bench"},
            "spec": {
                "selector": {},
                "routes": list(routes),
                "cache": {"exact": {"enabled": False}},
                "cascade": {
                    "enabled": True,
                    "confidence": {"method": "logprobs", "threshold": 0.7},
                },
            },
        }
    )
    path = folder / "bench.yaml"
    path.write_text(yaml.safe_dump_all(docs))
    return path


async def stream_once(session: aiohttp.ClientSession, url: str, model: str) -> tuple[float, float]:
    body = {"model": model, "stream": True, "messages": [{"role": "user", "content": "Explain."}]}
    started = time.perf_counter()
    first = 0.0
    async with session.post(url, data=orjson.dumps(body)) as response:
        assert response.status == 200, await response.text()
        async for line in response.content:
            text = line.startswith(b"data: ") and b'"content":"' in line
            if not first and text and b'"content":""' not in line:
                first = time.perf_counter() - started
    return first, time.perf_counter() - started


async def measure(url: str, requests: int) -> None:
    async with aiohttp.ClientSession(headers={"Content-Type": "application/json"}) as session:
        print("| route | first byte p50 | complete p50 |")
        print("|---|---|---|")
        for model in ("direct", "kept", "escalated"):
            await stream_once(session, url, model)  # warm up
            runs = [await stream_once(session, url, model) for _ in range(requests)]
            first = statistics.median(r[0] for r in runs) * 1000
            done = statistics.median(r[1] for r in runs) * 1000
            print(f"| {model} | {first:.0f} ms | {done:.0f} ms |")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--requests", type=int, default=30)
    args = parser.parse_args()
    ports = [free_port() for _ in range(4)]
    procs = [
        start(
            "sure",
            tokenomy("standin", "--port", str(ports[0]), "--logprob", "-0.01", *SMALL),
            ports[0],
        ),
        start(
            "unsure",
            tokenomy("standin", "--port", str(ports[1]), "--logprob", "-2", *SMALL),
            ports[1],
        ),
        start("large", tokenomy("standin", "--port", str(ports[2]), *LARGE), ports[2]),
    ]
    try:
        with tempfile.TemporaryDirectory() as folder:
            config = resources(Path(folder), *ports[:3])
            metrics = free_port()
            procs.append(
                start(
                    "sidecar",
                    tokenomy("sidecar", "--config", str(config), "--listen", f"127.0.0.1:{ports[3]}",
                             "--metrics", f"127.0.0.1:{metrics}"),
                    ports[3],
                )
            )  # fmt: skip
            asyncio.run(measure(f"http://127.0.0.1:{ports[3]}/v1/chat/completions", args.requests))
    finally:
        for proc in procs:
            proc.stop()


if __name__ == "__main__":
    main()
