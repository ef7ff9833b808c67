"""Budgets shared by many sidecars over the operator's usage stream (real gRPC)."""

from __future__ import annotations

import asyncio
import random
from decimal import Decimal

import aiohttp
import grpc
import openai
import pytest

from tokenomy_api.clock import SystemClock
from tokenomy_api.compiler import compile_configs
from tokenomy_api.costpolicy import Budget
from tokenomy_api.usage_protocol import RequestUsage
from tokenomy_operator.spend.totals import Totals
from tokenomy_operator.spend.usage import UsageService, add_to_server
from tokenomy_operator.xds.resources import snapshot_for
from tokenomy_operator.xds.server import AdsServer, serve
from tokenomy_operator.xds.snapshot import SnapshotCache
from tokenomy_sidecar.app import Sidecar, SidecarSettings
from tokenomy_sidecar.budget_client import RemoteBudget, RemoteKeepers
from tokenomy_sidecar.credentials import Credentials
from tokenomy_sidecar.wallet import Reservation
from tokenomy_sidecar.xds_client import XdsSource

from helpers import backend, policy, route
from support import StandinFactory, free_port

LARGE = {"input": "2.50", "output": "10"}

POLICY = "shop/agent"


async def start_server(service: UsageService, port: int) -> grpc.aio.Server:
    server = grpc.aio.server()
    add_to_server(service, server)
    server.add_insecure_port(f"127.0.0.1:{port}")
    await server.start()
    return server


async def until(condition: object, seconds: float = 10.0) -> None:
    for _ in range(int(seconds / 0.02)):
        if condition():  # type: ignore[operator]
            return
        await asyncio.sleep(0.02)
    pytest.fail("timed out")


def budget(amount: str, fail_mode: str = "lease") -> Budget:
    return Budget.model_validate({"amount": amount, "failMode": fail_mode})


async def test_twenty_sidecars_share_one_budget_and_survive_a_reconnect() -> None:
    spec = budget("1.00")
    service = UsageService(lambda p: spec if p == POLICY else None, SystemClock())
    port = free_port()
    server = await start_server(service, port)
    sidecars = [
        RemoteBudget(f"127.0.0.1:{port}", f"shop/pod-{i}", POLICY, spec, SystemClock())
        for i in range(20)
    ]
    for s in sidecars:
        s.start()
    rng = random.Random(0)
    settled = Decimal(0)
    estimate, actual = Decimal("0.004"), Decimal("0.003")

    async def worker(s: RemoteBudget) -> None:
        nonlocal settled
        while True:
            held = await s.reserve(estimate)
            if held is None and not s.connected:
                await asyncio.sleep(0.05)  # refused while the operator is away: try later
                continue
            if held is None:
                return
            await asyncio.sleep(rng.random() * 0.02)
            s.settle(held, RequestUsage(actual))
            settled += actual

    at_drop = Decimal(-1)

    async def drop_connections() -> None:
        nonlocal server, at_drop
        while settled < spec.amount / 10:  # mid-spend (a fixed wait is flaky under load)
            await asyncio.sleep(0.005)
        at_drop = settled
        await server.stop(grace=None)  # every stream breaks; reports in the air are lost
        server = await start_server(service, port)

    try:
        await asyncio.gather(drop_connections(), *(worker(s) for s in sidecars for _ in range(4)))
        assert 0 < at_drop < settled  # the drop came while the sidecars were spending
        ledger = service.periods[POLICY].ledger
        # Reports not acknowledged before the drop are sent again and counted once.
        await until(lambda: all(not s.wallet.unsent for s in sidecars))
        assert ledger.spent == settled
        assert settled <= spec.amount  # reservations covered every request: never over
        # ... and the budget was used: at most a lease's crumbs (1 % of it) left per sidecar.
        assert settled > spec.amount * Decimal("0.8")
    finally:  # a failure must not leave the streams running (pytest would never exit)
        for s in sidecars:
            await s.close()
        await server.stop(grace=None)


