"""Latency of cache hits through the sidecar: exact, and semantic with a large index.

The sidecar runs in a child process with the semantic cache on and the local
all-MiniLM-L6-v2 embedder; its partition is seeded with --entries random
unit vectors (HNSW search cost depends on the graph's size, and random
vectors are its hard case) plus the one real question. The parent sends,
one at a time: the same request again and again (exact hits), then a
paraphrase again and again (semantic hits: the exact cache only stores what
an upstream answered, so each paraphrase embeds and searches). With
``--budget`` the semantic cache serves by a wrong-hit budget (its cuts
seeded so that it serves from similarity 0.8): each hit then reads the
16 nearest entries and their answers too.

    python bench/cache_latency.py [--entries 100000] [--requests 300] [--budget]
"""

from __future__ import annotations

import argparse
import asyncio
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
from harness import bench_resources, free_port, load, start, tokenomy

QUESTION = "My new card has not arrived yet, what should I do?"
PARAPHRASE = "my new card still hasn't arrived, what do I do?"


def write_config(folder: Path, upstream: int, budget: bool) -> Path:
    semantic: dict[str, object] = {"enabled": True}
    if budget:
        semantic["wrongHitBudget"] = {"maxWrongShare": 0.02, "explore": 0}
    else:
        semantic["threshold"] = 0.8
    policy = {
        "cache": {"semantic": semantic, "store": {"maxEntries": 1_000_000, "maxMemoryMib": 4096}}
    }
    return bench_resources(folder, upstream, policy, embedding={"provider": "local"})


async def serve(config: str, port: int, entries: int) -> None:
    """The child: a sidecar with a seeded semantic partition."""
    from tokenomy_sidecar.app import Sidecar, SidecarSettings  # noqa: PLC0415
    from tokenomy_sidecar.embedders import LocalEmbedder  # noqa: PLC0415
    from tokenomy_sidecar.semantic_budget import Outcome  # noqa: PLC0415
    from tokenomy_sidecar.sources import FileSource  # noqa: PLC0415
    from tokenomy_sidecar.stages.semantic_cache import question_context  # noqa: PLC0415

    sidecar = Sidecar(SidecarSettings(listen_port=port, metrics_port=0, metrics_host="127.0.0.1"))
    FileSource([config], None, sidecar.holder, sidecar.metrics).load()
    await LocalEmbedder().warm()
    body = {"model": "chat", "messages": [{"role": "user", "content": QUESTION}]}
    partition = "policy/bench/bench|local:all-MiniLM-L6-v2"  # index_partition's form
    rng = np.random.default_rng(0)
    vectors = rng.standard_normal((entries, 384)).astype(np.float32)
    vectors /= np.linalg.norm(vectors, axis=1, keepdims=True)
    t0 = time.perf_counter()
    context = question_context(body)
    sidecar.semantic.bulk_load(partition, context, vectors, [b"only\nup\n{}"] * entries, ttl=86400)
    print(
        f"seeded {entries} entries in {time.perf_counter() - t0:.1f} s", file=sys.stderr, flush=True
    )
    # What a budget's cuts are chosen from (unused without one): right above 0.8, wrong
    # below, agreement the same for all, so the similarity cut is 0.8.
    for i in range(1_100):
        outcome = Outcome(0.8, 0.0, True) if i < 1_000 else Outcome(0.5, 0.0, False)
        sidecar.outcomes.record(("bench", "bench", "chat"), outcome)
    await sidecar.start()
    await asyncio.Event().wait()


async def measure(url: str, requests: int, pid: int) -> None:
    plain = {"model": "chat", "messages": [{"role": "user", "content": QUESTION}]}
    paraphrase = {"model": "chat", "messages": [{"role": "user", "content": PARAPHRASE}]}
    print("| request | p50 ms | p99 ms | sidecar CPU-s / 1000 |")
    print("|---|---|---|---|")
    # load() warms up first: the first request is the miss that stores the answer.
    for name, body in (("exact hit", plain), ("semantic hit (embedding included)", paraphrase)):
        result = await load(url, body, requests, 1, pid=pid)
        print(
            f"| {name} | {result.p50 * 1000:.2f} | {result.p99 * 1000:.2f} | {result.cpu / requests * 1000:.2f} |",
            flush=True,
        )


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--entries", type=int, default=100_000)
    parser.add_argument("--requests", type=int, default=300)
    parser.add_argument("--budget", action="store_true", help="serve by a wrong-hit budget")
    parser.add_argument("--serve", nargs=2, metavar=("CONFIG", "PORT"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.serve:
        asyncio.run(serve(args.serve[0], int(args.serve[1]), args.entries))
        return
    folder = Path(tempfile.mkdtemp())
    upstream_port, port = free_port(), free_port()
    upstream = start("upstream", tokenomy("standin", "--port", str(upstream_port)), upstream_port)
    config = write_config(folder, upstream_port, args.budget)
    child = start(
        "sidecar",
        [
            sys.executable,
            __file__,
            "--entries",
            str(args.entries),
            "--serve",
            str(config),
            str(port),
        ],
        port,
        timeout=1800,  # seeding a million entries takes minutes
    )
    try:
        print(f"semantic partition seeded with {args.entries:,} entries; local all-MiniLM-L6-v2\n")
        asyncio.run(
            measure(
                f"http://127.0.0.1:{port}/v1/chat/completions", args.requests, child.process.pid
            )
        )
        status = Path(f"/proc/{child.process.pid}/status").read_text()
        rss = next(int(x.split()[1]) for x in status.splitlines() if x.startswith("VmRSS:"))
        print(f"\nsidecar RSS {rss / 1024:.0f} MiB with {args.entries:,} entries")
    finally:
        child.stop()
        upstream.stop()


if __name__ == "__main__":
    main()
