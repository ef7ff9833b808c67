"""The control loop end to end in one process: state in, snapshots out, sidecar ACKs, statuses."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from decimal import Decimal
from typing import Any

import pytest

from tokenomy_api.clock import ManualClock
from tokenomy_api.usage_protocol import Report, RequestUsage, SidecarMessage
from tokenomy_operator.controller import Controller
from tokenomy_operator.spend.usage import UsageService
from tokenomy_operator.state import Pod, PolicyStatus
from tokenomy_operator.status import Rollout, condition, policy_status
from tokenomy_operator.xds.server import AdsServer, serve
from tokenomy_operator.xds.snapshot import SnapshotCache
from tokenomy_sidecar.app import Sidecar, SidecarSettings
from tokenomy_sidecar.credentials import Credentials
from tokenomy_sidecar.xds_client import XdsSource

from helpers import policy_doc, route_doc


class MemoryWriter:
    def __init__(self) -> None:
        self.statuses: dict[tuple[str, str, str], dict[str, Any]] = {}
        self.events: list[tuple[str, str, str, str, str, str]] = []
        self.patches = 0

    async def patch_status(
        self, plural: str, namespace: str, name: str, status: dict[str, Any]
    ) -> None:
        self.statuses[(plural, namespace, name)] = status
        self.patches += 1

    async def event(
        self, kind: str, namespace: str, name: str, type_: str, reason: str, message: str
    ) -> None:
        self.events.append((kind, namespace, name, type_, reason, message))


def test_condition_keeps_its_transition_time_while_unchanged() -> None:
    first = condition("Ready", True, "Compiled", "ok", 1, [], "t1")
    same = condition("Ready", True, "Compiled", "ok", 2, [first], "t2")
    flipped = condition("Ready", False, "InvalidSpec", "bad", 3, [same], "t3")
    assert (
        first["lastTransitionTime"],
        same["lastTransitionTime"],
        flipped["lastTransitionTime"],
    ) == ("t1", "t1", "t3")
    assert same["observedGeneration"] == 2


@pytest.mark.parametrize(
    ("rollout", "applied", "reason"),
    [
        (Rollout(0, 0, 0), "True", "AllAcknowledged"),
        (Rollout(3, 3, 0), "True", "AllAcknowledged"),
        (Rollout(3, 2, 0), "False", "Pending"),
        (Rollout(3, 2, 1, ("missing key",)), "False", "Rejected"),
    ],
)
def test_applied_condition(rollout: Rollout, applied: str, reason: str) -> None:
    observed = PolicyStatus(1, True, "Compiled", "", "v1", ())
    status = policy_status(observed, rollout, {}, "now")
    _, applied_condition, _, _ = status["conditions"]
    assert (applied_condition["status"], applied_condition["reason"]) == (applied, reason)
    assert status["sidecars"] == {
        "matched": rollout.matched,
        "acknowledged": rollout.acknowledged,
        "rejecting": rollout.rejecting,
        "unmanaged": 0,
    }


@pytest.mark.parametrize(
    ("unmanaged", "status", "named"),
    [
        ((), "True", ""),
        (("shop/a",), "False", "shop/a"),
        (tuple(f"shop/p{i:02}" for i in range(12)), "False", "shop/p09 and 2 more"),
    ],
)
def test_pods_without_a_sidecar_are_named(
    unmanaged: tuple[str, ...], status: str, named: str
) -> None:
    observed = PolicyStatus(1, True, "Compiled", "", "v1", (), unmanaged)
    out = policy_status(observed, Rollout(0, 0, 0), {}, "now")
    injected = out["conditions"][2]
    assert (injected["type"], injected["status"]) == ("SidecarsInjected", status)
    assert named in injected["message"]
    assert out["sidecars"]["unmanaged"] == len(unmanaged)


SAVES_NOTHING = "routing.complexity: model mine supports no saving at 99 % …"


@pytest.mark.parametrize(
    ("no_effect", "notices", "status", "reason", "message"),
    [
        ("", [], "True", "AllInEffect", "every field the spec sets is acted on"),
        ("spec.batching.enabled: has no effect", [], "False", "NoEffect",
         "spec.batching.enabled: has no effect"),
        # what sidecars found where the model was loaded, beside what the compiler found
        ("", [SAVES_NOTHING], "False", "NoEffect", SAVES_NOTHING),
        ("spec.tools: x", [SAVES_NOTHING], "False", "NoEffect", f"spec.tools: x; {SAVES_NOTHING}"),
    ],
)  # fmt: skip
def test_fields_without_effect_are_a_condition(
    no_effect: str, notices: list[str], status: str, reason: str, message: str
) -> None:
    observed = PolicyStatus(1, True, "Compiled", "", "v1", (), (), no_effect)
    found = policy_status(observed, Rollout(0, 0, 0), {}, "now", notices)["conditions"][3]
    assert (found["type"], found["status"], found["reason"]) == ("FieldsInEffect", status, reason)
    assert found["message"] == message


@pytest.fixture
async def loop() -> AsyncIterator[tuple[Controller, MemoryWriter, str]]:
    cache = SnapshotCache()
    ads = AdsServer(cache)
    grpc_server, port = await serve(ads, "127.0.0.1:0")
    writer = MemoryWriter()
    controller = Controller(cache, ads, writer, clock=ManualClock(), debounce=0.01)
    task = asyncio.create_task(controller.run())
    yield controller, writer, f"127.0.0.1:{port}"
    task.cancel()
    await grpc_server.stop(None)


async def until(predicate: Any, timeout: float = 5.0) -> None:
    for _ in range(int(timeout / 0.01)):
        if predicate():
            return
        await asyncio.sleep(0.01)
    raise AssertionError("condition not met in time")


async def test_policy_reaches_the_sidecar_and_status_says_applied(loop: Any) -> None:
    controller, writer, address = loop
    state = controller.state
    state.routes[("ns", "chat")] = route_doc()
    state.policies[("ns", "agent")] = policy_doc()
    state.pods[("ns", "agent-1")] = Pod("ns", "agent-1", {"app": "agent"}, injected=True)
    controller.poke()
    sidecar = Sidecar(SidecarSettings(listen_port=0, metrics_port=0, metrics_host="127.0.0.1"))
    source = XdsSource(
        address,
        "ns/agent-1",
        sidecar.holder,
        sidecar.metrics,
        Credentials(),
        backoff_base=0.02,
        backoff_max=0.1,
    )
    client = asyncio.create_task(source.run())
    try:
        await until(lambda: sidecar.holder.current is not None)
        key = ("costpolicies", "ns", "agent")
        await until(
            lambda: (
                key in writer.statuses and writer.statuses[key]["conditions"][1]["status"] == "True"
            )
        )
        status = writer.statuses[key]
        assert status["sidecars"] == {
            "matched": 1,
            "acknowledged": 1,
            "rejecting": 0,
            "unmanaged": 0,
        }
        assert status["configVersion"] == sidecar.holder.current.config.version
        assert status["conditions"][0]["reason"] == "Compiled"
        assert (
            "CostPolicy",
            "ns",
            "agent",
            "Normal",
            "AllAcknowledged",
            f"Applied: 1 sidecar(s) run version {status['configVersion']}",
        ) in writer.events
        route_key = ("modelroutes", "ns", "chat")
        assert writer.statuses[route_key]["conditions"][0]["status"] == "True"

        # An invalid change: Ready=False names the field; the sidecar keeps its version.
        old = sidecar.holder.current.config.version
        controller.state.policies[("ns", "agent")] = policy_doc(
            routing={"domains": [{"name": "d", "tier": "nope", "keywords": ["x"]}]}
        )
        controller.poke()
        await until(lambda: writer.statuses[key]["conditions"][0]["status"] == "False")
        ready = writer.statuses[key]["conditions"][0]
        assert ready["reason"] == "InvalidSpec"
        assert (
            'spec.routing.domains[0].tier: ModelRoute "chat" has no tier "nope"' in ready["message"]
        )
        assert writer.statuses[key]["configVersion"] == old
        await asyncio.sleep(0.1)
        assert sidecar.holder.current.config.version == old

        # A valid change reaches the sidecar as a new version.
        controller.state.policies[("ns", "agent")] = policy_doc(output={"maxTokens": 99})
        controller.poke()
        await until(lambda: sidecar.holder.current.config.output.max_tokens == 99)
        await until(lambda: writer.statuses[key]["conditions"][0]["status"] == "True")
        assert writer.statuses[key]["configVersion"] == sidecar.holder.current.config.version
        await until(lambda: source.acked == controller.replies["ns/agent-1"].acked)
    finally:
        client.cancel()
        await sidecar.stop()


async def test_acks_never_recompile_and_an_alert_change_pushes_nothing(loop: Any) -> None:
    controller, writer, address = loop
    state = controller.state
    reconciles: list[int] = []
    reconcile = state.reconcile
    state.reconcile = lambda: (reconciles.append(1), reconcile())[1]  # type: ignore[method-assign]
    replies: list[str] = []
    controller.ads.listeners.append(lambda node, type_url, version, error: replies.append(version))
    state.routes[("ns", "chat")] = route_doc()
    state.policies[("ns", "agent")] = policy_doc()
    for i in range(3):
        state.pods[("ns", f"agent-{i}")] = Pod("ns", f"agent-{i}", {"app": "agent"}, injected=True)
    controller.poke()
    sidecars = [Sidecar(SidecarSettings(listen_port=0, metrics_port=0)) for _ in range(3)]
    sources = [
        XdsSource(address, f"ns/agent-{i}", s.holder, s.metrics, Credentials(), backoff_base=0.02)
        for i, s in enumerate(sidecars)
    ]
    clients = [asyncio.create_task(source.run()) for source in sources]
    key = ("costpolicies", "ns", "agent")
    try:
        await until(
            lambda: key in writer.statuses and writer.statuses[key]["sidecars"]["acknowledged"] == 3
        )
        assert len(reconciles) == 1  # three ACKs rewrote the status without a reconcile
        version = writer.statuses[key]["configVersion"]
        assert {s.holder.current.config.version for s in sidecars} == {version}  # type: ignore[union-attr]
        compiled = state.compiled["ns"]

        # The operator's own write of status is no input to the compiler.
        state.policies[("ns", "agent")] = {**policy_doc(), "status": writer.statuses[key]}
        controller.poke()
        await until(lambda: len(reconciles) == 2)
        assert state.compiled["ns"] is compiled

        # Alerts are operator-only: a new threshold changes no sidecar's config.
        pushed = len(replies)
        state.policies[("ns", "agent")] = policy_doc(alerts={"costSpike": {"threshold": 300}})
        controller.poke()
        await until(lambda: len(reconciles) == 3)
        await asyncio.sleep(0.2)
        assert state.compiled["ns"] is not compiled  # recompiled, to the same config
        assert len(replies) == pushed  # nothing was sent, so nothing was answered
        assert controller.latest is not None
        assert controller.latest.configs["ns/agent"].version == version
        assert controller.latest.specs["ns/agent"].alerts.cost_spike.threshold == 300
    finally:
        for client in clients:
            client.cancel()
        for sidecar in sidecars:
            await sidecar.stop()


async def test_unchanged_status_is_not_rewritten(loop: Any) -> None:
    controller, writer, _ = loop
    controller.state.routes[("ns", "chat")] = route_doc()
    controller.state.policies[("ns", "agent")] = policy_doc()
    await controller.sync()
    patches = writer.patches
    await controller.sync()
    assert writer.patches == patches


async def test_deleted_pod_snapshot_is_dropped(loop: Any) -> None:
    controller, _, _ = loop
    controller.state.routes[("ns", "chat")] = route_doc()
    controller.state.policies[("ns", "agent")] = policy_doc()
    controller.state.pods[("ns", "p")] = Pod("ns", "p", {"app": "agent"}, injected=True)
    await controller.sync()
    assert controller.cache.nodes() == ["ns/p"]
    del controller.state.pods[("ns", "p")]
    await controller.sync()
    assert controller.cache.nodes() == []


async def test_spend_reaches_status_and_survives_an_operator_restart() -> None:
    """No loss and no double count: status.spend carries spend and the last report numbers."""
    budget = {"amount": "10", "period": "monthly"}

    def operator(state_from: Controller | None = None) -> tuple[Controller, MemoryWriter]:
        cache = SnapshotCache()
        writer = MemoryWriter()
        controller = Controller(cache, AdsServer(cache), writer, clock=ManualClock(), debounce=0.01)
        controller.usage = UsageService(controller.budget_of, ManualClock(), ready=False)
        if state_from is not None:
            controller.state = state_from.state
        return controller, writer

    first, writer = operator()
    first.state.routes[("ns", "chat")] = route_doc()
    first.state.policies[("ns", "agent")] = policy_doc(budget=budget)
    await first.sync()
    usage = first.usage
    assert usage is not None
    assert usage.seen("ns/agent").is_set()  # the status was read: reports may count now
    reports = [Report(number=n, cost_usd="0.25") for n in (1, 2, 3)]
    usage.handle(SidecarMessage(holder="ns/agent-1#a", policy="ns/agent", reports=reports))
    await first.sync()
    spend = writer.statuses[("costpolicies", "ns", "agent")]["spend"]
    assert spend["amount"] == "0.75"
    assert spend["budgetUsed"] == "7%"
    assert spend["periodStart"] == "1970-01-01T00:00:00Z"
    assert spend["periodEnd"] == "1970-02-01T00:00:00Z"
    assert spend["reports"] == [{"holder": "ns/agent-1#a", "number": 3}]

    # The operator restarts: its state (with the status) comes back from the API server.
    first.state.policies[("ns", "agent")]["status"] = writer.statuses[
        ("costpolicies", "ns", "agent")
    ]
    second, writer2 = operator(first)
    assert second.usage is not None
    assert not second.usage.seen("ns/agent").is_set()  # reports wait for the restore
    await second.sync()
    assert second.usage.periods["ns/agent"].ledger.spent == Decimal("0.75")
    # The sidecar sends again what it had not seen acknowledged, and one new report.
    again = [*reports, Report(number=4, cost_usd="0.25")]
    answer = second.usage.handle(
        SidecarMessage(holder="ns/agent-1#a", policy="ns/agent", reports=again)
    )
    # Counted, but not in status yet: the sidecar must keep report 4 until it is.
    assert answer.acknowledged == 3
    await second.sync()
    assert writer2.statuses[("costpolicies", "ns", "agent")]["spend"]["amount"] == "1.00"
    assert second.usage.acknowledged("ns/agent", "ns/agent-1#a") == 4


async def test_budget_thresholds_raise_events_and_exhaustion_a_condition() -> None:
    cache = SnapshotCache()
    writer = MemoryWriter()
    controller = Controller(cache, AdsServer(cache), writer, clock=ManualClock(), debounce=0.01)
    usage = controller.usage = UsageService(controller.budget_of, ManualClock(), ready=False)
    controller.state.routes[("ns", "chat")] = route_doc()
    budget = {"amount": "10", "warnAt": [50, 80], "onExceeded": "downgrade"}
    controller.state.policies[("ns", "agent")] = policy_doc(budget=budget)
    key = ("costpolicies", "ns", "agent")
    number = 0

    async def spend(usd: str) -> dict[str, Any]:
        nonlocal number
        number += 1
        report = Report(number=number, cost_usd=usd)
        usage.handle(SidecarMessage(holder="ns/a#1", policy="ns/agent", reports=[report]))
        await controller.sync()
        # What the API server would hand back to the next sync.
        controller.state.policies[("ns", "agent")]["status"] = writer.statuses[key]
        return {c["type"]: c for c in writer.statuses[key]["conditions"]}

    def warnings() -> list[tuple[str, str]]:
        return [(e[4], e[5]) for e in writer.events if e[3] == "Warning"]

    await controller.sync()
    conditions = await spend("4")
    assert conditions["BudgetExceeded"]["status"] == "False"
    assert warnings() == []
    await spend("4.5")  # 85 %: past both soft thresholds at once
    assert warnings() == [
        ("BudgetThreshold", "50% of the budget is spent (8.5 USD)"),
        ("BudgetThreshold", "80% of the budget is spent (8.5 USD)"),
    ]
    conditions = await spend("2")
    exceeded = conditions["BudgetExceeded"]
    assert (exceeded["status"], exceeded["reason"]) == ("True", "BudgetSpent")
    assert "10.5 of 10 USD spent this monthly period" in exceeded["message"]
    assert warnings()[-1][0] == "BudgetSpent"  # the transition is a Warning Event
    await spend("1")
    assert len(warnings()) == 3  # nothing new to say


def usage_report(number: int, **fields: Any) -> Report:
    usage = RequestUsage(**{"cost": Decimal("0.01"), "route": "chat", "tier": "small",
                            "cache": "miss", "input_tokens": 100, "output_tokens": 50, **fields})  # fmt: skip
    return usage.report(number)


def counting(
    policy: dict[str, Any],
) -> tuple[Controller, MemoryWriter, UsageService, ManualClock, SnapshotCache]:
    """A controller that counts usage reports, for the route ``chat`` and ``policy``."""
    clock = ManualClock()
    cache = SnapshotCache()
    writer = MemoryWriter()
    controller = Controller(cache, AdsServer(cache), writer, clock=clock, debounce=0.01)
    usage = controller.usage = UsageService(controller.budget_of, clock, ready=False)
    controller.state.routes[("ns", "chat")] = route_doc()
    controller.state.policies[("ns", "agent")] = policy
    return controller, writer, usage, clock, cache


async def test_status_sums_what_sidecars_report_and_a_restart_resumes_it() -> None:
    controller, writer, usage, clock, cache = counting(policy_doc())
    await controller.sync()
    team = (("team", "growth"),)
    reports = [
        usage_report(1, labels=team, task="t1", saved=Decimal("0.02")),
        usage_report(2, labels=team, task="t1", tier="large", reference=True),
        usage_report(3, cost=Decimal(0), cache="semantic", input_tokens=0, output_tokens=0,
                     task="t2", saved=Decimal("0.03")),
    ]  # fmt: skip
    usage.handle(SidecarMessage(holder="ns/a#1", policy="ns/agent", reports=reports))
    await controller.sync()
    status = writer.statuses[("costpolicies", "ns", "agent")]
    assert status["spend"]["amount"] == "0.02"
    assert status["savings"] == "0.05"
    assert status["cacheHitRate"] == "33%"
    assert status["tierShares"] == [
        {"tier": "large", "share": "50%"},
        {"tier": "small", "share": "50%"},
    ]
    assert status["spenders"] == [
        {"key": "team", "value": "growth", "cost": "0.02", "tokens": 300, "requests": 2}
    ]
    assert status["tasks"]["count"] == 2
    assert status["tasks"]["costPerTask"] == "0.010000"
    assert controller.metrics.policy_tasks.labels("ns", "agent")._value.get() == 2

    # A restarted operator resumes the totals with the report numbers: a replay adds nothing.
    controller.state.policies[("ns", "agent")]["status"] = status
    restarted = Controller(cache, AdsServer(cache), writer, clock=clock, debounce=0.01)
    restarted.state = controller.state
    usage = restarted.usage = UsageService(restarted.budget_of, clock, ready=False)
    await restarted.sync()
    usage.handle(SidecarMessage(holder="ns/a#1", policy="ns/agent",
                                reports=[*reports, usage_report(4, task="t1")]))  # fmt: skip
    await restarted.sync()
    again = writer.statuses[("costpolicies", "ns", "agent")]
    assert again["usage"]["requests"] == 4
    assert again["tasks"]["count"] == 2  # t1 again, not a new task
    assert again["spend"]["amount"] == "0.03"

    # The month turns: its totals become the previousPeriod baseline.
    clock.advance(40 * 86400)
    await restarted.sync()
    turned = writer.statuses[("costpolicies", "ns", "agent")]
    assert turned["previousPeriod"]["amount"] == "0.03"
    assert turned["previousPeriod"]["usage"]["requests"] == 4
    assert turned["previousPeriod"]["start"] == "1970-01-01T00:00:00Z"
    assert turned["previousPeriod"]["end"] == "1970-02-01T00:00:00Z"

    # The policy is deleted: its counts are forgotten.
    del restarted.state.policies[("ns", "agent")]
    await restarted.sync()
    assert "ns/agent" not in usage.periods
    assert "ns/agent" not in usage.previous


async def test_alerts_become_conditions_and_events() -> None:
    """A steady day, then an hour of everything getting worse: each alert fires, once."""
    clock = ManualClock()
    clock.now = 1_000_000 * 600.0
    cache = SnapshotCache()
    writer = MemoryWriter()
    controller = Controller(
        cache, AdsServer(cache), writer, clock=clock, debounce=0.01, alert_hold=900
    )
    usage = controller.usage = UsageService(controller.budget_of, clock, ready=True)
    controller.state.routes[("ns", "chat")] = route_doc()
    controller.state.policies[("ns", "agent")] = policy_doc(
        alerts={"costSpike": {"threshold": 100}}
    )
    key = ("costpolicies", "ns", "agent")
    number = 0

    def send(count: int, **fields: Any) -> None:
        nonlocal number
        batch = []
        for _ in range(count):
            number += 1
            batch.append(usage_report(number, **fields))
        usage.handle(SidecarMessage(holder="ns/a#1", policy="ns/agent", reports=batch))

    def conditions() -> dict[str, dict[str, Any]]:
        return {c["type"]: c for c in writer.statuses[key]["conditions"]}

    await controller.sync()
    assert conditions()["CostSpike"]["reason"] == "NotEnoughData"
    assert not [e for e in writer.events if e[5].startswith(ALERTS)]  # quiet alerts: no Events
    for _ in range(24 * 6):  # a steady day: every 10 minutes 7 misses on small, 3 hits
        send(7)
        send(3, cost=Decimal(0), cache="exact", input_tokens=0, output_tokens=0)
        clock.advance(600)
    await controller.sync()
    assert {
        c["reason"]
        for n, c in conditions().items()
        # No task ends in this traffic: TokensPerTaskUp has nothing to judge.
        if n not in {"Ready", "Applied", "SidecarsInjected", "FieldsInEffect", "TokensPerTaskUp"}
    } == {"WithinBaseline"}
    for _ in range(6):  # an hour: 3x the spend, longer prompts, no hits, all on the large tier
        send(10, cost=Decimal("0.03"), tier="large", reference=True, input_tokens=200)
        clock.advance(600)
    await controller.sync()
    pending = conditions()
    # Spend per hour is 3x (threshold 100 % from the policy), tokens 1.7x, hits 30 % -> 0 %,
    # largest tier 0 % -> 100 %: all breached, none held for 15 minutes yet.
    assert {pending[c]["reason"] for c in ALERTS} == {"Pending"}
    assert pending["CostSpike"]["message"].startswith(
        "last hour: 1.8000 USD/h; the previous day: 0.4296 USD/h (up more than 100%); for 0s"
    )
    assert (
        "a cache hit rate of 0.0%; the previous day: a cache hit rate of 29.8%"
        in (pending["CacheHitRateDown"]["message"])
    )
    clock.advance(900)
    send(10, cost=Decimal("0.03"), tier="large", reference=True, input_tokens=200)
    await controller.sync()
    fired = conditions()
    assert {fired[c]["status"] for c in ALERTS} == {"True"}
    assert "the previous day" in fired["CostSpike"]["message"]
    warnings = [(e[4], e[5].split(":")[0]) for e in writer.events if e[3] == "Warning"]
    assert sorted(warnings) == sorted(("Breached", c) for c in ALERTS)
    assert controller.metrics.policy_alert.labels("ns", "agent", "CostSpike")._value.get() == 1


ALERTS = ("CostSpike", "TokensPerRequestUp", "CacheHitRateDown", "LargestTierShareUp")


def test_sidecars_long_silent_leave_status() -> None:
    """Pods come and go with a new name per start: status keeps only recent names."""
    clock = ManualClock()
    usage = UsageService(lambda p: None, clock)
    usage.handle(SidecarMessage(holder="ns/old#1", policy="ns/agent", reports=[usage_report(1)]))
    clock.advance(23 * 3600)
    usage.handle(SidecarMessage(holder="ns/new#2", policy="ns/agent", reports=[usage_report(1)]))
    holders = [r["holder"] for r in usage.status("ns/agent")["spend"]["reports"]]
    assert holders == ["ns/new#2", "ns/old#1"]
    clock.advance(2 * 3600)  # old: silent for 25 hours
    spend = usage.status("ns/agent")["spend"]
    assert [r["holder"] for r in spend["reports"]] == ["ns/new#2"]
    assert spend["amount"] == "0.02"  # what it spent stays counted
