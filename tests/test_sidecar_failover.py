"""Backend failover within a tier: faults move on within the retry budget; streams never resend."""

from __future__ import annotations

import asyncio

import aiohttp
import openai
import pytest

from helpers import backend, policy_doc, route_doc
from support import LiveSidecar, RunningStandin, SidecarFactory, StandinFactory

USER = [{"role": "user", "content": "hello"}]


async def two_backends(
    standin: StandinFactory, sidecar: SidecarFactory, attempts: int = 3, timeout: str = "30s"
) -> tuple[LiveSidecar, RunningStandin, RunningStandin]:
    """Tier with a preferred spot backend and an on-demand fallback; no cache."""
    preferred = await standin(name="preferred")
    fallback = await standin(name="fallback")
    route = route_doc(
        namespace="default",
        tiers=[
            {
                "name": "only",
                "backends": [
                    backend("preferred", url=preferred.url, capacity="spot"),
                    backend("fallback", url=fallback.url),
                ],
            }
        ],
        retry={"attempts": attempts, "timeout": timeout},
    )
    policy = policy_doc(namespace="default", cache={"exact": {"enabled": False}})
    return await sidecar(route, policy), preferred, fallback


@pytest.mark.parametrize("fault", ["500", "429", "drop", "slow"])
async def test_fault_moves_on_to_the_next_backend(
    standin: StandinFactory, sidecar: SidecarFactory, fault: str
) -> None:
    running, preferred, _fallback = await two_backends(standin, sidecar, timeout="300ms")
    preferred.settings.faults.append(fault)
    preferred.settings.slow_seconds = 1.0
    response = await running.client().chat.completions.with_raw_response.create(
        model="chat", messages=USER
    )
    assert response.headers["x-tokenomy-backend"] == "fallback"
    assert response.parse().choices[0].message.content == "fallback answers: hello"
    reason = {"500": "status_500", "429": "status_429", "drop": "connect", "slow": "timeout"}[fault]
    assert running.metric("tokenomy_upstream_errors_total", backend="preferred", reason=reason) == 1
    assert running.metric("tokenomy_upstream_retries_total") == 1
    # The failed endpoint is ejected for a while: the next request goes straight to the fallback.
    again = await running.client().chat.completions.with_raw_response.create(
        model="chat", messages=USER
    )
    assert again.headers["x-tokenomy-backend"] == "fallback"
    assert len(preferred.settings.requests) == 1


async def test_retry_budget_is_respected(standin: StandinFactory, sidecar: SidecarFactory) -> None:
    running, preferred, fallback = await two_backends(standin, sidecar, attempts=2)
    preferred.settings.faults.append("500")
    fallback.settings.faults.append("500")
    with pytest.raises(openai.InternalServerError):
        await running.client().chat.completions.create(model="chat", messages=USER)
    assert len(preferred.settings.requests) + len(fallback.settings.requests) == 2


async def test_every_backend_down_is_a_502_naming_the_tries(
    standin: StandinFactory, sidecar: SidecarFactory
) -> None:
    running, preferred, fallback = await two_backends(standin, sidecar, attempts=2)
    await preferred.stop()
    await fallback.stop()
    async with aiohttp.ClientSession() as session:
        body = {"model": "chat", "messages": USER}
        async with session.post(running.url + "/chat/completions", json=body) as response:
            assert response.status == 502
            error = (await response.json())["error"]
    assert error["code"] == "upstream_unavailable"
    assert "preferred: connect" in error["message"]
    assert "fallback: connect" in error["message"]


async def test_stream_fails_over_before_the_first_byte(
    standin: StandinFactory, sidecar: SidecarFactory
) -> None:
    running, preferred, _ = await two_backends(standin, sidecar)
    preferred.settings.faults.append("500")
    stream = await running.client().chat.completions.create(
        model="chat", messages=USER, stream=True
    )
    text = "".join([c.choices[0].delta.content or "" async for c in stream if c.choices])
    assert text == "fallback answers: hello"


