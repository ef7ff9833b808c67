"""The control loop end to end in one process: state in, snapshots out, sidecar ACKs, statuses."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from typing import Any

import pytest

from tokenomy_api.clock import ManualClock
from tokenomy_api.names import SIDECAR_CONFIG_TYPE_URL
from tokenomy_operator.controller import Controller
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
    _, applied_condition = status["conditions"]
    assert (applied_condition["status"], applied_condition["reason"]) == (applied, reason)
    assert status["sidecars"] == {
        "matched": rollout.matched,
        "acknowledged": rollout.acknowledged,
        "rejecting": rollout.rejecting,
    }


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
        assert status["sidecars"] == {"matched": 1, "acknowledged": 1, "rejecting": 0}
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
        assert (
            source.acked
            == controller.ads.streams["ns/agent-1"].types[SIDECAR_CONFIG_TYPE_URL].acked
        )
    finally:
        client.cancel()
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
