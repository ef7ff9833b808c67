"""``tokenomy eval tools``: tool-definition pruning on recorded requests, as the sidecar
prunes them.

The data is the Berkeley Function Calling Leaderboard's format (one JSON
object per line: ``question`` as turns of messages, ``function`` the
definitions offered; and beside it ``possible_answer/`` with the function(s)
each request must call). Each request is pruned by the sidecar's own
:func:`tokenomy_sidecar.tool_pruning.prune`, with the sidecar's local
embedder for the similarity signal, twice: with the definitions it offered,
and with every distinct function of the data offered at once (as an agent
with many MCP servers would). A request that lost a function it must call
is a wrong answer, and counted as one.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt

from tokenomy_api.compiled import CompiledToolPruning
from tokenomy_sidecar.tool_pruning import (
    conversation_query,
    definition_text,
    definition_tokens,
    prune,
    relevance,
    required,
)

Embed = Callable[[str], npt.NDArray[np.float32]]


@dataclass(frozen=True)
class Request:
    """One recorded request: its messages, the definitions offered, what it must call."""

    id: str
    messages: list[dict[str, Any]]
    tools: list[dict[str, Any]]
    needed: frozenset[str]


def load_bfcl(path: Path) -> list[Request]:
    """Requests from a BFCL file and its ``possible_answer/`` twin (a folder: the first
    ``*.json`` in it); ValueError naming the line that is not one."""
    if path.is_dir():
        found = sorted(p for p in path.glob("*.json"))
        if not found:
            raise ValueError(f"{path}: no *.json file")
        path = found[0]
    answers_path = path.parent / "possible_answer" / path.name
    needed: dict[str, frozenset[str]] = {}
    for number, line in enumerate(answers_path.read_text().splitlines(), 1):
        try:
            row = json.loads(line)
            needed[row["id"]] = frozenset(k for call in row["ground_truth"] for k in call)
        except (ValueError, KeyError, TypeError) as error:
            raise ValueError(f"{answers_path}:{number}: not an answer ({error})") from None
    out = []
    for number, line in enumerate(path.read_text().splitlines(), 1):
        try:
            row = json.loads(line)
            messages = [m for turn in row["question"] for m in turn]
            out.append(Request(row["id"], messages, list(row["function"]), needed[row["id"]]))
        except (ValueError, KeyError, TypeError) as error:
            raise ValueError(f"{path}:{number}: not a request ({error})") from None
    return out


def pool_of(requests: Sequence[Request]) -> list[dict[str, Any]]:
    """Every distinct function of the data (by name; its first definition)."""
    pool: dict[str, dict[str, Any]] = {}
    for r in requests:
        for tool in r.tools:
            pool.setdefault(tool["name"], tool)
    return list(pool.values())


@dataclass(frozen=True)
class Pruning:
    """What pruning did to a set of requests."""

    offered: str
    """``own`` (each request's definitions) or ``pool`` (all of the data's at once)."""
    signals: str
    """``bm25 + embedding`` (as the sidecar) or ``bm25`` alone."""
    requests: int
    pruned: int
    """Requests that offered more definitions than they keep."""
    tokens_removed: float
    """Share of the definitions' estimated tokens removed, over all requests."""
    kept_needed: float
    """Share of requests still offered every function they must call."""
    lost: int
    """Requests that lost a function they must call: wrong answers."""
    mean_sent: float
    """Definitions sent per request, on average."""


def evaluate(
    requests: Sequence[Request],
    pruning: CompiledToolPruning,
    embed: Embed | None,
    pool: Sequence[dict[str, Any]] | None = None,
) -> Pruning:
    """Prune every request (offering ``pool`` instead of its own set when given)."""
    vectors: dict[str, npt.NDArray[np.float32]] = {}

    def vector(text: str) -> npt.NDArray[np.float32]:
        if text not in vectors:
            assert embed is not None
            vectors[text] = embed(text)
        return vectors[text]

    before = after = pruned = lost = sent = 0
    for r in requests:
        tools = list(pool) if pool is not None else r.tools
        body = {"messages": r.messages, "tools": tools}
        query = conversation_query(r.messages)
        texts = [definition_text(t) for t in tools]
        similarity = None
        if embed is not None:
            definitions = np.stack([vector(t) for t in texts])
            similarity = (definitions @ vector(query)).astype(np.float64)
        chosen = prune(tools, relevance(texts, query, similarity), required(body), pruning)
        total = sum(definition_tokens(t) for t in tools)
        before += total
        after += total - chosen.removed_tokens
        pruned += len(chosen.kept) < len(tools)
        sent += len(chosen.kept)
        kept_names = {tools[i]["name"] for i in chosen.kept}
        lost += not r.needed <= kept_names
    n = len(requests)
    return Pruning(
        "pool" if pool is not None else "own",
        "bm25 + embedding" if embed is not None else "bm25",
        n,
        pruned,
        1 - after / before if before else 0.0,
        1 - lost / n if n else 1.0,
        lost,
        sent / n if n else 0.0,
    )


def table(rows: Sequence[Pruning], pool_size: int) -> str:
    """The rows as a text table."""
    head = (
        f"{'offered':<22} {'signals':<17} {'pruned':>7} {'tokens removed':>15} "
        f"{'kept needed':>12} {'lost':>5} {'sent':>6}"
    )
    lines = [head, "-" * len(head)]
    for r in rows:
        offered = "own set" if r.offered == "own" else f"all {pool_size} functions"
        lines.append(
            f"{offered:<22} {r.signals:<17} {r.pruned:>7,} {r.tokens_removed:>15.1%} "
            f"{r.kept_needed:>12.2%} {r.lost:>5} {r.mean_sent:>6.1f}"
        )
    return "\n".join(lines)
