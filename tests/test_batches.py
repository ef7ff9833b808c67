"""Batch jobs through the sidecar, with the official SDK, against a stand-in Batch API."""

from __future__ import annotations

import asyncio
import json
from typing import Any

import openai

from tokenomy_api.clock import ManualClock

from helpers import backend, policy_doc, route_doc
from support import LiveSidecar, SidecarFactory, StandinFactory

BATCH_PRICE = {"input": "2", "output": "8", "batchInput": "1", "batchOutput": "4"}
LIVE_PRICE = {"input": "2", "output": "8"}


def line(custom_id: str, question: str, model: str = "chat") -> dict[str, Any]:
    body = {"model": model, "messages": [{"role": "user", "content": question}]}
    return {"custom_id": custom_id, "method": "POST", "url": "/v1/chat/completions", "body": body}


async def run_batch(
    client: openai.AsyncOpenAI, lines: list[Any], cancel: bool = False
) -> tuple[Any, dict[str, Any], dict[str, Any]]:
    """Upload, create, wait; the batch and its output and error lines by custom id."""
    data = "".join((item if isinstance(item, str) else json.dumps(item)) + "\n" for item in lines)
    uploaded = await client.files.create(file=("in.jsonl", data.encode()), purpose="batch")
    batch = await client.batches.create(
        input_file_id=uploaded.id, endpoint="/v1/chat/completions", completion_window="24h"
    )
    if cancel:
        await asyncio.sleep(0.2)
        batch = await client.batches.cancel(batch.id)
    for _ in range(500):
        batch = await client.batches.retrieve(batch.id)
        if batch.status in ("completed", "cancelled", "failed"):
            break
        await asyncio.sleep(0.02)
    results: list[dict[str, Any]] = [{}, {}]
    for i, file_id in enumerate((batch.output_file_id, batch.error_file_id)):
        if file_id:
            text = (await client.files.content(file_id)).text
            results[i] = {
                item["custom_id"]: item["response"] for item in map(json.loads, text.splitlines())
            }
    return batch, results[0], results[1]


async def batch_sidecar(sidecar: SidecarFactory, url: str, price: dict[str, str]) -> LiveSidecar:
    tiers = [{"name": "only", "backends": [backend("b", url=url, price=price)]}]
    return await sidecar(
        route_doc(namespace="default", tiers=tiers),
        policy_doc(namespace="default", cache={"exact": {"enabled": True}}),
        batch_poll_seconds=0.02,
    )


async def test_a_batch_goes_to_the_providers_batch_api_and_cached_lines_are_never_sent(
    standin: StandinFactory, sidecar: SidecarFactory
) -> None:
    provider = await standin(name="provider")
    running = await batch_sidecar(sidecar, provider.url, BATCH_PRICE)
    client = running.client()
    await client.chat.completions.create(
        model="chat", messages=[{"role": "user", "content": "What is my balance?"}]
    )
    live_cost = running.metric("tokenomy_cost_usd_total")
    batch, out, errors = await run_batch(
        client,
        [
            line("a", "What is my balance?"),  # answered live before: from the cache
            line("b", "Where is my card?"),
            line("b2", "Where is my card?"),  # the same as b: sent once, b's answer
            line("c", "How do I reset my PIN?"),
            "{not json",
            line("d", "hello", model="no-such-model"),
        ],
    )
    assert batch.status == "completed"
    assert batch.request_counts is not None
    assert (batch.request_counts.total, batch.request_counts.completed) == (6, 4)
    assert sorted(out) == ["a", "b", "b2", "c"]
    assert out["b2"]["body"]["choices"] == out["b"]["body"]["choices"]
    assert (
        out["b"]["body"]["choices"][0]["message"]["content"]
        == "provider answers: Where is my card?"
    )
    assert out["a"]["status_code"] == 200
    sent = [b["messages"][0]["content"] for b in provider.settings.batch_requests]
    assert sorted(sent) == ["How do I reset my PIN?", "Where is my card?"]  # not "a"
    assert len(provider.settings.requests) == 1  # only the live request went live
    assert errors["d"]["status_code"] == 404
    assert errors["line-5"]["status_code"] == 400  # named by its line number
    # b and c billed at the batch price (half the list price here).
    usage = [out[k]["body"]["usage"] for k in ("b", "c")]
    expected = sum(u["prompt_tokens"] * 1 + u["completion_tokens"] * 4 for u in usage) / 1e6
    assert running.metric("tokenomy_cost_usd_total") - live_cost == round(expected, 12)
    assert running.metric("tokenomy_requests_total", cache="exact") == 2  # a and b2
    # The job's answers were stored: the same questions live now come from the cache.
    again = await client.chat.completions.with_raw_response.create(
        model="chat", messages=[{"role": "user", "content": "Where is my card?"}]
    )
    assert again.headers["x-tokenomy-cache"] == "exact"


