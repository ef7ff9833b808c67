"""Thresholds that tune themselves (#20): tightened below the floor, loosened well above it,
never oscillating; and, end to end, a drifting cheap tier brought back above the floor."""

from __future__ import annotations

import asyncio
import contextlib
import random
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Any

import openai
import pytest

from test_controller import MemoryWriter
from tokenomy_api.clock import SystemClock
from tokenomy_api.compiler import compile_configs
from tokenomy_api.costpolicy import AutoTune
from tokenomy_api.resources import parse_documents
from tokenomy_operator.controller import Controller
from tokenomy_operator.spend.tuning import MIN_TO_TIGHTEN, Tuned, decide, tune
from tokenomy_operator.spend.usage import UsageService, add_to_server
from tokenomy_operator.state import Pod
from tokenomy_operator.xds.server import AdsServer, serve
from tokenomy_operator.xds.snapshot import SnapshotCache
from tokenomy_sidecar.app import Sidecar, SidecarSettings
from tokenomy_sidecar.credentials import Credentials
from tokenomy_sidecar.xds_client import XdsSource
from tokenomy_standin.server import Scripted

from helpers import backend, policy_doc, route_doc
from support import StandinFactory

SPEC = AutoTune(enabled=True, step=0.05, max_offset=0.2, min_samples=50)
NOW = "2026-12-03T10:00:00Z"


def after(tuned: Tuned, compared: int, agreed: int) -> tuple[Tuned, str]:
    state, change = decide(tuned, compared, agreed, 0.95, 0.9, SPEC, NOW)
    return state, change.reason if change else ""


@pytest.mark.unit
@pytest.mark.parametrize(
    ("tuned", "compared", "agreed", "offset", "reason"),
    [
        (Tuned("cascade"), 9, 0, 0.0, ""),  # below MIN_TO_TIGHTEN comparisons: wait
        (Tuned("cascade"), MIN_TO_TIGHTEN, 5, 0.05, "ThresholdTightened"),
        (Tuned("cascade"), 40, 38, 0.0, ""),  # 95 %: the interval straddles the floor
        (Tuned("cascade", offset=0.2), 40, 10, 0.2, ""),  # at maxOffset: no further
        (Tuned("cascade", offset=0.18), 40, 10, 0.2, "ThresholdTightened"),  # capped
        (Tuned("cascade", offset=0.1), 60, 60, 0.05, "ThresholdLoosened"),
        (Tuned("cascade", offset=0.1), 40, 40, 0.1, ""),  # too few to loosen
        (Tuned("cascade", offset=0.1, known_bad=0.05), 200, 200, 0.1, ""),  # not back there
        (Tuned("cascade", offset=0.1, base_compared=100, base_agreed=50), 105, 105, 0.1, ""),
        # A new period: counts restarted below the base; evidence counts from zero again.
        (Tuned("cascade", base_compared=500, base_agreed=490), 12, 2, 0.05, "ThresholdTightened"),
    ],
)
def test_one_step_at_a_time_on_the_evidence_since_the_last_change(
    tuned: Tuned, compared: int, agreed: int, offset: float, reason: str
) -> None:
    state, why = after(tuned, compared, agreed)
    assert (state.offset, why) == (offset, reason)
    if reason:
        assert (state.base_compared, state.base_agreed, state.changed) == (compared, agreed, NOW)
    if reason == "ThresholdTightened":
        assert state.known_bad == tuned.offset  # where it failed


@pytest.mark.unit
def test_changes_name_their_evidence() -> None:
    tuning, changes = tune(
        [], {"comparisons": [{"lever": "routing", "compared": 20, "agreed": 10},
                             {"lever": "tier", "compared": 20, "agreed": 10}]},
        0.95, 0.9, SPEC, NOW,
    )  # fmt: skip
    assert [t["lever"] for t in tuning] == ["routing"]  # the default tier has no threshold
    assert tuning[0]["offset"] == 0.05
    (change,) = changes
    assert change.message.startswith("routing: tightened 0 -> 0.05: 10 of 20 comparisons agreed")
    assert "floor 95.0%" in change.message