async def test_stream_cut_midway_is_an_error_not_a_silent_end(
    standin: StandinFactory, sidecar: SidecarFactory
) -> None:
    running, preferred, fallback = await two_backends(standin, sidecar)
    preferred.settings.reply = " ".join(f"w{i}" for i in range(40))
    preferred.settings.faults.append("mid-stream-drop")
    stream = await running.client().chat.completions.create(
        model="chat", messages=USER, stream=True
    )
    with pytest.raises(openai.APIConnectionError):
        async for _ in stream:
            pass
    assert fallback.settings.requests == []  # never resent after bytes went out
    assert running.metric("tokenomy_upstream_errors_total", reason="stream_cut") == 1
    # Billed although no usage arrived: the prompt, and a token per chunk relayed.
    assert running.metric("tokenomy_cost_usd_total") > 0


async def test_a_stream_the_client_leaves_is_read_to_the_end_and_billed(
    standin: StandinFactory, sidecar: SidecarFactory
) -> None:
    running, preferred, _ = await two_backends(standin, sidecar)
    preferred.settings.reply = " ".join(f"w{i}" for i in range(40))
    preferred.settings.chunks = 40
    preferred.settings.chunk_interval = 0.01
    stream = await running.client().chat.completions.create(
        model="chat", messages=USER, stream=True
    )
    async for _ in stream:
        pass
    whole = running.metric("tokenomy_cost_usd_total")
    assert whole > 0
    body = {"model": "chat", "messages": USER, "stream": True}
    async with (
        aiohttp.ClientSession() as session,
        session.post(running.url + "/chat/completions", json=body) as response,
    ):
        await response.content.readany()  # the first chunk, then the client leaves
    for _ in range(300):
        if running.metric("tokenomy_cost_usd_total") > whole:
            break
        await asyncio.sleep(0.01)
    # The provider bills the whole answer: so does the sidecar, not an error.
    assert running.metric("tokenomy_cost_usd_total") == pytest.approx(2 * whole, rel=0.01)
    assert running.metric("tokenomy_client_disconnects_total") == 1
    assert running.metric("tokenomy_upstream_errors_total", reason="stream_cut") == 0


async def test_a_stream_that_stalls_after_its_first_byte_is_ended_as_cut(
    standin: StandinFactory, sidecar: SidecarFactory
) -> None:
    model = await standin(name="m", reply=" ".join(f"w{i}" for i in range(40)))
    model.settings.slow_seconds = 3
    model.settings.faults.append("mid-stream-stall")
    route = route_doc(
        namespace="default", tiers=[{"name": "t", "backends": [backend("m", url=model.url)]}]
    )
    policy = policy_doc(namespace="default", cache={"exact": {"enabled": False}})
    running = await sidecar(route, policy, stream_idle_seconds=0.3)
    stream = await running.client().chat.completions.create(
        model="chat", messages=USER, stream=True
    )
    started = asyncio.get_running_loop().time()
    with pytest.raises(openai.APIConnectionError):
        async for _ in stream:
            pass
    assert asyncio.get_running_loop().time() - started < 2  # not the backend's 3 s
    assert running.metric("tokenomy_upstream_errors_total", reason="stream_cut") == 1
    assert running.metric("tokenomy_cost_usd_total") > 0  # billed, as estimated


async def test_killing_the_preferred_backend_mid_run_loses_no_request(
    standin: StandinFactory, sidecar: SidecarFactory
) -> None:
    running, preferred, fallback = await two_backends(standin, sidecar)
    preferred.settings.latency = 0.005
    fallback.settings.latency = 0.005
    client = running.client()
    outcomes: list[str] = []

    async def one() -> None:
        response = await client.chat.completions.with_raw_response.create(
            model="chat", messages=USER
        )
        outcomes.append(response.headers["x-tokenomy-backend"])

    async def load(count: int) -> None:
        sem = asyncio.Semaphore(16)

        async def bounded() -> None:
            async with sem:
                await one()

        await asyncio.gather(*(bounded() for _ in range(count)))

    loader = asyncio.create_task(load(400))
    while len(outcomes) < 100:
        await asyncio.sleep(0.005)
    await preferred.stop()  # in-flight requests on it are cut too
    await loader
    assert len(outcomes) == 400
    assert outcomes.count("preferred") >= 100
    assert outcomes[-50:] == ["fallback"] * 50
    assert running.metric("tokenomy_requests_total", code="200") == 400
