"""The semantic cache: paraphrases hit above the threshold, never across partitions or contexts."""

from __future__ import annotations

from typing import Any

import numpy as np
import pytest

from tokenomy_api.clock import ManualClock
from tokenomy_sidecar.local_embedder import MiniLM
from tokenomy_sidecar.semantic_index import SemanticIndex
from tokenomy_sidecar.stages.semantic_cache import context_partition, question

from helpers import backend, policy_doc, route_doc
from support import LiveSidecar, RunningStandin, SidecarFactory, StandinFactory


def unit(*values: float) -> np.ndarray:
    v = np.array(values, dtype=np.float32)
    return v / np.linalg.norm(v)


def test_index_finds_the_nearest_fresh_entry_within_a_partition() -> None:
    clock = ManualClock()
    index = SemanticIndex(max_entries=3, clock=clock)
    index.add("a", unit(1, 0, 0), b"x", ttl=10)
    index.add("a", unit(0, 1, 0), b"y", ttl=100)
    found = index.search("a", unit(1, 0.1, 0))
    assert found is not None
    assert found[1] == b"x"
    assert found[0] == pytest.approx(0.995, abs=1e-3)
    assert index.search("b", unit(1, 0, 0)) is None  # partitions never mix
    clock.advance(10)
    found = index.search("a", unit(1, 0.1, 0))
    assert found is not None
    assert found[1] == b"y"  # the expired nearest one is skipped and removed
    assert len(index) == 1


def test_index_evicts_the_oldest_when_full() -> None:
    index = SemanticIndex(max_entries=2, clock=ManualClock())
    for i, v in enumerate([unit(1, 0, 0), unit(0, 1, 0), unit(0, 0, 1)]):
        index.add("p", v, str(i).encode(), ttl=100)
    assert len(index) == 2
    found = index.search("p", unit(1, 0, 0))
    assert found is not None
    assert found[1] != b"0"


def test_index_finds_exact_vectors_among_many() -> None:
    # Latency at 100k entries is measured in bench/semantic_cache.py, not here.
    rng = np.random.default_rng(0)
    vectors = rng.standard_normal((5_000, 64)).astype(np.float32)
    vectors /= np.linalg.norm(vectors, axis=1, keepdims=True)
    index = SemanticIndex(max_entries=10_000, clock=ManualClock())
    for i, v in enumerate(vectors):
        index.add("p", v, i.to_bytes(4, "little"), ttl=1e9)
    hits = 0
    for i in rng.choice(5_000, 200, replace=False):
        found = index.search("p", vectors[i])
        hits += found is not None and int.from_bytes(found[1], "little") == i
    assert hits >= 196  # approximate search, but the exact vector is found


@pytest.mark.parametrize(
    ("messages", "expected"),
    [
        ([{"role": "user", "content": " Where is my card? "}], "Where is my card?"),
        ([{"role": "user", "content": [{"type": "text", "text": "hi"}]}], "hi"),
        ([{"role": "user", "content": "q"}, {"role": "assistant", "content": "a"}], None),
        ([{"role": "user", "content": ""}], None),
    ],
)
def test_question(messages: list[dict[str, Any]], expected: str | None) -> None:
    assert question({"messages": messages}) == expected


def test_context_partition_ignores_only_the_question() -> None:
    def body(system: str, text: str, **more: Any) -> dict[str, Any]:
        return {
            "model": "m",
            "messages": [{"role": "system", "content": system}, {"role": "user", "content": text}],
            **more,
        }

    base = context_partition("p", body("be nice", "where is my card"))
    assert context_partition("p", body("be nice", "my card has not arrived")) == base
    assert context_partition("p", body("be rude", "where is my card")) != base
    assert context_partition("p", body("be nice", "where is my card", temperature=1)) != base
    assert context_partition("q", body("be nice", "where is my card")) != base


def test_the_rest_of_the_question_must_match_exactly() -> None:
    def asking(*parts: dict[str, Any], **more: Any) -> dict[str, Any]:
        return {"model": "m", "messages": [{"role": "user", "content": list(parts), **more}]}

    text = {"type": "text", "text": "what animal is this?"}
    reworded = {"type": "text", "text": "which animal is in the picture?"}
    cat = {"type": "image_url", "image_url": {"url": "https://example.test/cat.png"}}
    dog = {"type": "image_url", "image_url": {"url": "https://example.test/dog.png"}}
    base = context_partition("p", asking(text, cat))
    assert context_partition("p", asking(reworded, cat)) == base  # the text: by meaning
    assert context_partition("p", asking(text, dog)) != base  # another picture
    assert context_partition("p", asking(text, cat, name="bob")) != base  # another user
    plain = {"model": "m", "messages": [{"role": "user", "content": "hi", "name": "ann"}]}
    other = {"model": "m", "messages": [{"role": "user", "content": "hello", "name": "bob"}]}
    assert context_partition("p", plain) != context_partition("p", other)


