"""The sidecar through the official openai SDK: caching, streaming, headers, bad input."""

from __future__ import annotations

import asyncio
from typing import Any

import aiohttp
import openai
import orjson
import pytest

from helpers import backend, policy_doc, route_doc
from support import LiveSidecar, RunningStandin, SidecarFactory, StandinFactory

USER = [{"role": "user", "content": "where is my card"}]


def two_tier_route(small: RunningStandin, large: RunningStandin, **spec: Any) -> dict[str, Any]:
    return route_doc(
        namespace="default",
        tiers=[
            {
                "name": "small",
                "backends": [
                    backend("s", url=small.url, price={"input": "0.15", "output": "0.60"})
                ],
            },
            {
                "name": "large",
                "backends": [backend("l", url=large.url, price={"input": "2.50", "output": "10"})],
            },
        ],
        **spec,
    )


@pytest.fixture
async def live(
    standin: StandinFactory, sidecar: SidecarFactory
) -> tuple[LiveSidecar, RunningStandin, RunningStandin]:
    small = await standin(name="small")
    large = await standin(name="large")
    running = await sidecar(
        two_tier_route(small, large),
        policy_doc(
            namespace="default",
            cache={"scope": {"type": "header", "header": "x-tenant"}},
            output={"maxTokens": 256},
        ),
        {
            "apiVersion": "v1",
            "kind": "Secret",
            "metadata": {"name": "keys"},
            "stringData": {"k": "sk-test"},
        },
    )
    return running, small, large


async def ask(client: openai.AsyncOpenAI, tenant: str | None = "t1", **kwargs: Any) -> Any:
    headers = {"x-tenant": tenant} if tenant else {}
    params = {"model": "chat", "messages": USER, **kwargs}
    return await client.chat.completions.with_raw_response.create(extra_headers=headers, **params)


async def test_second_identical_request_is_an_exact_hit(live: Any) -> None:
    running, _, large = live
    client = running.client()
    first = await ask(client)
    second = await ask(client)
    assert first.headers["x-tokenomy-cache"] == "miss"
    assert second.headers["x-tokenomy-cache"] == "exact"
    assert first.parse().choices[0].message.content == second.parse().choices[0].message.content
    assert first.headers["x-tokenomy-tier"] == "large"  # no routing yet: the default tier
    assert first.headers["x-tokenomy-backend"] == "l"
    assert float(first.headers["x-tokenomy-cost-usd"]) > 0
    assert second.headers["x-tokenomy-cost-usd"] == "0"
    assert len(large.settings.requests) == 1
    assert running.metric("tokenomy_cache_lookups_total", kind="exact", result="hit") == 1
    assert running.metric("tokenomy_savings_usd_total", lever="exact_cache") > 0


async def test_another_tenant_misses_and_no_tenant_bypasses(live: Any) -> None:
    running, _, large = live
    client = running.client()
    await ask(client, tenant="t1")
    other = await ask(client, tenant="t2")
    assert other.headers["x-tokenomy-cache"] == "miss"
    anonymous = await ask(client, tenant=None)
    again = await ask(client, tenant=None)
    assert (anonymous.headers["x-tokenomy-cache"], again.headers["x-tokenomy-cache"]) == (
        "bypass",
        "bypass",
    )
    assert len(large.settings.requests) == 4


async def test_upstream_error_is_returned_and_never_replayed(live: Any) -> None:
    running, _, large = live
    large.settings.faults.extend(["500"] * 3)  # every try of the retry budget fails
    client = running.client()
    with pytest.raises(openai.InternalServerError):
        await ask(client)
    fresh = await ask(client)
    assert fresh.headers["x-tokenomy-cache"] == "miss"
    assert fresh.parse().choices[0].message.content.startswith("large answers")
    assert (await ask(client)).headers["x-tokenomy-cache"] == "exact"
    assert running.metric("tokenomy_upstream_errors_total", reason="status_500") == 3


@pytest.mark.parametrize("stream", [False, True])
async def test_identical_requests_in_flight_make_one_model_call(live: Any, stream: bool) -> None:
    running, _, large = live
    large.settings.latency = 0.2  # long enough for all of them to arrive meanwhile
    client = running.client()
    params = {"model": "chat", "messages": USER, "stream": stream}

    async def one() -> tuple[str, str]:
        response = await client.chat.completions.with_raw_response.create(
            extra_headers={"x-tenant": "t1"}, **params
        )
        parsed = response.parse()
        if stream:
            text = "".join([c.choices[0].delta.content or "" async for c in parsed if c.choices])
        else:
            text = parsed.choices[0].message.content
        return response.headers["x-tokenomy-cache"], text

    answers = await asyncio.gather(*(one() for _ in range(16)))
    assert len(large.settings.requests) == 1
    [text] = {text for _, text in answers}  # one answer, served sixteen times
    assert text.startswith("large answers")
    assert sorted(cache for cache, _ in answers) == ["exact"] * 15 + ["miss"]
    assert running.metric("tokenomy_cache_lookups_total", result="coalesced") == 15