async def test_a_reservation_larger_than_a_share_is_leased_over_the_stream() -> None:
    spec = budget("2.00")  # a share is 1 %: $0.02
    service = UsageService(lambda p: spec if p == POLICY else None, SystemClock())
    port = free_port()
    server = await start_server(service, port)
    keeper = RemoteBudget(f"127.0.0.1:{port}", "shop/pod-0", POLICY, spec, SystemClock())
    keeper.start()
    try:
        held = await keeper.reserve(Decimal("0.5"))
        assert held is not None
        assert held.amount == Decimal("0.5")
        assert await keeper.reserve(Decimal(5)) is None  # more than the budget: refused
    finally:
        await keeper.close()
        await server.stop(grace=None)


async def test_fail_modes_when_the_operator_is_unreachable() -> None:
    spec = budget("1.00")
    service = UsageService(lambda p: spec, SystemClock())
    port = free_port()
    server = await start_server(service, port)
    keeps = RemoteBudget(f"127.0.0.1:{port}", "shop/a", POLICY, spec, SystemClock())
    stops = RemoteBudget(
        f"127.0.0.1:{port}", "shop/b", POLICY, budget("1.00", "stop"), SystemClock()
    )
    try:
        for s in (keeps, stops):
            s.start()
        assert await keeps.reserve(Decimal("0.001")) is not None  # a lease of 0.01 (1 %)
        assert await stops.reserve(Decimal("0.001")) is not None
        await server.stop(grace=None)
        await until(lambda: not keeps.connected and not stops.connected)
        assert await keeps.reserve(Decimal("0.001")) is not None  # the lease it holds
        assert await stops.reserve(Decimal("0.001")) is None  # stop: nothing without the operator
        assert await keeps.reserve(Decimal("0.05")) is None  # beyond its lease: refused
    finally:
        for s in (keeps, stops):
            await s.close()


async def test_a_policy_without_budget_is_counted_and_unlimited() -> None:
    service = UsageService(lambda p: None, SystemClock())
    port = free_port()
    server = await start_server(service, port)
    client = RemoteBudget(f"127.0.0.1:{port}", "shop/a", POLICY, budget("1"), SystemClock())
    client.start()
    await until(lambda: client.unlimited)
    held = await client.reserve(Decimal(5))
    assert held is not None
    client.settle(held, RequestUsage(Decimal("2.5")))
    await until(lambda: not client.wallet.unsent)
    assert service.periods[POLICY].ledger.spent == Decimal("2.5")
    await client.close()
    await server.stop(grace=None)


async def test_notices_reach_the_operator_only_for_the_version_sidecars_run() -> None:
    service = UsageService(lambda p: None, SystemClock())
    port = free_port()
    server = await start_server(service, port)
    keepers = RemoteKeepers(f"127.0.0.1:{port}", "shop/a", SystemClock())
    said = "routing.complexity: model mine supports no saving at 99 % …"
    keeper = keepers.get(POLICY, None, [said], "v1")
    await until(lambda: service.notices(POLICY, "v1") == [said])
    assert service.notices(POLICY, "v2") == []  # a sidecar on another version is not heard
    keepers.get(POLICY, None, [], "v2")  # the next config saves again
    keeper.settle(Reservation(Decimal(0)), RequestUsage(Decimal("0.01")))
    await until(lambda: service.notices(POLICY, "v1") == [])
    assert service.notices(POLICY, "v2") == []
    service.keep_only(set())  # the policy is gone, and what it was told with it
    assert service._notices == {}
    await keepers.close()
    await server.stop(grace=None)


