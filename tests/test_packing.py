"""Request packing: concurrent requests sharing their prompt go as one call, split back."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest

from tokenomy_sidecar.stages.pack import pack_key, packed_body, shares, split_answers

from helpers import backend, policy_doc, route_doc
from support import LiveSidecar, RunningStandin, SidecarFactory, StandinFactory

SYSTEM = {"role": "system", "content": "Classify the support request into one intent. " * 100}


def body(question: str, **extra: Any) -> dict[str, Any]:
    return {"model": "chat", "messages": [SYSTEM, {"role": "user", "content": question}], **extra}


@pytest.mark.parametrize(
    ("other", "same"),
    [
        (body("b"), True),  # only the last question differs
        (body("b", temperature=0.5), False),
        ({**body("b"), "messages": [{"role": "system", "content": "x"}, body("b")["messages"][1]]},
         False),
    ],
)  # fmt: skip
def test_requests_share_a_key_when_only_their_question_differs(
    other: dict[str, Any], same: bool
) -> None:
    assert (pack_key(body("a"), "t") == pack_key(other, "t")) is same
    assert pack_key(body("a"), "t") != pack_key(body("a"), "u")  # another tier


@pytest.mark.parametrize(
    "unpackable",
    [
        body("a", stream=True),
        body("a", tools=[{"type": "function", "function": {"name": "f"}}]),
        body("a", response_format={"type": "json_object"}),
        body("a", n=2),
        body("a", logprobs=True),
        {"model": "chat", "messages": [SYSTEM]},  # the last message is not a user's
        {
            "model": "chat",
            "messages": [{"role": "user", "content": [{"type": "text", "text": "a"}]}],
        },
    ],
)
def test_only_plain_requests_are_packed(unpackable: dict[str, Any]) -> None:
    assert pack_key(unpackable, "t") is None


def test_a_packed_answer_is_split_by_id_and_malformed_items_are_left_out() -> None:
    completion = {"choices": [{"message": {"content": 'Sure: {"answers": [{"id": 1, "answer": "B"},'
                  ' {"id": 0, "answer": "A"}, {"id": 9, "answer": "x"}, {"id": 2}]}'}}]}  # fmt: skip
    assert split_answers(completion, 3) == {0: "A", 1: "B"}
    assert split_answers({"choices": [{"message": {"content": "no json"}}]}, 3) == {}
    assert split_answers(None, 3) == {}
    packed = packed_body([body("a", max_tokens=10), body("b", max_tokens=20)])
    assert packed["messages"][0] == SYSTEM
    assert '"request":"a"' in packed["messages"][1]["content"]
    assert packed["max_tokens"] == 30 + 32


@pytest.mark.parametrize(
    ("total", "weights"), [(10, [1, 1, 1]), (7, [0, 0]), (100, [5, 1, 0]), (0, [3])]
)
def test_shares_add_up_exactly(total: int, weights: list[int]) -> None:
    parts = shares(total, weights)
    assert sum(parts) == total
    assert len(parts) == len(weights)


async def packing_sidecar(
    standin: StandinFactory, sidecar: SidecarFactory, **settings: Any
) -> tuple[RunningStandin, LiveSidecar]:
    model = await standin(name="model", **settings)
    tiers = [{"name": "only", "backends": [backend("m", url=model.url)]}]
    running = await sidecar(
        route_doc(namespace="default", tiers=tiers),
        policy_doc(
            namespace="default",
            cache={"exact": {"enabled": False}},
            batching={"enabled": True, "maxBatchSize": 8, "maxWait": "300ms"},
        ),
    )
    return model, running


async def test_eight_concurrent_requests_make_one_call_and_each_gets_its_answer(
    standin: StandinFactory, sidecar: SidecarFactory
) -> None:
    model, running = await packing_sidecar(standin, sidecar)
    client = running.client()
    questions = [f"my card number {i} was declined" for i in range(8)]
    answers = await asyncio.gather(
        *(client.chat.completions.with_raw_response.create(**body(q)) for q in questions)
    )
    assert len(model.settings.requests) == 1  # one call for all eight
    for q, raw in zip(questions, answers, strict=True):
        assert raw.parse().choices[0].message.content == f"model answers: {q}"
        assert "packed with 7 others" in raw.headers["x-tokenomy-route-reason"]
    assert running.metric("tokenomy_packing_items_total", result="packed") == 8
    saved = running.metric("tokenomy_packing_input_tokens_saved_total")
    # Seven of the eight 800-word shared prompts not paid again (an estimate: the items'
    # own prompts are never sent, so they are estimated, in the provider's tokens).
    assert 7 * 800 * 0.7 < saved < 8 * 800
    # The items' costs add up to the one call's.
    usage = [raw.parse().usage for raw in answers]
    assert sum(u.prompt_tokens for u in usage if u) == sum(
        len(str(m["content"]).split()) for m in model.settings.requests[0]["messages"]
    )
    spent = sum(float(raw.headers["x-tokenomy-cost-usd"]) for raw in answers)
    assert spent == pytest.approx(running.metric("tokenomy_cost_usd_total"))


async def test_items_the_packed_answer_lost_are_sent_alone_and_none_is_lost(
    standin: StandinFactory, sidecar: SidecarFactory
) -> None:
    model, running = await packing_sidecar(standin, sidecar, drop_packed=2)
    client = running.client()
    questions = [f"question {i}" for i in range(8)]
    answers = await asyncio.gather(*(client.chat.completions.create(**body(q)) for q in questions))
    assert [a.choices[0].message.content for a in answers] == [
        f"model answers: {q}" for q in questions
    ]
    assert len(model.settings.requests) == 1 + 2  # the packed call, then the two alone
    assert running.metric("tokenomy_packing_items_total", result="resent") == 2


async def test_a_lone_or_streamed_request_goes_as_it_came(
    standin: StandinFactory, sidecar: SidecarFactory
) -> None:
    model, running = await packing_sidecar(standin, sidecar)
    client = running.client()
    alone = await client.chat.completions.create(**body("just me"))
    assert alone.choices[0].message.content == "model answers: just me"
    stream = await client.chat.completions.create(**body("streamed"), stream=True)
    async for _ in stream:
        pass
    assert [r["messages"][-1]["content"] for r in model.settings.requests] == [
        "just me",
        "streamed",
    ]
