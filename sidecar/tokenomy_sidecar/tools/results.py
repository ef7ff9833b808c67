"""What the tool proxy decides about one call, as pure functions: trimming, caching, keys.

Both proxies (:mod:`.mcp_proxy`, :mod:`.http_proxy`) use them; the I/O stays
there. A tool result that reaches the agent goes into its next prompt, so
every field trimmed here is input tokens the next model call does not pay.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import orjson

from tokenomy_sidecar.routing.decision import estimate_tokens

Tree = dict[str, "Tree"]
"""Dotted paths as a tree: ``["a.b", "c"]`` is ``{"a": {"b": {}}, "c": {}}``; a leaf keeps
its whole value."""


def path_tree(paths: Sequence[str]) -> Tree:
    """The tree of dotted paths; a path under one already kept whole adds nothing."""
    tree: Tree = {}
    for path in sorted(paths, key=lambda p: p.count(".")):  # ancestors first
        node = tree
        *parents, last = path.split(".")
        for part in parents:
            child = node.get(part)
            if child is not None and not child:
                break  # an ancestor is kept whole
            node = node.setdefault(part, {})
        else:
            node[last] = {}
    return tree


def trim(value: Any, tree: Tree) -> Any:
    """``value`` with only the fields the tree names; each item of a list is trimmed alike.

    A path that goes deeper than the value (into a string, say) keeps the value;
    fields the value lacks are left out, never invented.
    """
    if not tree:
        return value
    if isinstance(value, dict):
        return {k: trim(v, tree[k]) for k, v in value.items() if k in tree}
    if isinstance(value, list):
        return [trim(item, tree) for item in value]
    return value


def trim_json_text(text: str, tree: Tree) -> str:
    """A text that is a JSON object or array, trimmed and re-encoded; other text unchanged."""
    if not tree or not text.lstrip().startswith(("{", "[")):
        return text
    try:
        value = orjson.loads(text)
    except orjson.JSONDecodeError:
        return text
    return orjson.dumps(trim(value, tree)).decode()


def trim_tool_result(result: Mapping[str, Any], tree: Tree) -> dict[str, Any]:
    """An MCP ``CallToolResult`` with its structured content and JSON text blocks trimmed."""
    out = dict(result)
    if not tree:
        return out
    if "structuredContent" in out:
        out["structuredContent"] = trim(out["structuredContent"], tree)
    content = out.get("content")
    if isinstance(content, list):
        out["content"] = [
            {**block, "text": trim_json_text(block["text"], tree)}
            if isinstance(block, dict)
            and block.get("type") == "text"
            and isinstance(block.get("text"), str)
            else block
            for block in content
        ]
    return out


def result_tokens(result: Mapping[str, Any]) -> int:
    """Estimated tokens of what an agent puts in its next prompt from a tool result.

    Clients pass the text blocks on (and the structured content, where they
    read it instead), so both are counted; 0 for an empty result.
    """
    content = result.get("content")
    blocks = content if isinstance(content, list) else []
    parts = [b["text"] for b in blocks if isinstance(b, dict) and isinstance(b.get("text"), str)]
    if "structuredContent" in result:
        parts.append(orjson.dumps(result["structuredContent"]).decode())
    text = "".join(parts)
    return estimate_tokens(text) if text else 0


def body_tokens(body: bytes) -> int:
    """Estimated tokens of an HTTP tool's response body."""
    return estimate_tokens(body.decode("utf-8", "replace")) if body else 0


def cacheable_tool(annotations: Any) -> bool:
    """Whether a tool's annotations declare calling it again changes nothing.

    Only an explicit ``readOnlyHint`` or ``idempotentHint`` of ``true`` counts:
    the MCP spec's defaults assume a tool may have side effects, and a cached
    answer to such a call would skip an action the agent asked for.
    """
    if not isinstance(annotations, Mapping):
        return False
    return annotations.get("readOnlyHint") is True or annotations.get("idempotentHint") is True


def call_key(partition: str, server: str, tool: str, arguments: Any) -> str:
    """The cache key of an MCP tool call: equal for equal arguments in any key order."""
    digest = hashlib.sha256(b"mcp\0" + partition.encode() + b"\0" + server.encode() + b"\0")
    digest.update(tool.encode() + b"\0")
    digest.update(orjson.dumps(arguments, option=orjson.OPT_SORT_KEYS))
    return digest.hexdigest()


VARY_HEADERS = ("authorization", "accept", "accept-language", "cookie")
"""Request headers that can change what a tool API answers to a GET; they are in its key."""


def http_key(partition: str, tool: str, path_qs: str, headers: Mapping[str, str]) -> str:
    """The cache key of an HTTP tool GET: the path and query, and the headers that vary it."""
    digest = hashlib.sha256(b"http\0" + partition.encode() + b"\0" + tool.encode() + b"\0")
    digest.update(path_qs.encode())
    for name in VARY_HEADERS:
        digest.update(b"\0" + headers.get(name, "").encode())
    return digest.hexdigest()


@dataclass
class SseEvent:
    """One server-sent event, its fields as received (``data`` joined by newlines)."""

    fields: list[tuple[str, str]]
    """(name, value) in order, data lines included."""

    @property
    def data(self) -> str:
        """The event's data."""
        return "\n".join(v for k, v in self.fields if k == "data")

    def with_data(self, data: str) -> SseEvent:
        """The same event (id, type, retry) carrying other data."""
        kept = [(k, v) for k, v in self.fields if k != "data"]
        return SseEvent([*kept, *(("data", line) for line in data.split("\n"))])

    def encode(self) -> bytes:
        """The event as a client reads it, with its closing blank line."""
        return "".join(f"{k}: {v}\n" if k else f":{v}\n" for k, v in self.fields).encode() + b"\n"


def sse_events(body: bytes) -> Iterator[SseEvent]:
    """The events of a whole ``text/event-stream`` body (comments kept as field ``""``)."""
    text = body.decode("utf-8", "replace").replace("\r\n", "\n").replace("\r", "\n")
    for block in text.split("\n\n"):
        fields = []
        for line in block.split("\n"):
            if not line:
                continue
            name, _, value = line.partition(":")
            fields.append((name, value[1:] if value.startswith(" ") else value))
        if fields:
            yield SseEvent(fields)


def json_message(text: str | bytes) -> Any:
    """A JSON-RPC message, or None when the text is not JSON."""
    try:
        return orjson.loads(text)
    except orjson.JSONDecodeError:
        return None


def response_for(message: Any, request_id: Any) -> bool:
    """Whether a JSON-RPC message is the response to the request with ``request_id``."""
    return (
        isinstance(message, dict)
        and message.get("id") == request_id
        and ("result" in message or "error" in message)
        and "method" not in message
    )