async def test_injected_sidecars_share_the_operators_budget(standin: StandinFactory) -> None:
    """Two sidecars fed by ADS, leases from the same gRPC server: one budget for both."""
    model = await standin(name="large", reply="a fine answer")
    tiers = [{"name": "large", "backends": [backend("l", url=model.url, price=LARGE)]}]
    budget_spec = {"amount": "0.0015", "onExceeded": "reject"}
    config = compile_configs(
        [policy(namespace="default", cache={"exact": {"enabled": False}},
                output={"maxTokens": 8}, budget=budget_spec)],
        [route(namespace="default", tiers=tiers)],
    ).configs["default/agent"]  # fmt: skip
    cache = SnapshotCache()
    controller_budget = config.budget
    usage = UsageService(lambda p: controller_budget, SystemClock())
    grpc_server, port = await serve(
        AdsServer(cache), "127.0.0.1:0", lambda s: add_to_server(usage, s)
    )
    address = f"127.0.0.1:{port}"
    sidecars, tasks = [], []
    for node in ("default/pod-a", "default/pod-b"):
        cache.set(node, snapshot_for(config))
        sidecar = Sidecar(
            SidecarSettings(listen_port=0, metrics_port=0, metrics_host="127.0.0.1",
                            usage_address=address, node_id=node)
        )  # fmt: skip
        source = XdsSource(address, node, sidecar.holder, sidecar.metrics, Credentials())
        await sidecar.start()
        tasks.append(asyncio.create_task(source.run()))
        sidecars.append(sidecar)
    try:
        await until(lambda: all(s.holder.current is not None for s in sidecars))
        clients = [
            openai.AsyncOpenAI(base_url=s.api_url + "/v1", api_key="x", max_retries=0)
            for s in sidecars
        ]

        refusals: list[str] = []

        async def one(i: int) -> Decimal:
            try:
                raw = await clients[i % 2].chat.completions.with_raw_response.create(
                    model="chat", messages=[{"role": "user", "content": f"question {i}"}]
                )
            except openai.RateLimitError as error:
                refusals.append(error.response.json()["error"]["type"])
                return Decimal(0)
            return Decimal(raw.headers["x-tokenomy-cost-usd"])

        costs = await asyncio.gather(*(one(i) for i in range(80)))
        spent = sum(costs)
        assert 0 < spent <= Decimal("0.0015")
        assert refusals  # the budget, shared, ran out for both
        assert set(refusals) == {"budget_exceeded"}
        # The period exists once the first report arrived; until then there is nothing to read.
        await until(lambda: "default/agent" in usage.periods)
        await until(lambda: usage.periods["default/agent"].ledger.spent == spent)
        for client in clients:
            await client.close()
    finally:
        for task in tasks:
            task.cancel()
        for sidecar in sidecars:
            await sidecar.stop()
        await grpc_server.stop(None)


async def test_sidecars_report_tiers_hits_tokens_labels_and_tasks(standin: StandinFactory) -> None:
    """An injected sidecar of a policy without budget reports every request, hits included."""
    model = await standin(name="large", reply="a fine answer")
    tiers = [{"name": "large", "backends": [backend("l", url=model.url, price=LARGE)]}]
    config = compile_configs(
        [policy(namespace="default", attribution={"header": "x-feature"})],
        [route(namespace="default", tiers=tiers)],
    ).configs["default/agent"]
    cache = SnapshotCache()
    usage = UsageService(lambda p: None, SystemClock())
    grpc_server, port = await serve(
        AdsServer(cache), "127.0.0.1:0", lambda s: add_to_server(usage, s)
    )
    address = f"127.0.0.1:{port}"
    cache.set("default/pod-a", snapshot_for(config))
    sidecar = Sidecar(
        SidecarSettings(listen_port=0, metrics_port=0, metrics_host="127.0.0.1",
                        usage_address=address, node_id="default/pod-a",
                        pod_labels={"team": "growth", "app": "agent"})
    )  # fmt: skip
    source = XdsSource(address, "default/pod-a", sidecar.holder, sidecar.metrics, Credentials())
    await sidecar.start()
    task = asyncio.create_task(source.run())
    try:
        await until(lambda: sidecar.holder.current is not None)
        client = openai.AsyncOpenAI(base_url=sidecar.api_url + "/v1", api_key="x", max_retries=0)
        paid = Decimal(0)
        for i in range(4):  # question 0 twice: the second is an exact-cache hit
            raw = await client.chat.completions.with_raw_response.create(
                model="chat",
                messages=[{"role": "user", "content": f"question {i % 3}"}],
                extra_headers={"x-tokenomy-task": f"task-{i % 2}", "x-feature": "search"},
            )
            paid += Decimal(raw.headers["x-tokenomy-cost-usd"])
        with pytest.raises(openai.BadRequestError, match="x-tokenomy-task"):
            await client.chat.completions.create(
                model="chat",
                messages=[{"role": "user", "content": "hi"}],
                extra_headers={"x-tokenomy-task": "t" * 300},
            )
        await until(lambda: "default/agent" in usage.periods)  # the first report arrived
        await until(lambda: usage.periods["default/agent"].totals.requests == 4)
        totals = usage.periods["default/agent"].totals
        assert usage.periods["default/agent"].ledger.spent == paid > 0
        assert (totals.cache_hits, dict(totals.tiers), totals.reference_requests) == (
            1, {"large": 3}, 3,
        )  # fmt: skip
        assert totals.input_tokens > 0
        assert totals.output_tokens > 0
        assert totals.saved > 0  # the hit saved a whole answer
        assert set(totals.spenders) == {("team", "growth"), ("feature", "search")}
        assert totals.spenders[("feature", "search")].cost == paid
        assert totals.task_count == 2
        assert totals.tasks["task-0"].requests == 2
        page = await sidecar_metrics(sidecar)
        assert 'tokenomy_task_requests_total{namespace="default",policy="agent"} 4.0' in page
        assert 'tokenomy_attributed_tokens_total{key="team"' in page

        await outcomes_reach_the_operator(client, sidecar, totals)
        await client.close()
    finally:
        task.cancel()
        await sidecar.stop()
        await grpc_server.stop(None)