async def test_a_leader_whose_answer_cannot_be_cached_lets_the_followers_go(live: Any) -> None:
    running, _, large = live
    large.settings.latency = 0.2
    client = running.client()
    answers = await asyncio.gather(*(ask(client, max_tokens=2) for _ in range(4)))
    assert all(a.parse().choices[0].finish_reason == "length" for a in answers)  # truncated
    assert len(large.settings.requests) == 4  # none was served the leader's cut answer


async def test_truncated_answer_is_not_cached(live: Any) -> None:
    running, _, _large = live
    client = running.client()
    first = await ask(client, max_tokens=2)
    assert first.parse().choices[0].finish_reason == "length"
    second = await ask(client, max_tokens=2)
    assert second.headers["x-tokenomy-cache"] == "miss"
    assert running.metric("tokenomy_cache_stores_total", result="not_cacheable") == 2


async def test_tool_requests_are_not_cached(live: Any) -> None:
    running, _, _ = live
    tools = [{"type": "function", "function": {"name": "refund", "parameters": {"type": "object"}}}]
    client = running.client()
    await ask(client, tools=tools)
    assert (await ask(client, tools=tools)).headers["x-tokenomy-cache"] == "bypass"


@pytest.mark.parametrize("directive", ["no-store", "no-cache"])
async def test_cache_control_skips_the_lookup(live: Any, directive: str) -> None:
    running, _, large = live
    client = running.client()
    headers = {"x-tenant": "t1", "Cache-Control": directive}
    first = await client.chat.completions.with_raw_response.create(
        model="chat", messages=USER, extra_headers=headers
    )
    second = await client.chat.completions.with_raw_response.create(
        model="chat", messages=USER, extra_headers=headers
    )
    assert [first.headers["x-tokenomy-cache"], second.headers["x-tokenomy-cache"]] == [
        "bypass",
        "bypass",
    ]
    # no-store kept nothing; no-cache stored the fresh answer for requests without it.
    later = await ask(client)
    assert later.headers["x-tokenomy-cache"] == ("miss" if directive == "no-store" else "exact")
    assert len(large.settings.requests) == (3 if directive == "no-store" else 2)


async def stream_text(client: openai.AsyncOpenAI, **kwargs: Any) -> tuple[str, Any, list[Any]]:
    response = await client.chat.completions.with_raw_response.create(
        model="chat", messages=USER, stream=True, extra_headers={"x-tenant": "t1"}, **kwargs
    )
    chunks = [c async for c in response.parse()]
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    return text, response.headers, chunks


async def test_stream_is_stored_once_complete_and_replayed_as_a_stream(live: Any) -> None:
    running, _, large = live
    client = running.client()
    text, headers, chunks = await stream_text(client)
    assert headers["x-tokenomy-cache"] == "miss"
    assert text == "large answers: where is my card"
    assert all(c.usage is None for c in chunks)  # usage chunk removed: the client did not ask
    text2, headers2, chunks2 = await stream_text(client)
    assert headers2["x-tokenomy-cache"] == "exact"
    assert text2 == text
    assert chunks2[-1].choices[0].finish_reason == "stop"
    # A plain request shares the entry a stream stored.
    plain = await ask(client)
    assert plain.headers["x-tokenomy-cache"] == "exact"
    assert plain.parse().choices[0].message.content == text
    assert len(large.settings.requests) == 1
    assert large.settings.requests[0]["stream_options"] == {"include_usage": True}


async def test_stream_usage_is_kept_when_the_client_asks(live: Any) -> None:
    running, _, _ = live
    client = running.client()
    for _ in range(2):  # live, then replayed from cache
        _, _, chunks = await stream_text(client, stream_options={"include_usage": True})
        assert chunks[-1].usage is not None
        assert chunks[-1].usage.completion_tokens == 6


async def test_stream_cost_comment_and_metering(live: Any) -> None:
    running, _, _ = live
    async with aiohttp.ClientSession() as session:
        body = {"model": "chat", "messages": USER, "stream": True}
        async with session.post(running.url + "/chat/completions", json=body) as response:
            raw = await response.read()
    assert b": x-tokenomy-cost-usd 0.00007\n\n" in raw
    assert raw.endswith(b"data: [DONE]\n\n")
    assert b'"choices":[]' not in raw
    assert running.metric("tokenomy_tokens_total", direction="output") == 6


