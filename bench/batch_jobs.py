"""What a batch job costs through the sidecar against the same lines sent live, list price.

A stand-in provider with a Batch API at half its list price, a sidecar with
the exact cache on, and N support questions from Banking77's test split,
drawn with repeats the way the demo draws them (popular intents more often,
15 % word-for-word repeats). The job is submitted with the official openai
SDK; the provider's own batch input file says which lines it was sent.

    python bench/batch_jobs.py [--lines 1000]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
import tempfile
import time
from pathlib import Path

import yaml
from harness import bench_resources, free_port, start, tokenomy

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "demo"))


def questions(lines: int) -> list[str]:
    from tokenomy_demo.workload import load, workload  # noqa: PLC0415

    picked = workload(load(), lines * 2, seed=0)
    return [q.text for q in picked if q.kind == "support"][:lines]


async def run(api: str, metrics: str, texts: list[str]) -> None:
    import aiohttp  # noqa: PLC0415
    import openai  # noqa: PLC0415

    client = openai.AsyncOpenAI(base_url=api, api_key="bench", max_retries=0)
    rows = [
        {"custom_id": str(i), "method": "POST", "url": "/v1/chat/completions",
         "body": {"model": "chat", "messages": [{"role": "user", "content": t}]}}
        for i, t in enumerate(texts)
    ]  # fmt: skip
    data = "".join(json.dumps(r) + "\n" for r in rows).encode()
    t0 = time.perf_counter()
    uploaded = await client.files.create(file=("in.jsonl", data), purpose="batch")
    batch = await client.batches.create(
        input_file_id=uploaded.id, endpoint="/v1/chat/completions", completion_window="24h"
    )
    while batch.status not in ("completed", "failed", "cancelled"):
        await asyncio.sleep(0.1)
        batch = await client.batches.retrieve(batch.id)
    seconds = time.perf_counter() - t0
    assert batch.output_file_id is not None
    out = [
        json.loads(x) for x in (await client.files.content(batch.output_file_id)).text.splitlines()
    ]
    usage = [o["response"]["body"].get("usage") or {} for o in out]
    live = (
        sum(u.get("prompt_tokens", 0) * 2.5 + u.get("completion_tokens", 0) * 10 for u in usage)
        / 1e6
    )
    async with aiohttp.ClientSession() as http, http.get(metrics) as response:
        page = await response.text()
    spent = sum(
        float(line.rsplit(" ", 1)[1])
        for line in page.splitlines()
        if line.startswith("tokenomy_cost_usd_total{")
    )
    hits = sum(
        float(line.rsplit(" ", 1)[1])
        for line in page.splitlines()
        if line.startswith("tokenomy_requests_total{") and 'cache="exact"' in line
    )
    print(
        "| lines | answered | from cache (never sent) | sent to the Batch API | USD live, list price | USD through the sidecar | saved | job seconds |"
    )
    print("|---|---|---|---|---|---|---|---|")
    sent = len(out) - int(hits)
    print(
        f"| {len(texts):,} | {len(out):,} | {int(hits):,} | {sent:,} | {live:.4f} | {spent:.4f} | {1 - spent / live:.1%} | {seconds:.1f} |"
    )
    await client.close()


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--lines", type=int, default=1000)
    args = parser.parse_args()
    folder = Path(tempfile.mkdtemp())
    upstream_port, port, metrics_port = free_port(), free_port(), free_port()
    upstream = start("upstream", tokenomy("standin", "--port", str(upstream_port)), upstream_port)
    config = bench_resources(folder, upstream_port, {"cache": {"exact": {"enabled": True}}})
    docs = list(yaml.safe_load_all(config.read_text()))
    docs[0]["spec"]["tiers"][0]["backends"][0]["price"].update(batchInput="1.25", batchOutput="5")
    config.write_text(yaml.safe_dump_all(docs))
    sidecar = start(
        "sidecar",
        tokenomy("sidecar", "--config", str(folder), "--listen", f"127.0.0.1:{port}",
                 "--metrics", f"127.0.0.1:{metrics_port}", "--log-level", "WARNING",
                 "--batch-poll-seconds", "0.05"),
        port,
    )  # fmt: skip
    try:
        asyncio.run(
            run(f"http://127.0.0.1:{port}/v1", f"http://127.0.0.1:{metrics_port}/metrics",
                questions(args.lines))
        )  # fmt: skip
    finally:
        sidecar.stop()
        upstream.stop()


if __name__ == "__main__":
    main()