async def outcomes_reach_the_operator(
    client: openai.AsyncOpenAI, sidecar: Sidecar, totals: Totals
) -> None:
    """Outcomes: a header on task-0's last call, the endpoint for task-1 afterwards."""
    await client.chat.completions.create(
        model="chat", messages=[{"role": "user", "content": "question 9"}],
        extra_headers={"x-tokenomy-task": "task-0", "x-tokenomy-task-outcome": "success"},
    )  # fmt: skip
    async with aiohttp.ClientSession() as session:
        outcome = f"{sidecar.api_url}/v1/tokenomy/tasks/task-1/outcome"
        async with session.post(outcome, json={"success": False, "score": 0.25}) as r:
            assert r.status == 202
            assert await r.json() == {"task": "task-1", "reported": True}
    await until(lambda: totals.outcomes.succeeded + totals.outcomes.failed == 2)
    assert totals.requests == 5  # the endpoint's report is no request
    assert totals.tasks["task-0"].outcome == "success"
    assert totals.tasks["task-1"].outcome == "failure"
    status = totals.status()["tasks"]
    assert status["successRate"] == "50%"
    assert Decimal(status["costPerSuccessfulTask"]) == totals.tasked.cost.quantize(
        Decimal("0.000001")
    )
    assert status["byTier"] == [{"name": "large", "tasks": 2, "succeeded": 1, "successRate": "50%"}]
    assert {row["name"] for row in status["byLever"]} == {"tier", "exact_cache"}
    assert status["meanScore"] == "0.250"
    page = await sidecar_metrics(sidecar)
    assert 'tokenomy_task_outcomes_total{namespace="default",outcome="success",' in page


async def sidecar_metrics(sidecar: Sidecar) -> str:
    async with (
        aiohttp.ClientSession() as session,
        session.get(sidecar.metrics_url + "/metrics") as response,
    ):
        return await response.text()


async def test_reports_made_while_the_operator_is_away_are_merged_not_lost(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr("tokenomy_sidecar.budget_client.MAX_UNSENT", 50)
    service = UsageService(lambda p: None, SystemClock())
    port = free_port()
    client = RemoteBudget(f"127.0.0.1:{port}", "shop/a", POLICY, None, SystemClock())
    client.start()  # nobody listens yet
    expected = Decimal(0)
    for i in range(120):
        held = await client.reserve(Decimal(1))
        assert held is not None  # no budget: nothing to refuse
        cost = Decimal(i) / 1000
        client.settle(held, RequestUsage(cost, tier="small", cache="miss", input_tokens=10))
        expected += cost
        assert len(client.wallet.unsent) <= 51  # memory stays bounded
    server = await start_server(service, port)
    try:
        await until(lambda: not client.wallet.unsent, 15)
        period = service.periods[POLICY]
        assert period.ledger.spent == expected  # every cent, once
        assert period.totals.input_tokens == 1200  # tokens too
        assert period.totals.requests < 120  # merged ones count as money, not requests
    finally:
        await client.close()
        await server.stop(grace=None)
