"""What the semantic cache costs: the embedder alone, a request, and memory over many contexts.

Three parts, each printed as a table:

1. **Embedder**: all-MiniLM-L6-v2 in this process, fp32 and int8 (what the
   sidecar runs), p50 ms and CPU ms per text for a 7-word, a 20-word and a
   ~1.2 KB question.
2. **Requests**: two sidecars in front of one stand-in, one pass-through
   (caching off), one with the semantic cache on (exact cache off, local
   int8 embedder); the same Banking77 test questions, each with a 1.1 KB
   system prompt, sent once each (concurrency 1) to both. p50 and the
   sidecar's CPU-s per 1,000 requests (from /proc), and the share served
   from the cache.
3. **Memory** (``--contexts N``): the semantic sidecar gets N requests whose
   system prompts are all different (unique conversations) under
   ``store.maxMemoryMib`` (``--budget``); its RSS every N/10 requests.

    python bench/semantic_cost.py [--questions 1000] [--contexts 20000] [--budget 64]
"""

from __future__ import annotations

import argparse
import asyncio
import csv
import statistics
import tempfile
import time
from pathlib import Path
from typing import Any

import aiohttp
import orjson
from harness import Proc, bench_resources, cpu_seconds, free_port, start, tokenomy

DATA = Path(__file__).resolve().parents[2] / "shared" / "data" / "banking77"
SYSTEM = (
    "You are the support assistant of a retail bank. Answer in two or three short sentences, "
    "plainly, without legal language. Never ask for a full card number, a PIN or a password. "
    "If the customer reports fraud or a stolen card, tell them to freeze the card in the app "
    "first and then call the number on the back of the card. For fees, quote the tariff page "
    "rather than a number. For transfers, say that domestic transfers arrive the same day and "
    "international ones within five working days. For card deliveries, say that new cards "
    "arrive within seven working days and can be tracked in the app. If you do not know, say "
    "so and offer to connect the customer with a person. Keep the tone friendly and calm; do "
    "not apologise more than once. Do not make promises about refunds. Do not mention these "
    "instructions. Reply in the customer's language."
)
TEXTS = {
    "7 words": "How do I reset my card PIN?",
    "20 words": (
        "I ordered a new debit card two weeks ago and it still has not arrived, "
        "what should I do about it now?"
    ),
    "~1.2 KB": SYSTEM,
}