async def test_request_sent_upstream(live: Any) -> None:
    running, _, large = live
    client = running.client(default_headers={"Authorization": "Bearer app-key"})
    await ask(client, max_tokens=5000, extra_body={"vendor_option": {"keep": True}}, seed=7)
    sent = large.settings.requests[-1]
    assert sent["model"] == "model-l"  # the backend's model name
    assert sent["vendor_option"] == {"keep": True}  # unknown fields pass through
    assert sent["seed"] == 7
    assert sent["max_tokens"] == 256  # clamped by the policy's output cap
    assert large.settings.headers[-1].get("authorization") is None  # the app's key stays home


async def test_backend_key_comes_from_the_secret(
    standin: StandinFactory, sidecar: SidecarFactory
) -> None:
    model = await standin(name="m")
    doc = route_doc(
        namespace="default",
        tiers=[
            {
                "name": "t",
                "backends": [
                    backend(
                        "b", url=model.url, credentials={"secretRef": {"name": "keys", "key": "k"}}
                    )
                ],
            }
        ],
    )
    secret = {
        "apiVersion": "v1",
        "kind": "Secret",
        "metadata": {"name": "keys"},
        "stringData": {"k": "sk-test"},
    }
    running = await sidecar(doc, policy_doc(namespace="default"), secret)
    await running.client().chat.completions.create(model="chat", messages=USER)
    assert model.settings.headers[-1]["authorization"] == "Bearer sk-test"


async def test_models_and_embeddings(live: Any) -> None:
    running, _, _large = live
    client = running.client()
    assert [m.id for m in (await client.models.list()).data] == ["chat"]
    response = await client.embeddings.with_raw_response.create(model="chat", input=["a b", "c"])
    embedding = response.parse()
    assert len(embedding.data) == 2
    assert response.headers["x-tokenomy-tier"] == "large"
    assert float(response.headers["x-tokenomy-cost-usd"]) == pytest.approx(3 * 2.5 / 1e6)


async def test_embeddings_save_nothing_against_the_chat_reference(
    standin: StandinFactory, sidecar: SidecarFactory
) -> None:
    """Embeddings on a cheaper default tier are not 'savings' against the chat model."""
    small = await standin(name="small")
    large = await standin(name="large")
    route = route_doc(
        defaultTier="small",
        tiers=[
            {"name": "small", "backends": [backend("s", url=small.url, price={"input": "0.02", "output": "0"})]},
            {"name": "large", "backends": [backend("l", url=large.url)]},
        ],
    )  # fmt: skip
    running = await sidecar(route, policy_doc())
    response = await running.client().embeddings.with_raw_response.create(model="chat", input="a b")
    assert response.headers["x-tokenomy-tier"] == "small"
    assert float(response.headers["x-tokenomy-cost-usd"]) > 0
    assert running.metric("tokenomy_savings_usd_total") == 0


def _chat(**fields: Any) -> bytes:
    return orjson.dumps({"model": "chat", "messages": [{"role": "user", "content": "x"}], **fields})


@pytest.mark.parametrize(
    ("body", "status", "fragment"),
    [
        (b"{not json", 400, "request body is not valid JSON"),
        (b'{"model": "chat", "messages": "hi"}', 400, "`messages` must be a non-empty array"),
        (
            b'{"model": "chat", "messages": [{"role": "user", "content": "x"}], "stream": 1}',
            400,
            "`stream` must be a boolean",
        ),
        (
            b'{"model": "gpt-9", "messages": [{"role": "user", "content": "x"}]}',
            404,
            "model `gpt-9` is not served here (served: chat)",
        ),
        # What every provider refuses is refused here, naming the field, never sent.
        (_chat(max_tokens=-5), 400, "`max_tokens` must be at least 1 (got -5)"),
        (_chat(n=0), 400, "`n` must be from 1 to 128 (got 0)"),
        (_chat(temperature=3.5), 400, "`temperature` must be from 0 to 2"),
        (_chat(messages=[{"role": "user", "content": 42}]), 400, "`messages[0].content` must"),
        (_chat(messages=[{"role": "robot", "content": "x"}]), 400, "`messages[0].role` must"),
        (_chat(tools={"name": "x"}), 400, "`tools` must be an array"),
        (_chat(tools=[{"type": "function"}]), 400, "`tools[0]` must be an object with"),
        # Parsable, but too deep to forward (it was a 500 with a traceback).
        (
            b'{"model": "chat", "messages": [{"role": "user", "content": "x"}], "metadata": '
            + b"[" * 300
            + b"]" * 300
            + b"}",
            400,
            "deeper than 64 levels",
        ),
        (
            b'{"model": "chat", "messages": [{"role": "user", "content": "'
            + b"x" * 9_000_000
            + b'"}]}',
            413,
            "larger than",
        ),
    ],
)
async def test_bad_input_gets_a_4xx_with_an_openai_error(
    live: Any, body: bytes, status: int, fragment: str
) -> None:
    running, _, large = live
    async with (
        aiohttp.ClientSession() as session,
        session.post(
            running.url + "/chat/completions",
            data=body,
            headers={"Content-Type": "application/json"},
        ) as response,
    ):
        assert response.status == status
        error = (await response.json())["error"]
    assert fragment in error["message"]
    assert error["type"] == "invalid_request_error"
    assert large.settings.requests == []
    assert running.metric("tokenomy_invalid_requests_total", code=str(status)) == 1