@pytest.mark.unit
@pytest.mark.parametrize("seed", range(5))
def test_a_lever_never_swings_between_offsets(seed: int) -> None:
    """Quality that rises with the offset (90 % untouched, +1 point per 0.01) around a 95 %
    floor: tuning settles and never returns to an offset it left for being below."""
    rng = random.Random(seed)
    tuned = Tuned("cascade")
    agreed = 0
    offsets = [0.0]
    for compared in range(1, 5001):
        quality = min(1.0, 0.90 + tuned.offset)
        agreed += rng.random() < quality
        tuned, change = decide(tuned, compared, agreed, 0.95, 0.9, SPEC, NOW)
        if change is not None:
            offsets.append(tuned.offset)
    assert len(offsets) <= 4  # settles within a few changes
    assert tuned.offset >= 0.05  # where quality meets the floor
    for i, offset in enumerate(offsets[2:], start=2):
        assert offset != offsets[i - 2] or offsets[i - 1] == offset  # no A -> B -> A


# --- end to end: a cheap tier that drifts, the cascade tightened back above the floor ----

QUESTIONS = [f"question {i}" for i in range(60)]


def confidence(i: int) -> float:
    """The small tier's confidence in question ``i``'s answer: 0.70 to 0.99."""
    return 0.70 + 0.29 * (i % 30) / 29


def small_script(drifted: bool) -> dict[str, Scripted]:
    """Before the drift every answer is right; after it, those under 0.85 confidence are not."""
    import math  # noqa: PLC0415

    return {
        q: Scripted(("#### 2" if drifted and confidence(i) < 0.85 else "#### 1",),
                    logprob=math.log(confidence(i)))
        for i, q in enumerate(QUESTIONS)
    }  # fmt: skip


@dataclass
class Running:
    """A controller with its usage stream, one injected sidecar, and a client."""

    controller: Controller
    writer: MemoryWriter
    sidecar: Sidecar
    client: openai.AsyncOpenAI

    def tightened(self) -> float:
        """The cascade's tightening in the sidecar's config in force."""
        current = self.sidecar.holder.current
        return current.config.tuning.cascade if current is not None else 0.0

    async def ask(self, i: int) -> tuple[str, str]:
        """Question ``i``: the tier that answered, and the answer."""
        raw = await self.client.chat.completions.with_raw_response.create(
            model="chat", messages=[{"role": "user", "content": QUESTIONS[i % 60]}]
        )
        return raw.headers["x-tokenomy-tier"], raw.parse().choices[0].message.content or ""


@contextlib.asynccontextmanager
async def operator_and_sidecar(
    policy: dict[str, Any], route: dict[str, Any]
) -> AsyncIterator[Running]:
    """The operator's loop and usage stream in process, and a sidecar it configures."""
    cache = SnapshotCache()
    ads = AdsServer(cache)
    writer = MemoryWriter()
    controller = Controller(cache, ads, writer, clock=SystemClock(), debounce=0.01,
                            spend_interval=0.05, refresh_debounce=0.01)  # fmt: skip
    usage = controller.usage = UsageService(controller.budget_of, SystemClock())
    grpc_server, port = await serve(ads, "127.0.0.1:0", lambda s: add_to_server(usage, s))
    address = f"127.0.0.1:{port}"
    controller.state.routes[("ns", "chat")] = route
    controller.state.policies[("ns", "agent")] = policy
    controller.state.pods[("ns", "agent-1")] = Pod("ns", "agent-1", {"app": "agent"}, injected=True)
    loop_task = asyncio.create_task(controller.run())
    sidecar = Sidecar(SidecarSettings(listen_port=0, metrics_port=0, metrics_host="127.0.0.1",
                                      usage_address=address, node_id="ns/agent-1"))  # fmt: skip
    source = XdsSource(address, "ns/agent-1", sidecar.holder, sidecar.metrics, Credentials(),
                       backoff_base=0.02, backoff_max=0.1)  # fmt: skip
    await sidecar.start()
    xds_task = asyncio.create_task(source.run())
    client = openai.AsyncOpenAI(base_url=sidecar.api_url + "/v1", api_key="x", max_retries=0)
    try:
        for _ in range(500):
            if sidecar.holder.current is not None:
                break
            await asyncio.sleep(0.01)
        yield Running(controller, writer, sidecar, client)
    finally:
        await client.close()
        xds_task.cancel()
        await sidecar.stop()
        loop_task.cancel()
        await grpc_server.stop(None)


