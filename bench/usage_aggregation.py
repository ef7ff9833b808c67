"""What the operator's usage aggregation costs: reports per second, status time, memory.

Runs in one process, without the network (``budget_overshoot.py`` measures
the gRPC stream): the operator's :class:`UsageService` counts batches of
full usage reports (tier, cache outcome, tokens, two attribution labels, a
task id out of ``--tasks`` distinct ones) as sidecars send them, then
writes the policy's status (totals, top spenders and tasks) and judges the
alerts, as the controller does every 15 s. Reports:

- reports counted per second of one core (protobuf decode, ledger, totals,
  alert buckets);
- milliseconds to build the status and judge the alerts;
- memory held per task id remembered.
"""

from __future__ import annotations

import argparse
import random
import time
import tracemalloc
from decimal import Decimal


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--reports", type=int, default=200_000)
    parser.add_argument("--tasks", type=int, default=100_000)
    parser.add_argument("--batch", type=int, default=20, help="reports per sidecar message")
    args = parser.parse_args()

    from tokenomy_api.clock import ManualClock  # noqa: PLC0415
    from tokenomy_api.costpolicy import Alerts  # noqa: PLC0415
    from tokenomy_api.usage_protocol import RequestUsage, SidecarMessage  # noqa: PLC0415
    from tokenomy_operator.spend.alerting import evaluate  # noqa: PLC0415
    from tokenomy_operator.spend.usage import UsageService  # noqa: PLC0415

    rng = random.Random(0)
    clock = ManualClock(1_800_000_000.0)
    service = UsageService(lambda p: None, clock)
    teams = [f"team-{i}" for i in range(10)]
    features = [f"feature-{i}" for i in range(20)]
    messages = []
    for start in range(0, args.reports, args.batch):
        reports = []
        for number in range(start + 1, min(args.reports, start + args.batch) + 1):
            hit = rng.random() < 0.3
            usage = RequestUsage(
                cost=Decimal(0) if hit else Decimal(rng.randint(1, 5000)) / 1_000_000,
                saved=Decimal(rng.randint(0, 5000)) / 1_000_000,
                route="chat",
                tier="" if hit else rng.choice(["small", "large"]),
                reference=not hit and rng.random() < 0.2,
                cache="exact" if hit else "miss",
                input_tokens=0 if hit else rng.randint(50, 2000),
                output_tokens=0 if hit else rng.randint(10, 500),
                labels=(("feature", rng.choice(features)), ("team", rng.choice(teams))),
                task=f"task-{rng.randrange(args.tasks)}",
            )
            reports.append(usage.report(number))
        wire = SidecarMessage(holder="bench/pod#1", policy="bench/p", reports=reports)
        messages.append(wire.SerializeToString())

    def count(into: UsageService) -> float:
        t0 = time.perf_counter()
        for raw in messages:
            into.handle(SidecarMessage.FromString(raw))
            clock.advance(0.01)
        return time.perf_counter() - t0

    counting = count(service)
    tracemalloc.start()  # a second service, counted again: tracing slows it down
    traced = UsageService(lambda p: None, clock)
    count(traced)
    held, _ = tracemalloc.get_traced_memory()
    tracemalloc.stop()

    t0 = time.perf_counter()
    status = service.status("bench/p")
    history = service.history["bench/p"]
    now = clock.wall()
    evaluate(Alerts().resolved(), history.current(now), history.moving_average(now), None)
    writing = time.perf_counter() - t0

    totals = service.periods["bench/p"].totals
    print(f"{args.reports:,} reports in batches of {args.batch}, {len(totals.tasks):,} task ids")
    print(f"counted {args.reports / counting:,.0f} reports/s on one core "
          f"({counting / args.reports * 1e6:.1f} us each)")  # fmt: skip
    print(f"status with totals, top spenders and tasks, and alerts: {writing * 1000:.1f} ms")
    print(f"memory held after counting: {held / 2**20:.1f} MiB "
          f"({held / max(1, len(totals.tasks)):.0f} bytes per task id)")  # fmt: skip
    print(f"status.tasks: count {status['tasks']['count']:,}, "
          f"cost per task {status['tasks']['costPerTask']} USD")  # fmt: skip


if __name__ == "__main__":
    main()
