"""Which tool definitions a chat request keeps: the ones relevant to the conversation.

Every definition a request offers is billed as input tokens on every call;
an agent with several MCP servers offers hundreds. Pruning ranks the offered
definitions against the conversation's recent user messages by two signals,
fused by reciprocal rank (Cormack, Clarke and Büttcher, SIGIR 2009): BM25
over the definition's name, description and parameter names (always), and
cosine similarity of embeddings (when the route has an embedder). It keeps
the best ``max(min_tools, ceil(keep_share * offered))``, in their original
order (a provider's prompt cache sees the same order), plus every tool the
conversation already called and any ``tool_choice`` names: dropping those
would break the conversation, not just cost a token.

Pure functions; the stage (:mod:`tokenomy_sidecar.stages.prune_tools`)
supplies the embeddings, and ``tokenomy eval tools`` scores the same
functions on recorded requests.
"""

from __future__ import annotations

import functools
import math
import re
from collections import Counter
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import numpy.typing as npt
import orjson

from tokenomy_api.compiled import CompiledToolPruning
from tokenomy_sidecar.request import message_text
from tokenomy_sidecar.routing.decision import estimate_tokens

WORD = re.compile(r"[a-z0-9]+")
CAMEL = re.compile(r"([a-z0-9])([A-Z])")
RRF_K = 60
"""Reciprocal rank fusion's constant (the paper's): ranks far down still count a little."""
RECENT_USER_MESSAGES = 2
"""User messages that say what the tools are for: the question and the one before."""


def name_of(tool: Mapping[str, Any]) -> str:
    """The function's name (OpenAI's ``{"type": "function", "function": {...}}`` or bare)."""
    function = tool.get("function", tool)
    name = function.get("name") if isinstance(function, Mapping) else None
    return name if isinstance(name, str) else ""


def definition_text(tool: Mapping[str, Any]) -> str:
    """What a definition is about, for ranking: name, description, parameter names."""
    function = tool.get("function", tool)
    if not isinstance(function, Mapping):
        return ""
    parameters = function.get("parameters")
    properties = parameters.get("properties") if isinstance(parameters, Mapping) else None
    names = ", ".join(properties) if isinstance(properties, Mapping) else ""
    description = function.get("description")
    return f"{name_of(tool)}: {description if isinstance(description, str) else ''} ({names})"


@functools.lru_cache(maxsize=8192)
def words(text: str) -> tuple[str, ...]:
    """Lower-case words, with ``camelCase`` and ``snake_case`` names split."""
    return tuple(WORD.findall(CAMEL.sub(r"\1 \2", text).lower()))


def definition_tokens(tools: Mapping[str, Any] | Sequence[Mapping[str, Any]]) -> int:
    """Estimated input tokens definitions cost (their JSON, as it is sent)."""
    return estimate_tokens(orjson.dumps(tools).decode())


def conversation_query(messages: Sequence[dict[str, Any]]) -> str:
    """The recent user messages, newest last: what the tools are ranked against."""
    users = [message_text(m) for m in messages if m.get("role") == "user"]
    return "\n".join(users[-RECENT_USER_MESSAGES:])


def required(body: Mapping[str, Any]) -> set[str]:
    """Tools that must stay: every one the conversation called, and ``tool_choice``'s."""
    names: set[str] = set()
    for message in body.get("messages") or []:
        for call in message.get("tool_calls") or [] if isinstance(message, Mapping) else []:
            function = call.get("function") if isinstance(call, Mapping) else None
            if isinstance(function, Mapping) and isinstance(function.get("name"), str):
                names.add(function["name"])
    choice = body.get("tool_choice")
    if isinstance(choice, Mapping):
        chosen = name_of(choice)
        if chosen:
            names.add(chosen)
    return names


@dataclass(frozen=True)
class Corpus:
    """BM25's view of a set of definitions: postings per word, and length norms."""

    size: int
    postings: dict[str, tuple[npt.NDArray[np.int64], npt.NDArray[np.float64]]]
    """Per word, the documents holding it and how often."""
    lengths: npt.NDArray[np.float64]