async def test_a_backend_without_a_batch_api_answers_the_lines_live(
    standin: StandinFactory, sidecar: SidecarFactory
) -> None:
    provider = await standin(name="live")
    running = await batch_sidecar(sidecar, provider.url, LIVE_PRICE)
    batch, out, errors = await run_batch(
        running.client(), [line(str(i), f"question {i}") for i in range(12)]
    )
    assert batch.status == "completed"
    assert sorted(out, key=int) == [str(i) for i in range(12)]
    assert errors == {}
    assert provider.settings.batch_requests == []
    assert len(provider.settings.requests) == 12


async def test_a_cancelled_batch_answers_nothing_more_and_cancels_the_providers(
    standin: StandinFactory, sidecar: SidecarFactory
) -> None:
    provider = await standin(name="slow", batch_seconds=30)
    running = await batch_sidecar(sidecar, provider.url, BATCH_PRICE)
    batch, out, errors = await run_batch(
        running.client(), [line("x", "one"), line("y", "two")], cancel=True
    )
    assert batch.status == "cancelled"
    assert out == {}
    assert {k: v["status_code"] for k, v in errors.items()} == {"x": 499, "y": 499}
    assert [b["status"] for b in provider.server.batches.batches.values()] == ["cancelled"]
    assert running.metric("tokenomy_cost_usd_total") == 0


async def test_a_job_reserves_before_it_sends_and_never_spends_past_the_budget(
    standin: StandinFactory, sidecar: SidecarFactory
) -> None:
    provider = await standin(name="provider")
    tiers = [{"name": "only", "backends": [backend("b", url=provider.url, price=BATCH_PRICE)]}]
    budget = {"amount": "0.002", "onExceeded": "reject"}
    running = await sidecar(
        route_doc(namespace="default", tiers=tiers),
        policy_doc(namespace="default", budget=budget),
        batch_poll_seconds=0.02,
        enforce_local_budget=True,
    )
    lines = [line(str(i), f"question {i}") for i in range(5)]
    for item in lines:
        item["body"]["max_tokens"] = 100  # reserved: ~0.0008 USD a line at the list price
    batch, out, errors = await run_batch(running.client(), lines)
    assert batch.status == "completed"
    # Every reservation is taken before anything is sent: two fit, three are refused.
    assert len(out) == 2
    assert sorted(v["status_code"] for v in errors.values()) == [429, 429, 429]
    assert len(provider.settings.batch_requests) == 2
    assert 0 < running.metric("tokenomy_cost_usd_total") <= 0.002


async def test_files_are_dated_by_the_sidecars_clock(sidecar: SidecarFactory) -> None:
    clock = ManualClock(now=1_765_000_000.0)
    running = await sidecar(route_doc(namespace="default"), policy_doc(namespace="default"),
                            clock=clock)  # fmt: skip
    client = running.client()
    uploaded = await client.files.create(file=("in.jsonl", b"{}\n"), purpose="batch")
    assert uploaded.created_at == 1_765_000_000