def test_local_embedder_matches_published_reference_scores() -> None:
    # sbert.net's all-MiniLM-L6-v2 quickstart prints these cosine similarities.
    model = MiniLM()
    pairs = [
        ("The new movie is awesome", "The new movie is so great", 0.8939),
        ("The cat sits outside", "The cat plays in the garden", 0.6788),
        ("I love pasta", "Do you like pizza?", 0.5096),
    ]
    for a, b, score in pairs:
        e = model.embed([a, b])
        assert float(e[0] @ e[1]) == pytest.approx(score, abs=5e-4)
    batch = model.embed(["short", "a much longer sentence with padding applied to the other"])
    single = model.embed(["short"])
    assert float(batch[0] @ single[0]) == pytest.approx(1.0, abs=1e-5)  # padding changes nothing


async def semantic_sidecar(
    sidecar: SidecarFactory, model: RunningStandin, embedding: dict[str, Any], threshold: float
) -> LiveSidecar:
    route = route_doc(
        namespace="default",
        tiers=[{"name": "t", "backends": [backend("b", url=model.url)]}],
        embedding=embedding,
    )
    policy = policy_doc(
        namespace="default",
        cache={
            "semantic": {"enabled": True, "threshold": threshold},
            "scope": {"type": "header", "header": "x-tenant"},
        },
    )
    return await sidecar(route, policy)


async def ask(
    running: LiveSidecar, text: str, tenant: str = "t1", system: str = "You are a bank."
) -> Any:
    messages = [{"role": "system", "content": system}, {"role": "user", "content": text}]
    return await running.client().chat.completions.with_raw_response.create(
        model="chat", messages=messages, extra_headers={"x-tenant": tenant}
    )


async def test_paraphrase_hits_with_the_local_model(
    standin: StandinFactory, sidecar: SidecarFactory
) -> None:
    model = await standin(name="m")
    running = await semantic_sidecar(sidecar, model, {"provider": "local"}, threshold=0.8)
    first = await ask(running, "My new card has not arrived yet")
    paraphrase = await ask(running, "my new card still hasn't arrived")
    unrelated = await ask(running, "How do I change my PIN?")
    other_tenant = await ask(running, "my new card still hasn't arrived", tenant="t2")
    other_context = await ask(
        running, "my new card still hasn't arrived", system="You are a pirate."
    )
    assert first.headers["x-tokenomy-cache"] == "miss"
    assert paraphrase.headers["x-tokenomy-cache"] == "semantic"
    assert float(paraphrase.headers["x-tokenomy-similarity"]) >= 0.8
    assert paraphrase.parse().choices[0].message.content == first.parse().choices[0].message.content
    assert unrelated.headers["x-tokenomy-cache"] == "miss"
    assert other_tenant.headers["x-tokenomy-cache"] == "miss"
    assert other_context.headers["x-tokenomy-cache"] == "miss"
    assert len(model.settings.requests) == 4


async def test_paraphrase_hits_with_a_remote_embedder(
    standin: StandinFactory, sidecar: SidecarFactory
) -> None:
    model = await standin(name="m")
    embedder = await standin(name="embedder")
    running = await semantic_sidecar(
        sidecar,
        model,
        {
            "provider": "openai",
            "url": embedder.url,
            "model": "bow",
            "price": {"input": "0.02", "output": "0"},
        },
        threshold=0.7,
    )
    await ask(running, "when will my card arrive")
    hit = await ask(running, "When will my card arrive?!")  # same words: bag-of-words similarity 1
    assert hit.headers["x-tokenomy-cache"] == "semantic"
    assert {r["model"] for r in embedder.settings.requests} == {"bow"}
    assert running.metric("tokenomy_cost_usd_total", tier="embedding") > 0


async def test_embedder_down_is_a_miss(standin: StandinFactory, sidecar: SidecarFactory) -> None:
    model = await standin(name="m")
    embedder = await standin(name="embedder")
    running = await semantic_sidecar(
        sidecar, model, {"provider": "openai", "url": embedder.url}, threshold=0.7
    )
    embedder.settings.faults.extend(["500", "500"])
    response = await ask(running, "when will my card arrive")
    assert response.parse().choices[0].message.content == "m answers: when will my card arrive"
    assert running.metric("tokenomy_cache_lookups_total", kind="semantic", result="error") == 1