@functools.lru_cache(maxsize=64)
def corpus(documents: tuple[str, ...]) -> Corpus:
    """The corpus of these documents (an agent sends the same set on every call: built
    once per set)."""
    found: dict[str, tuple[list[int], list[float]]] = {}
    lengths = []
    for i, document in enumerate(documents):
        counts = Counter(words(document))
        lengths.append(sum(counts.values()))
        for word, n in counts.items():
            docs, tfs = found.setdefault(word, ([], []))
            docs.append(i)
            tfs.append(float(n))
    postings = {
        w: (np.array(d, dtype=np.int64), np.array(t, dtype=np.float64))
        for w, (d, t) in found.items()
    }
    return Corpus(len(documents), postings, np.array(lengths, dtype=np.float64))


def bm25(
    query: str, documents: Sequence[str], k1: float = 1.2, b: float = 0.75
) -> npt.NDArray[np.float64]:
    """Okapi BM25 of each document for ``query``, with IDF from the documents themselves."""
    c = corpus(tuple(documents))
    average = float(c.lengths.mean()) if c.size else 0.0
    norm = k1 * (1 - b + b * c.lengths / (average or 1.0))
    scores = np.zeros(c.size)
    for word in set(words(query)):
        posting = c.postings.get(word)
        if posting is None:
            continue
        docs, tf = posting
        idf = math.log(1 + (c.size - len(docs) + 0.5) / (len(docs) + 0.5))
        scores[docs] += idf * tf * (k1 + 1) / (tf + norm[docs])
    return scores


def ranks(scores: npt.NDArray[np.float64]) -> npt.NDArray[np.int64]:
    """Rank of each score, 0 the best; ties keep their order."""
    order = np.argsort(-scores, kind="stable")
    out = np.empty(len(order), dtype=np.int64)
    out[order] = np.arange(len(order))
    return out


def fused(*signals: npt.NDArray[np.float64]) -> npt.NDArray[np.float64]:
    """Reciprocal rank fusion of the signals: higher is more relevant."""
    total: npt.NDArray[np.float64] = np.sum([1.0 / (RRF_K + 1 + ranks(s)) for s in signals], axis=0)
    return total


def keep_count(offered: int, pruning: CompiledToolPruning) -> int:
    """How many definitions a request offering ``offered`` keeps (all of them up to
    ``min_tools``)."""
    if offered <= pruning.min_tools:
        return offered
    return min(offered, max(pruning.min_tools, math.ceil(pruning.keep_share * offered)))


@dataclass(frozen=True)
class Pruned:
    """What pruning kept."""

    kept: list[int]
    """Indices of the kept definitions, in their original order."""
    removed_tokens: int
    """Estimated input tokens of the definitions dropped."""


def prune(
    tools: Sequence[Mapping[str, Any]],
    relevance: npt.NDArray[np.float64],
    must: set[str],
    pruning: CompiledToolPruning,
) -> Pruned:
    """The most relevant definitions (``relevance``: higher is better), the required ones
    beyond that count."""
    keep = keep_count(len(tools), pruning)
    best = set(np.argsort(-relevance, kind="stable")[:keep].tolist())
    kept = [i for i, t in enumerate(tools) if i in best or (must and name_of(t) in must)]
    chosen = set(kept)
    removed = [t for i, t in enumerate(tools) if i not in chosen]
    return Pruned(kept, definition_tokens(removed) if removed else 0)


def relevance(
    texts: Sequence[str], query: str, similarity: npt.NDArray[np.float64] | None
) -> npt.NDArray[np.float64]:
    """BM25 of the definitions (their :func:`definition_text`) for the query, fused with
    embedding ``similarity`` when the route has an embedder."""
    lexical = bm25(query, texts)
    return fused(lexical) if similarity is None else fused(lexical, similarity)