@pytest.mark.integration
async def test_a_drifting_cheap_tier_is_tightened_back_above_the_floor(
    standin: StandinFactory,
) -> None:
    small = await standin(name="small", script=small_script(drifted=False))
    large = await standin(name="large", reply="#### 1")
    tiers = [
        {"name": "small", "backends": [backend("s", url=small.url)]},
        {"name": "large", "backends": [backend("l", url=large.url)]},
    ]
    policy = policy_doc(
        cache={"exact": {"enabled": False}},
        cascade={"enabled": True, "tiers": ["small", "large"],
                 "confidence": {"method": "logprobs", "threshold": 0.7}},
        shadow={"enabled": True, "sample": 1.0, "maxSpendShare": 10.0,
                "autoTune": {"enabled": True, "step": 0.05, "maxOffset": 0.25, "minSamples": 50}},
    )  # fmt: skip
    async with operator_and_sidecar(policy, route_doc(tiers=tiers)) as running:
        for i in range(60):  # before the drift every kept answer is right: nothing moves
            await running.ask(i)
        await asyncio.sleep(0.3)
        assert running.tightened() == 0.0
        small.settings.script = small_script(drifted=True)
        kept_before = kept_right = asked = 0
        while running.tightened() < 0.15 and asked < 600:  # the drift: tuning must react
            tier, text = await running.ask(asked)
            asked += 1
            kept_before += tier == "small"
            kept_right += tier == "small" and text == "#### 1"
            await asyncio.sleep(0.005)  # let the verdicts reach the operator meanwhile
        assert running.tightened() >= 0.15, f"not tightened after {asked} requests"
        assert kept_right / kept_before < 0.9  # the drift was real while it lasted
        # Stated in the README: back to a threshold that keeps right answers within 400.
        assert asked <= 400
        kept = right = 0
        for i in range(120):
            tier, text = await running.ask(i)
            kept += tier == "small"
            right += tier == "small" and text == "#### 1"
        assert kept > 0
        assert right / kept >= 0.95  # quality back above the floor
        events = [e for e in running.writer.events if e[4] == "ThresholdTightened"]
        assert 3 <= len(events) <= 5
        assert "comparisons agreed since the last change" in events[0][5]
        status = running.writer.statuses[("costpolicies", "ns", "agent")]
        assert status["tuning"][0]["lever"] == "cascade"
        print(f"tightened to {running.tightened()} after {asked} drifted requests")


@pytest.mark.unit
@pytest.mark.parametrize(
    ("auto_tune", "offset", "compiled"),
    [(True, 0.1, 0.1), (False, 0.1, 0.0), (True, 0.9, 0.25)],  # off: ignored; capped
)
def test_the_compiler_puts_status_tuning_into_the_config(
    auto_tune: bool, offset: float, compiled: float
) -> None:
    doc = policy_doc(shadow={"enabled": True, "autoTune": {"enabled": auto_tune,
                                                            "maxOffset": 0.25}})  # fmt: skip
    doc["status"] = {"tuning": [{"lever": "routing", "offset": offset}]}
    resources = parse_documents([("", route_doc()), ("", doc)])
    config = compile_configs(resources.policies, resources.routes).configs["ns/agent"]
    assert config.tuning.routing == compiled
    assert config.tuning.cascade == 0.0
