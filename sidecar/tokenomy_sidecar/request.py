"""Parse and check an OpenAI chat-completions request; everything else passes through."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import orjson

from tokenomy_sidecar.errors import ApiError

_INT_FIELDS = ("max_tokens", "max_completion_tokens", "n", "seed", "top_logprobs")
_NUMBER_FIELDS = ("temperature", "top_p", "presence_penalty", "frequency_penalty")
_RANGES: dict[str, tuple[float, float]] = {
    # The OpenAI API's ranges: a request outside them is one every provider refuses,
    # so it is refused here, named, instead of being sent (and retried).
    "max_tokens": (1, float("inf")),
    "max_completion_tokens": (1, float("inf")),
    "n": (1, 128),
    "top_logprobs": (0, 20),
    "temperature": (0, 2),
    "top_p": (0, 1),
    "presence_penalty": (-2, 2),
    "frequency_penalty": (-2, 2),
}
_ROLES = frozenset({"system", "developer", "user", "assistant", "tool", "function"})
MAX_DEPTH = 64
"""Deepest nesting of arrays and objects accepted in a body; real requests (JSON Schemas
in ``response_format`` and tools included) stay far below it, and the encoder that
forwards the body refuses depths above 254."""


@dataclass
class ChatRequest:
    """A chat request: the body as a dict (changed by stages), and what the client asked."""

    body: dict[str, Any]
    """The request body; fields the sidecar does not know pass through untouched."""
    model: str
    """The ``model`` the client called: a ModelRoute's ``spec.model``."""
    stream: bool
    """Whether the client wants SSE."""
    client_wants_usage: bool
    """Whether the client asked for the final usage chunk of a stream."""


def parse_json_object(raw: bytes) -> dict[str, Any]:
    """The body as a JSON object, or a 400 that says what is wrong."""
    try:
        body = orjson.loads(raw)
    except orjson.JSONDecodeError as error:
        raise ApiError(400, f"request body is not valid JSON: {error}") from None
    if not isinstance(body, dict):
        raise ApiError(400, "request body must be a JSON object")
    if _deeper_than(body, MAX_DEPTH):
        raise ApiError(400, f"request body nests arrays and objects deeper than {MAX_DEPTH} levels")
    return body


def _deeper_than(value: Any, limit: int) -> bool:
    """Whether ``value`` nests containers more than ``limit`` levels (iteratively: no recursion
    limit to hit on the hostile input this guards against)."""
    level: list[Any] = [value]
    for _ in range(limit):
        level = [
            child
            for item in level
            for child in (item.values() if isinstance(item, dict) else item)
            if isinstance(child, (dict, list))
        ]
        if not level:
            return False
    return True


def parse_chat(raw: bytes) -> ChatRequest:
    """Check the fields the sidecar relies on; a 400 names the first wrong one."""
    body = parse_json_object(raw)
    model = body.get("model")
    if not isinstance(model, str) or not model:
        raise ApiError(400, "`model` is required and must be a string", param="model")
    messages = body.get("messages")
    if not isinstance(messages, list) or not messages:
        raise ApiError(400, "`messages` must be a non-empty array", param="messages")
    for i, message in enumerate(messages):
        if not isinstance(message, dict) or not isinstance(message.get("role"), str):
            raise ApiError(
                400, f"`messages[{i}]` must be an object with a `role`", param=f"messages[{i}]"
            )
        if message["role"] not in _ROLES:
            raise ApiError(
                400,
                f"`messages[{i}].role` must be one of {', '.join(sorted(_ROLES))}",
                param=f"messages[{i}].role",
            )
        content = message.get("content")
        if content is not None and not isinstance(content, (str, list)):
            raise ApiError(
                400,
                f"`messages[{i}].content` must be a string or an array of content parts",
                param=f"messages[{i}].content",
            )
        for j, part in enumerate(content if isinstance(content, list) else ()):
            if not _valid_part(part):
                raise ApiError(
                    400,
                    f"`messages[{i}].content[{j}]` must be an object with a `type`; "
                    "a text part needs a string `text`",
                    param=f"messages[{i}].content[{j}]",
                )
    stream = body.get("stream", False)
    if not isinstance(stream, bool):
        raise ApiError(400, "`stream` must be a boolean", param="stream")
    for name in _INT_FIELDS:
        value = body.get(name)
        if value is not None and (not isinstance(value, int) or isinstance(value, bool)):
            raise ApiError(400, f"`{name}` must be an integer", param=name)
    for name in _NUMBER_FIELDS:
        value = body.get(name)
        if value is not None and (not isinstance(value, (int, float)) or isinstance(value, bool)):
            raise ApiError(400, f"`{name}` must be a number", param=name)
    for name, (low, high) in _RANGES.items():
        value = body.get(name)
        if value is not None and not low <= value <= high:
            shown = f"at least {low:g}" if high == float("inf") else f"from {low:g} to {high:g}"
            raise ApiError(400, f"`{name}` must be {shown} (got {value})", param=name)
    _check_tools(body.get("tools"))
    options = body.get("stream_options")
    if options is not None and not isinstance(options, dict):
        raise ApiError(400, "`stream_options` must be an object", param="stream_options")
    wants_usage = bool(stream and options and options.get("include_usage"))
    return ChatRequest(body=body, model=model, stream=stream, client_wants_usage=wants_usage)


