"""CPU the sidecar's tool pruning adds per request, with every definition's vector known.

The pruning function itself (BM25 over the definitions, fused with the
embedding similarities, the choice, the tokens removed) on BFCL's requests,
each offered its own definitions and then all 457 of the data's functions at
once. The question's embedding is not counted: the semantic cache and
domain routing compute it anyway, and the local embedder's cost is in
``bench/semantic_cost.py``.

    python bench/tool_pruning.py [--data ../shared/data/bfcl] [--requests 300]
"""

from __future__ import annotations

import argparse
import statistics
import time
from pathlib import Path

import numpy as np

from tokenomy_api.compiled import CompiledToolPruning
from tokenomy_eval.tools import load_bfcl, pool_of
from tokenomy_sidecar.tool_pruning import (
    conversation_query,
    definition_text,
    prune,
    relevance,
    required,
)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--data", type=Path, default=Path("../shared/data/bfcl"))
    parser.add_argument("--requests", type=int, default=300)
    args = parser.parse_args()
    requests = load_bfcl(args.data)[: args.requests]
    pool = pool_of(load_bfcl(args.data))
    pruning = CompiledToolPruning()
    rng = np.random.default_rng(0)
    for name, offered in [("own set", None), (f"all {len(pool)}", pool)]:
        times = []
        for r in requests * 2:  # the first pass builds the per-set indexes, as a warm sidecar has
            tools = offered if offered is not None else r.tools
            similarity = rng.uniform(0, 1, len(tools))
            start = time.perf_counter()
            texts = [definition_text(t) for t in tools]
            body = {"messages": r.messages, "tools": tools}
            prune(
                tools,
                relevance(texts, conversation_query(r.messages), similarity),
                required(body),
                pruning,
            )
            times.append(time.perf_counter() - start)
        warm = times[len(requests) :]
        print(
            f"{name:>8}: p50 {statistics.median(warm) * 1e3:.2f} ms, "
            f"p99 {np.percentile(warm, 99) * 1e3:.2f} ms per request ({len(warm)} requests)"
        )


if __name__ == "__main__":
    main()