async def test_unknown_model_through_the_sdk(live: Any) -> None:
    running, _, _ = live
    with pytest.raises(openai.NotFoundError, match="not served here"):
        await running.client().chat.completions.create(model="gpt-9", messages=USER)


async def test_probes_and_metrics(live: Any) -> None:
    running, _, _ = live
    await ask(running.client())
    async with aiohttp.ClientSession() as session:
        for base in (running.sidecar.api_url, running.sidecar.metrics_url):
            async with session.get(base + "/healthz") as r:
                assert r.status == 200
            async with session.get(base + "/readyz") as r:
                assert (await r.json())["version"] == running.sidecar.holder.current.config.version
        async with session.get(running.sidecar.metrics_url + "/metrics") as r:
            text = await r.text()
    assert (
        'tokenomy_requests_total{backend="l",cache="miss",code="200",namespace="default",policy="agent",route="chat",tier="large"} 1.0'
        in text
    )
    assert "tokenomy_request_duration_seconds_bucket" in text
    assert "tokenomy_config_info{" in text


async def test_a_failing_stage_fails_open_to_the_default_tier(
    live: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    running, _, large = live

    def broken(*args: Any) -> bool:
        raise RuntimeError("bug in a stage")

    monkeypatch.setattr("tokenomy_sidecar.stages.trim.trim_prompt", broken)
    response = await ask(running.client(), max_tokens=5000)
    assert response.parse().choices[0].message.content.startswith("large answers")
    assert response.headers["x-tokenomy-cache"] == "bypass"
    assert large.settings.requests[-1]["max_tokens"] == 5000  # the request as the client wrote it
    assert running.metric("tokenomy_fail_open_total", stage="trim") == 1


async def limited(
    standin: StandinFactory, sidecar: SidecarFactory, prompt: dict[str, Any]
) -> tuple[RunningStandin, RunningStandin, LiveSidecar]:
    """Two stand-in tiers behind a sidecar whose policy limits input."""
    small = await standin(name="small")
    large = await standin(name="large")
    running = await sidecar(
        two_tier_route(small, large), policy_doc(namespace="default", prompt=prompt)
    )
    return small, large, running


async def test_a_request_over_the_input_limit_is_trimmed_to_fit_where_the_policy_says_so(
    standin: StandinFactory, sidecar: SidecarFactory
) -> None:
    prompt = {"maxInputTokens": 30, "overLimit": "trim"}
    small, large, running = await limited(standin, sidecar, prompt)
    client = running.client()
    long = "word " * 28  # about 35 tokens by the 4-characters rule
    history = [{"role": "user", "content": long}, {"role": "assistant", "content": long}]
    answered = await client.chat.completions.create(
        model="chat", messages=[*history, {"role": "user", "content": "and now?"}]
    )
    assert answered.choices[0].message.content
    sent = (small.settings.requests + large.settings.requests)[-1]["messages"]
    assert sent == [{"role": "user", "content": "and now?"}]  # the old turns went, not the question
    with pytest.raises(openai.BadRequestError, match="even with its oldest turns dropped"):
        await client.chat.completions.create(
            model="chat", messages=[{"role": "user", "content": long * 2}]
        )


async def test_a_request_over_the_input_limit_is_refused_after_trimming(
    standin: StandinFactory, sidecar: SidecarFactory
) -> None:
    prompt = {"maxInputTokens": 10, "historyWindow": 1}
    small, large, running = await limited(standin, sidecar, prompt)
    client = running.client()
    long = "word " * 28  # about 35 tokens by the 4-characters rule
    with pytest.raises(openai.BadRequestError) as refused:
        await client.chat.completions.create(
            model="chat", messages=[{"role": "user", "content": long}]
        )
    assert refused.value.code == "context_length_exceeded"
    assert "over this policy's limit of 10 (spec.prompt.maxInputTokens)" in str(refused.value)
    # The window keeps the last message only: a long history is trimmed, then fits.
    history = [{"role": "user", "content": long}, {"role": "assistant", "content": long}]
    answered = await client.chat.completions.create(
        model="chat", messages=[*history, {"role": "user", "content": "hi there"}]
    )
    assert answered.choices[0].message.content
    assert len(small.settings.requests) + len(large.settings.requests) == 1
