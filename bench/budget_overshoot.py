"""How far a shared budget can be overrun, and how fast every sidecar enforces it.

The operator's usage service runs in a child process (a real gRPC server);
this process runs --sidecars simulated sidecars (each the real RemoteBudget
client with its own stream) sending --concurrency requests at a time at
full speed. A request reserves the estimate of a 1,000-token prompt and a
200-token answer at gpt-4o list prices; what it really costs varies: the
answer is 50-100 % of max_tokens (all of it with --full-answers) and the
prompt's real token count is up to --underestimate above the estimate (the sidecar estimates input tokens
from characters). It reports:

- spend at the end as a share of the budget (overshoot when above 100 %);
- the time from the first refused request to the last admitted one, i.e.
  until every sidecar enforces the exhausted budget.

    python bench/budget_overshoot.py [--sidecars 100] [--concurrency 4] [--budget 20]
"""

from __future__ import annotations

import argparse
import asyncio
import random
import sys
import time
from decimal import Decimal

from harness import free_port, start

PRICE_IN, PRICE_OUT = Decimal("2.50"), Decimal("10")
PROMPT, ANSWER = 1000, 200


def cost(tokens_in: float, tokens_out: float) -> Decimal:
    return (Decimal(str(tokens_in)) * PRICE_IN + Decimal(str(tokens_out)) * PRICE_OUT) / 1_000_000


async def serve(port: int, budget: str) -> None:
    """The child: the operator's usage service alone."""
    import grpc  # noqa: PLC0415

    from tokenomy_api.clock import SystemClock  # noqa: PLC0415
    from tokenomy_api.costpolicy import Budget  # noqa: PLC0415
    from tokenomy_operator.spend.usage import UsageService, add_to_server  # noqa: PLC0415

    spec = Budget.model_validate({"amount": budget})
    server = grpc.aio.server()
    add_to_server(UsageService(lambda p: spec, SystemClock()), server)
    server.add_insecure_port(f"127.0.0.1:{port}")
    await server.start()
    await server.wait_for_termination()


async def run(args: argparse.Namespace, port: int) -> None:
    from tokenomy_api.clock import SystemClock  # noqa: PLC0415
    from tokenomy_api.costpolicy import Budget  # noqa: PLC0415
    from tokenomy_api.usage_protocol import RequestUsage  # noqa: PLC0415
    from tokenomy_sidecar.budget_client import RemoteBudget  # noqa: PLC0415

    spec = Budget.model_validate({"amount": str(args.budget)})
    sidecars = [
        RemoteBudget(f"127.0.0.1:{port}", f"bench/pod-{i}", "bench/p", spec, SystemClock())
        for i in range(args.sidecars)
    ]
    for s in sidecars:
        s.start()
    rng = random.Random(0)
    estimate = cost(PROMPT, ANSWER)
    spent = Decimal(0)
    requests = 0
    first_refusal = 0.0
    last_admission = 0.0

    never: set[str] = set()

    async def worker(s: RemoteBudget) -> None:
        nonlocal spent, requests, first_refusal, last_admission
        admitted = False
        while True:
            held = await s.reserve(estimate)
            now = time.perf_counter()
            if held is None:
                if admitted:  # the budget ran out under a working sidecar
                    first_refusal = min(first_refusal or now, now)
                else:
                    never.add(s.holder)
                return
            admitted = True
            last_admission = now
            await asyncio.sleep(0.001 + rng.random() * 0.004)  # the model call
            actual = cost(
                PROMPT * (1 + rng.random() * args.underestimate), ANSWER * (0.5 + rng.random() / 2)
            )
            s.settle(held, RequestUsage(actual))
            spent += actual
            requests += 1

    t0 = time.perf_counter()
    await asyncio.gather(*(worker(s) for s in sidecars for _ in range(args.concurrency)))
    seconds = time.perf_counter() - t0
    for s in sidecars:
        await s.close()
    budget = Decimal(str(args.budget))
    print(f"{args.sidecars} sidecars x {args.concurrency} in flight, budget ${budget}, "
          f"input under-estimated by up to {args.underestimate:.0%}")  # fmt: skip
    print(
        f"requests {requests:,} in {seconds:.2f} s; spent ${spent:.4f} = {spent / budget:.2%} of the budget"
    )
    print(f"overshoot {max(Decimal(0), spent - budget) / budget:.3%} of the budget")
    lag = max(0.0, last_admission - first_refusal) * 1000 if first_refusal else 0.0
    print(f"budget exhausted (first refusal) to every sidecar enforcing it (last admission): "
          f"{lag:.0f} ms")  # fmt: skip
    if never:
        print(f"{len(never)} workers found the budget gone before their first request")


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--sidecars", type=int, default=100)
    parser.add_argument("--concurrency", type=int, default=4)
    parser.add_argument("--budget", type=float, default=20.0)
    parser.add_argument("--underestimate", type=float, default=0.3)
    parser.add_argument(
        "--full-answers", action="store_true", help="every answer uses all of max_tokens"
    )
    parser.add_argument("--serve", type=int, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.serve:
        asyncio.run(serve(args.serve, str(args.budget)))
        return
    port = free_port()
    child = start(
        "usage",
        [sys.executable, __file__, "--serve", str(port), "--budget", str(args.budget)],
        port,
    )
    try:
        asyncio.run(run(args, port))
    finally:
        child.stop()


if __name__ == "__main__":
    main()
