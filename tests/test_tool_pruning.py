"""Tool-definition pruning: the pure choice, table by table, and the sidecar doing it."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from tokenomy_api.compiled import CompiledToolPruning
from tokenomy_eval.tools import evaluate, load_bfcl, pool_of
from tokenomy_sidecar.tool_pruning import (
    bm25,
    conversation_query,
    definition_text,
    keep_count,
    name_of,
    prune,
    relevance,
    required,
)

from helpers import backend, policy_doc, route_doc
from support import SidecarFactory, StandinFactory

# Forty functions of an agent with several tool servers; one is what the question needs.
TOPICS = [
    ("get_weather", "Current weather and forecast for a city.", ["city", "days"]),
    ("send_email", "Send an email message to a recipient.", ["to", "subject", "body"]),
    ("book_flight", "Book a flight between two airports on a date.", ["origin", "destination"]),
    ("convert_currency", "Convert an amount between two currencies.", ["amount", "from", "to"]),
    ("search_web", "Search the web for pages matching a query.", ["query"]),
    ("create_invoice", "Create an invoice for a customer.", ["customer", "lines"]),
    ("translate_text", "Translate text into another language.", ["text", "language"]),
    ("get_stock_price", "Latest trading price of a stock ticker.", ["ticker"]),
]


def tool(name: str, description: str, params: list[str]) -> dict[str, Any]:
    properties = {p: {"type": "string", "description": f"the {p}"} for p in params}
    return {
        "type": "function",
        "function": {
            "name": name,
            "description": description,
            "parameters": {"type": "object", "properties": properties},
        },
    }


def agent_tools() -> list[dict[str, Any]]:
    out = [tool(*t) for t in TOPICS]
    for i in range(32):
        out.append(tool(f"crm_record_{i}", f"Update field {i} of a CRM contact record.", ["id"]))
    return out


PRUNING = CompiledToolPruning(min_tools=4, keep_share=0.1)


@pytest.mark.parametrize(
    ("offered", "min_tools", "share", "kept"),
    [
        (3, 16, 0.2, 3),  # at or under min_tools: all kept
        (16, 16, 0.2, 16),
        (17, 16, 0.2, 16),  # over it: at least min_tools
        (457, 16, 0.2, 92),  # the share, rounded up
        (10, 4, 1.0, 10),  # a share of 1 keeps everything
    ],
)
def test_how_many_definitions_a_request_keeps(
    offered: int, min_tools: int, share: float, kept: int
) -> None:
    pruning = CompiledToolPruning(min_tools=min_tools, keep_share=share)
    assert keep_count(offered, pruning) == kept


@pytest.mark.parametrize(
    ("body", "names"),
    [
        ({"messages": [{"role": "user", "content": "hi"}]}, set()),
        (
            {
                "messages": [
                    {"role": "user", "content": "weather?"},
                    {"role": "assistant", "tool_calls": [
                        {"id": "1", "type": "function", "function": {"name": "get_weather"}}]},
                    {"role": "tool", "tool_call_id": "1", "content": "sunny"},
                ]
            },
            {"get_weather"},
        ),
        (
            {"messages": [], "tool_choice": {"type": "function", "function": {"name": "send_email"}}},
            {"send_email"},
        ),
        ({"messages": [], "tool_choice": "auto"}, set()),
        ({"messages": [{"role": "assistant", "tool_calls": "junk"}]}, set()),
    ],
)  # fmt: skip
def test_tools_the_conversation_called_or_names_must_stay(
    body: dict[str, Any], names: set[str]
) -> None:
    assert required(body) == names


def test_pruning_keeps_the_relevant_and_required_ones_in_their_order() -> None:
    tools = agent_tools()
    query = "What is the weather in Paris for the next 3 days?"
    ranked = bm25(query, [definition_text(t) for t in tools])
    assert name_of(tools[int(np.argmax(ranked))]) == "get_weather"
    texts = [definition_text(t) for t in tools]
    chosen = prune(tools, relevance(texts, query, None), {"crm_record_31"}, PRUNING)
    names = [name_of(tools[i]) for i in chosen.kept]
    assert "get_weather" in names
    assert names[-1] == "crm_record_31"  # required, kept beyond the count, in its place
    assert chosen.kept == sorted(chosen.kept)  # the client's order: a stable prompt prefix
    assert len(chosen.kept) == 5  # max(4, ceil(0.1 * 40)) and the required one
    assert chosen.removed_tokens > 0


def test_the_query_is_the_recent_user_messages() -> None:
    messages = [
        {"role": "user", "content": "first"},
        {"role": "assistant", "content": "ok"},
        {"role": "user", "content": "second"},
        {"role": "user", "content": [{"type": "text", "text": "third"}]},
    ]
    assert conversation_query(messages) == "second\nthird"


def bfcl(tmp_path: Path) -> Path:
    rows = [
        {"id": "a", "question": [[{"role": "user", "content": "weather in Rome"}]],
         "function": [t["function"] for t in agent_tools()[:20]]},
        {"id": "b", "question": [[{"role": "user", "content": "price of AAPL stock"}]],
         "function": [t["function"] for t in agent_tools()[:3]]},
    ]  # fmt: skip
    answers = [
        {"id": "a", "ground_truth": [{"get_weather": {"city": ["Rome"]}}]},
        {"id": "b", "ground_truth": [{"get_stock_price": {"ticker": ["AAPL"]}}]},
    ]
    (tmp_path / "possible_answer").mkdir()
    (tmp_path / "d.json").write_text("\n".join(json.dumps(r) for r in rows))
    (tmp_path / "possible_answer" / "d.json").write_text("\n".join(json.dumps(a) for a in answers))
    return tmp_path / "d.json"


def test_eval_counts_a_request_that_lost_its_function_as_wrong(tmp_path: Path) -> None:
    requests = load_bfcl(bfcl(tmp_path))
    own = evaluate(requests, PRUNING, None)
    # "a" is pruned to 4 and keeps get_weather; "b" offers 3 (under min_tools) but not
    # the stock price function it needs: nothing pruning did, and not counted as lost.
    assert (own.requests, own.pruned, own.lost) == (2, 1, 1)
    assert own.kept_needed == 0.5
    pool = evaluate(requests, PRUNING, None, pool_of(requests))
    assert pool.lost == 0  # with all 20 offered, both find theirs
    assert 0 < pool.tokens_removed < 1


def test_a_bad_line_is_named(tmp_path: Path) -> None:
    path = bfcl(tmp_path)
    path.write_text(path.read_text() + "\n{not json")
    with pytest.raises(ValueError, match=r"d\.json:3: not a request"):
        load_bfcl(path)


async def test_the_sidecar_sends_only_relevant_definitions_once_they_have_vectors(
    standin: StandinFactory, sidecar: SidecarFactory
) -> None:
    large = await standin(name="large")
    tiers = [{"name": "large", "backends": [backend("l", url=large.url)]}]
    running = await sidecar(
        route_doc(namespace="default", tiers=tiers, embedding={"provider": "local"}),
        policy_doc(
            namespace="default",
            cache={"exact": {"enabled": False}},
            tools={"pruning": {"enabled": True, "minTools": 4, "keepShare": 0.1}},
        ),
    )
    client = running.client()
    ask = {"role": "user", "content": "What is the weather in Paris for the next 3 days?"}
    offered: Any = agent_tools()
    await client.chat.completions.create(model="chat", messages=[ask], tools=offered)
    assert len(large.settings.requests[-1]["tools"]) == 40  # cold: nothing is lost meanwhile
    assert running.metric("tokenomy_tool_pruning_total", result="cold") == 1
    assert running.sidecar.proxy is not None
    await running.sidecar.proxy.vectors.close()  # the background embedding is done
    await client.chat.completions.create(model="chat", messages=[ask], tools=offered)
    sent = [t["function"]["name"] for t in large.settings.requests[-1]["tools"]]
    assert "get_weather" in sent
    assert len(sent) == 4
    assert running.metric("tokenomy_tool_definitions_total", stage="sent") == 4
    assert running.metric("tokenomy_savings_usd_total", lever="tool_pruning") > 0
    # A request with few tools, or none, goes as it came.
    few = offered[:3]
    await client.chat.completions.create(model="chat", messages=[ask], tools=few)
    assert large.settings.requests[-1]["tools"] == few
