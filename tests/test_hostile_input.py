"""Generated hostile input: whatever a client sends, the sidecar answers 2xx or 4xx, never 5xx.

Hypothesis generates request bodies (valid-looking ones with wrong types,
ranges, shapes and nesting; arbitrary JSON; bytes that are not JSON) and
headers, and sends each to a running sidecar over HTTP; the sidecar's
backend is a healthy stand-in, so any 5xx or logged traceback is the
sidecar's own. Seeds are fixed (``derandomize``), so CI runs the same
examples every time; ``HOSTILE_EXAMPLES`` runs more.
"""

from __future__ import annotations

import asyncio
import logging
import os
from typing import Any

import aiohttp
import orjson
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from helpers import backend, policy_doc, route_doc
from support import SidecarFactory, StandinFactory

EXAMPLES = int(os.environ.get("HOSTILE_EXAMPLES", "5000"))
"""Per endpoint family; two families run, so CI sends twice this many requests."""

scalars = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(min_value=-(2**70), max_value=2**70),
    st.floats(allow_nan=True, allow_infinity=True),
    st.text(max_size=40),
)
json_values = st.recursive(
    scalars,
    lambda inner: st.one_of(
        st.lists(inner, max_size=4), st.dictionaries(st.text(max_size=12), inner, max_size=4)
    ),
    max_leaves=12,
)
roles = st.one_of(st.sampled_from(["system", "user", "assistant", "tool", "developer"]), scalars)
contents = st.one_of(
    st.text(max_size=200),
    st.lists(
        st.fixed_dictionaries({"type": st.sampled_from(["text", "image_url"]), "text": scalars}),
        max_size=3,
    ),
    json_values,
)
messages = st.one_of(
    st.lists(st.fixed_dictionaries({"role": roles, "content": contents}), min_size=1, max_size=4),
    json_values,
)
KNOWN = {
    "max_tokens": st.one_of(st.integers(min_value=-5, max_value=5000), json_values),
    "n": st.one_of(st.integers(min_value=-2, max_value=200), json_values),
    "temperature": st.one_of(st.floats(min_value=-3, max_value=5), json_values),
    "stream": st.one_of(st.booleans(), json_values),
    "stream_options": json_values,
    "tools": json_values,
    "tool_choice": json_values,
    "response_format": json_values,
    "logprobs": json_values,
    "stop": json_values,
    "user": json_values,
}
chat_bodies = st.builds(
    lambda model, msgs, known, extra: {"model": model, "messages": msgs, **extra, **known},
    st.one_of(st.just("chat"), st.just("unknown"), scalars),
    messages,
    st.fixed_dictionaries({}, optional=KNOWN),
    st.dictionaries(st.text(max_size=12), json_values, max_size=3),
)
embedding_bodies = st.builds(
    lambda model, given, extra: {"model": model, "input": given, **extra},
    st.one_of(st.just("chat"), scalars),
    st.one_of(st.text(max_size=100), st.lists(st.text(max_size=20), max_size=4), json_values),
    st.dictionaries(st.text(max_size=12), json_values, max_size=2),
)
headers = st.fixed_dictionaries(
    {},
    optional={
        "x-tenant": st.text(
            alphabet=st.characters(min_codepoint=33, max_codepoint=126), max_size=300
        ),
        "Cache-Control": st.sampled_from(["no-store", "no-cache", "max-age=0", ",,,", "NO-CACHE"]),
        "x-tokenomy-task": st.text(alphabet="abc-", max_size=400),
        "x-feature": st.text(alphabet="xyz", max_size=30),
    },
)


def encoded(body: Any) -> bytes:
    try:
        return orjson.dumps(body, option=orjson.OPT_NON_STR_KEYS)
    except (orjson.JSONEncodeError, TypeError):
        return repr(body).encode()  # not JSON at all: also a thing clients send


@pytest.fixture
async def target(
    standin: StandinFactory, sidecar: SidecarFactory
) -> tuple[str, list[logging.LogRecord]]:
    model = await standin(name="m", reply="ok")
    route = route_doc(
        namespace="default",
        tiers=[{"name": "t", "backends": [backend("b", url=model.url)]}],
        embedding={"provider": "openai", "model": "e", "url": model.url + "/v1"},
    )
    policy = policy_doc(
        namespace="default",
        cache={
            "scope": {"type": "header", "header": "x-tenant"},
            "semantic": {"enabled": True, "threshold": 0.9},
        },
        attribution={"header": "x-feature"},
        budget={"amount": "1000", "onExceeded": "reject"},
    )
    running = await sidecar(route, policy, enforce_local_budget=True)
    return running.url, []


async def hunt(url: str, path: str, bodies: st.SearchStrategy[Any]) -> list[str]:
    """Send ``EXAMPLES`` generated requests; returns what went wrong."""
    loop = asyncio.get_running_loop()
    failures: list[str] = []
    session = aiohttp.ClientSession()

    async def send(raw: bytes, extra: dict[str, str]) -> None:
        async with session.post(
            url + path, data=raw, headers={"Content-Type": "application/json", **extra}
        ) as response:
            body = await response.read()
            if response.status >= 500:
                failures.append(f"{response.status} for {raw[:300]!r}: {body[:300]!r}")
            elif response.status >= 400:
                error = orjson.loads(body).get("error") or {}
                if not error.get("message"):
                    failures.append(f"{response.status} without a message for {raw[:300]!r}")

    @settings(
        max_examples=EXAMPLES,
        derandomize=not os.environ.get("HOSTILE_RANDOM"),
        database=None,
        deadline=None,
        suppress_health_check=list(HealthCheck),
    )
    @given(body=bodies, extra=headers)
    def check(body: Any, extra: dict[str, str]) -> None:
        asyncio.run_coroutine_threadsafe(send(encoded(body), extra), loop).result(30)

    try:
        await asyncio.to_thread(check)
    finally:
        await session.close()
    return failures


@pytest.mark.parametrize(
    ("path", "bodies"), [("/chat/completions", chat_bodies), ("/embeddings", embedding_bodies)]
)
async def test_no_generated_request_gets_a_5xx_or_a_traceback(
    target: tuple[str, list[logging.LogRecord]],
    path: str,
    bodies: st.SearchStrategy[Any],
    caplog: pytest.LogCaptureFixture,
) -> None:
    url, _ = target
    caplog.set_level(logging.ERROR)
    failures = await hunt(url, path, bodies)
    assert failures == [], f"{len(failures)} failures, first: {failures[:3]}"
    tracebacks = [r for r in caplog.records if r.exc_info and r.levelno >= logging.ERROR]
    assert tracebacks == [], tracebacks[0].getMessage()