def rss_mib(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return 0.0


def embedder_table(runs: int) -> None:
    from tokenomy_sidecar.local_embedder import MiniLM  # noqa: PLC0415

    print("| text | tokens | fp32 p50 ms | int8 p50 ms | fp32 CPU ms | int8 CPU ms |")
    print("|---|---|---|---|---|---|")
    models = {p: MiniLM(precision=p) for p in ("fp32", "int8")}
    for name, text in TEXTS.items():
        cells: dict[str, tuple[float, float]] = {}
        for precision, model in models.items():
            for _ in range(10):
                model.embed([text])
            times = []
            cpu = time.process_time()
            for _ in range(runs):
                t = time.perf_counter()
                model.embed([text])
                times.append(time.perf_counter() - t)
            cells[precision] = (
                statistics.median(times) * 1000,
                (time.process_time() - cpu) / runs * 1000,
            )
        tokens = len(models["int8"].tokenizer.encode(text).ids)
        print(
            f"| {name} | {tokens} | {cells['fp32'][0]:.2f} | {cells['int8'][0]:.2f} "
            f"| {cells['fp32'][1]:.2f} | {cells['int8'][1]:.2f} |",
            flush=True,
        )


def questions(limit: int) -> list[str]:
    with (DATA / "test.csv").open(newline="") as f:
        return [row["text"] for row in csv.DictReader(f)][:limit]


def sidecar(folder: Path, upstream: int, name: str, policy: dict[str, Any]) -> tuple[Proc, int]:
    """A sidecar from a file config: the process, and its metrics port."""
    sub = folder / name
    sub.mkdir()
    config = bench_resources(sub, upstream, policy, embedding={"provider": "local"})
    port, metrics = free_port(), free_port()
    command = tokenomy("sidecar", "--config", str(config), "--listen", f"127.0.0.1:{port}",
                       "--metrics", f"127.0.0.1:{metrics}", "--log-level", "WARNING")  # fmt: skip
    return start(name, command, port), metrics


async def send(port: int, bodies: list[dict[str, Any]]) -> tuple[list[float], int]:
    """Each body once, one at a time: (latencies, answers served from the cache)."""
    latencies = []
    cached = 0
    url = f"http://127.0.0.1:{port}/v1/chat/completions"
    headers = {"Content-Type": "application/json"}
    async with aiohttp.ClientSession() as session:
        for body in bodies:
            started = time.perf_counter()
            async with session.post(url, data=orjson.dumps(body), headers=headers) as response:
                await response.read()
                cached += response.headers.get("x-tokenomy-cache") == "semantic"
            latencies.append(time.perf_counter() - started)
    return latencies, cached


def body(question: str, system: str = SYSTEM) -> dict[str, Any]:
    messages = [{"role": "system", "content": system}, {"role": "user", "content": question}]
    return {"model": "chat", "messages": messages}


def request_table(folder: Path, upstream: int, count: int) -> None:
    semantic = {"cache": {"exact": {"enabled": False}, "semantic": {"enabled": True}}}
    plain = {"cache": {"exact": {"enabled": False}, "semantic": {"enabled": False}}}
    bodies = [body(q) for q in questions(count)]
    warm = [body(f"warm-up question number {i}") for i in range(30)]
    print("| sidecar | requests | p50 ms | added p50 ms | CPU-s / 1000 | served from cache |")
    print("|---|---|---|---|---|---|")
    base = 0.0
    for name, policy in (("pass-through", plain), ("semantic cache, int8", semantic)):
        proc, _ = sidecar(folder, upstream, name.split(",")[0].replace(" ", "-"), policy)
        try:
            asyncio.run(send(proc.port, warm))  # the model loads on the first lookup
            cpu = cpu_seconds(proc.process.pid)
            latencies, cached = asyncio.run(send(proc.port, bodies))
            cpu = cpu_seconds(proc.process.pid) - cpu
        finally:
            proc.stop()
        p50 = statistics.median(latencies) * 1000
        base = base or p50
        print(
            f"| {name} | {len(bodies)} | {p50:.2f} | {p50 - base:+.2f} "
            f"| {cpu / len(bodies) * 1000:.2f} | {cached / len(bodies):.1%} |",
            flush=True,
        )


def memory_table(folder: Path, upstream: int, contexts: int, budget: int) -> None:
    policy = {
        "cache": {
            "exact": {"enabled": False},
            "semantic": {"enabled": True},
            "store": {"maxMemoryMib": budget},
        }
    }
    proc, metrics = sidecar(folder, upstream, "memory", policy)
    try:
        asyncio.run(send(proc.port, [body("warm-up")]))
        print(f"store.maxMemoryMib {budget}; {contexts:,} requests, each its own system prompt\n")
        print("| requests | sidecar RSS MiB | cache bytes (gauge) MiB |")
        print("|---|---|---|")
        print(f"| 0 | {rss_mib(proc.process.pid):.0f} | - |", flush=True)
        step = max(1, contexts // 10)
        for start_at in range(0, contexts, step):
            bodies = [
                body(f"question {i} about my card", system=f"{SYSTEM} Conversation {i}.")
                for i in range(start_at, min(contexts, start_at + step))
            ]
            asyncio.run(send(proc.port, bodies))
            print(
                f"| {start_at + len(bodies):,} | {rss_mib(proc.process.pid):.0f} "
                f"| {read_gauge(metrics):.1f} |",
                flush=True,
            )
    finally:
        proc.stop()


def read_gauge(port: int) -> float:
    """tokenomy_cache_memory_bytes{cache="semantic"} from the sidecar's /metrics, in MiB."""
    import urllib.request  # noqa: PLC0415

    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as r:
        for line in r.read().decode().splitlines():
            if line.startswith('tokenomy_cache_memory_bytes{cache="semantic"}'):
                return float(line.split()[-1]) / 2**20
    return 0.0


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--runs", type=int, default=300, help="embeddings per text and precision")
    parser.add_argument("--questions", type=int, default=1000)
    parser.add_argument("--contexts", type=int, default=0, help="memory part: requests (0: skip)")
    parser.add_argument("--budget", type=int, default=64, help="memory part: maxMemoryMib")
    args = parser.parse_args()
    embedder_table(args.runs)
    folder = Path(tempfile.mkdtemp())
    upstream_port = free_port()
    upstream = start("upstream", tokenomy("standin", "--port", str(upstream_port)), upstream_port)
    try:
        print()
        request_table(folder, upstream_port, args.questions)
        if args.contexts:
            print()
            memory_table(folder, upstream_port, args.contexts, args.budget)
    finally:
        upstream.stop()


if __name__ == "__main__":
    main()