def parse_embeddings(raw: bytes) -> ChatRequest:
    """An embeddings request, checked as the OpenAI API checks it; a 400 names the field."""
    body = parse_json_object(raw)
    model = body.get("model")
    if not isinstance(model, str) or not model:
        raise ApiError(400, "`model` is required and must be a string", param="model")
    if "input" not in body:
        raise ApiError(400, "`input` is required", param="input")
    given = body["input"]
    texts = isinstance(given, str) or (
        isinstance(given, list) and given and all(isinstance(t, str) for t in given)
    )
    tokens = isinstance(given, list) and given and all(_tokens(t) for t in given)
    if not (texts or tokens or _tokens(given)):
        raise ApiError(
            400,
            "`input` must be a string, an array of strings, an array of token ids, "
            "or an array of arrays of token ids",
            param="input",
        )
    dimensions = body.get("dimensions")
    if dimensions is not None and (
        not isinstance(dimensions, int) or isinstance(dimensions, bool) or dimensions < 1
    ):
        raise ApiError(400, "`dimensions` must be a positive integer", param="dimensions")
    if body.get("encoding_format", "float") not in ("float", "base64"):
        raise ApiError(400, "`encoding_format` must be float or base64", param="encoding_format")
    return ChatRequest(body=body, model=model, stream=False, client_wants_usage=False)


def _valid_part(part: Any) -> bool:
    if not isinstance(part, dict) or not isinstance(part.get("type"), str):
        return False
    return part["type"] != "text" or isinstance(part.get("text"), str)


def _tokens(value: Any) -> bool:
    return (
        isinstance(value, list)
        and bool(value)
        and all(isinstance(t, int) and not isinstance(t, bool) and t >= 0 for t in value)
    )


def _check_tools(tools: Any) -> None:
    if tools is None:
        return
    if not isinstance(tools, list):
        raise ApiError(400, "`tools` must be an array of tools", param="tools")
    for i, tool in enumerate(tools):
        function = tool.get("function") if isinstance(tool, dict) else None
        if not isinstance(function, dict) or not isinstance(function.get("name"), str):
            raise ApiError(
                400,
                f"`tools[{i}]` must be an object with `function.name`",
                param=f"tools[{i}]",
            )


def prompt_text(body: Mapping[str, Any]) -> str:
    """Every message's text, one per line: what token estimates of a prompt count."""
    return "\n".join(message_text(m) for m in body.get("messages") or [])


def message_text(message: dict[str, Any]) -> str:
    """The text of a message: its string content, or its text parts joined."""
    content = message.get("content")
    if isinstance(content, str):
        return content
    if isinstance(content, list):
        return " ".join(
            part["text"]
            for part in content
            if isinstance(part, dict) and isinstance(part.get("text"), str)
        )
    return ""
