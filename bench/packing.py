"""Request packing on a classification workload: input tokens and calls, packed and not.

A stand-in model (``--latency 0.05``) and a sidecar run as processes; the
client sends Banking77 support questions with one shared 1,000-token
classification prompt, 32 in flight, once with ``spec.batching`` off and
once on (``maxBatchSize`` 16, ``maxWait`` 20ms). Stand-in only: what
packing does to a real model's answers is not measured here.

    python bench/packing.py [--requests 640]
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import sys
import tempfile
import time
from pathlib import Path

import aiohttp
import orjson
from harness import bench_resources, free_port, start, tokenomy

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "demo"))

SYSTEM = "Classify the customer's message into one of the bank's 77 support intents. " * 77


def questions(n: int) -> list[str]:
    from tokenomy_demo.workload import load, workload  # noqa: PLC0415

    picked = [q.text for q in workload(load(), n * 2, seed=1) if q.kind == "support"]
    return picked[:n]


async def replay(url: str, texts: list[str]) -> tuple[list[float], int]:
    gate = asyncio.Semaphore(32)
    latencies: list[float] = []
    lost = 0
    async with aiohttp.ClientSession() as http:

        async def one(text: str) -> None:
            nonlocal lost
            body = {"model": "chat", "messages": [{"role": "system", "content": SYSTEM},
                                                  {"role": "user", "content": text}]}  # fmt: skip
            async with gate:
                t0 = time.perf_counter()
                async with http.post(url, data=orjson.dumps(body)) as response:
                    answer = await response.json()
                latencies.append(time.perf_counter() - t0)
            content = answer.get("choices", [{}])[0].get("message", {}).get("content", "")
            lost += not content.endswith(text)

        await asyncio.gather(*(one(t) for t in texts))
    return latencies, lost


def metric(page: str, name: str, **labels: str) -> float:
    total = 0.0
    for line in page.splitlines():
        if line.startswith(name + "{") and all(f'{k}="{v}"' in line for k, v in labels.items()):
            total += float(line.rsplit(" ", 1)[1])
    return total


def run(texts: list[str], packing: bool) -> str:
    folder = Path(tempfile.mkdtemp())
    upstream_port, port, metrics_port = free_port(), free_port(), free_port()
    upstream = start(
        "upstream", tokenomy("standin", "--port", str(upstream_port), "--latency", "0.05"),
        upstream_port,
    )  # fmt: skip
    policy: dict[str, object] = {"cache": {"exact": {"enabled": False}}}
    if packing:
        policy["batching"] = {"enabled": True, "maxBatchSize": 16, "maxWait": "20ms"}
    bench_resources(folder, upstream_port, policy)
    sidecar = start(
        "sidecar",
        tokenomy("sidecar", "--config", str(folder), "--listen", f"127.0.0.1:{port}",
                 "--metrics", f"127.0.0.1:{metrics_port}", "--log-level", "WARNING"),
        port,
    )  # fmt: skip
    try:
        latencies, lost = asyncio.run(replay(f"http://127.0.0.1:{port}/v1/chat/completions", texts))

        async def page() -> str:
            url = f"http://127.0.0.1:{metrics_port}/metrics"
            async with aiohttp.ClientSession() as http, http.get(url) as response:
                return await response.text()

        text = asyncio.run(page())
    finally:
        sidecar.stop()
        upstream.stop()
    tokens = metric(text, "tokenomy_tokens_total", direction="input")
    cost = metric(text, "tokenomy_cost_usd_total")
    packed = metric(text, "tokenomy_packing_items_total", result="packed")
    resent = metric(text, "tokenomy_packing_items_total", result="resent")
    saved = metric(text, "tokenomy_packing_input_tokens_saved_total")
    per_item = f"{saved / packed:,.0f}" if packed else "—"
    return (
        f"| {'on' if packing else 'off'} | {len(texts):,} | {packed:,.0f} | {resent:,.0f} | "
        f"{lost} | {tokens:,.0f} | {per_item} | {cost:.4f} | "
        f"{statistics.median(latencies) * 1000:.0f} |"
    )


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--requests", type=int, default=640)
    args = parser.parse_args()
    texts = questions(args.requests)
    print(
        "| packing | requests | packed | resent | lost | input tokens billed | saved per packed item | USD | p50 ms |"
    )
    print("|---|---|---|---|---|---|---|---|---|")
    for packing in (False, True):
        print(run(texts, packing), flush=True)


if __name__ == "__main__":
    main()
