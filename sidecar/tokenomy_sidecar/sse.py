"""Server-sent events of the OpenAI streaming API: splitting, assembling, replaying."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import orjson

DONE = b"data: [DONE]"


def split_events(buffer: bytearray) -> Iterator[bytes]:
    """Take every complete event (terminated by a blank line) off the front of ``buffer``."""
    while True:
        end = buffer.find(b"\n\n")
        if end < 0:
            return
        event = bytes(buffer[:end])
        del buffer[: end + 2]
        yield event


def is_usage_only(event: bytes) -> bool:
    """Whether an event is the extra final chunk carrying only ``usage``."""
    return b'"choices":[]' in event and b'"usage":{' in event


def event_data(event: bytes) -> dict[str, Any] | None:
    """The JSON object of a ``data:`` event, or None for comments, ``[DONE]`` and junk."""
    for line in event.split(b"\n"):
        if line.startswith(b"data:"):
            payload = line[5:].strip()
            if payload == b"[DONE]":
                return None
            try:
                data = orjson.loads(payload)
            except orjson.JSONDecodeError:
                return None
            return data if isinstance(data, dict) else None
    return None


def assemble(events: list[bytes]) -> dict[str, Any] | None:
    """Rebuild the non-streamed completion from a finished stream's events.

    None when the stream does not make one whole answer of a single choice
    (several choices, tool calls): such answers are not cached.
    """
    content: list[str] = []
    refusal: list[str] = []
    completion: dict[str, Any] = {"object": "chat.completion"}
    finish = None
    usage = None
    for event in events:
        data = event_data(event)
        if data is None:
            continue
        for key in ("id", "created", "model", "system_fingerprint"):
            if key in data:
                completion[key] = data[key]
        if isinstance(data.get("usage"), dict):
            usage = data["usage"]
        for choice in data.get("choices") or []:
            if choice.get("index", 0) != 0:
                return None
            delta = choice.get("delta") or {}
            if delta.get("tool_calls") or delta.get("function_call"):
                return None
            if isinstance(delta.get("content"), str):
                content.append(delta["content"])
            if isinstance(delta.get("refusal"), str):
                refusal.append(delta["refusal"])
            if choice.get("finish_reason"):
                finish = choice["finish_reason"]
    if finish is None:
        return None
    completion["choices"] = [
        {
            "index": 0,
            "message": {
                "role": "assistant",
                "content": "".join(content),
                # Kept, so that a streamed refusal is seen as one (and never cached).
                "refusal": "".join(refusal) if refusal else None,
            },
            "finish_reason": finish,
            "logprobs": None,
        }
    ]
    completion["object"] = "chat.completion"
    if usage is not None:
        completion["usage"] = usage
    return completion


def replay(completion: dict[str, Any], include_usage: bool) -> list[bytes]:
    """A stored completion as the SSE events a live stream would have sent."""
    base = {
        "id": completion.get("id", "chatcmpl-cached"),
        "object": "chat.completion.chunk",
        "created": completion.get("created", 0),
        "model": completion.get("model", ""),
    }
    extra = {"usage": None} if include_usage else {}
    choice = completion["choices"][0]
    message = choice.get("message") or {}

    def chunk(delta: dict[str, Any], finish: str | None) -> bytes:
        body = {
            **base,
            "choices": [{"index": 0, "delta": delta, "finish_reason": finish}],
            **extra,
        }
        return b"data: " + orjson.dumps(body) + b"\n\n"

    events = [
        chunk({"role": "assistant", "content": ""}, None),
        chunk({"content": message.get("content") or ""}, None),
        chunk({}, choice.get("finish_reason") or "stop"),
    ]
    if include_usage and "usage" in completion:
        final = {**base, "choices": [], "usage": completion["usage"]}
        events.append(b"data: " + orjson.dumps(final) + b"\n\n")
    events.append(DONE + b"\n\n")
    return events


def cacheable(completion: dict[str, Any]) -> bool:
    """Whether an answer is whole and safe to serve again.

    One choice that finished with ``stop``: truncated answers (``length``),
    tool calls, refusals and content-filtered answers are never stored.
    """
    choices = completion.get("choices")
    if not isinstance(choices, list) or len(choices) != 1:
        return False
    choice = choices[0]
    message = choice.get("message") if isinstance(choice, dict) else None
    return (
        isinstance(message, dict)
        and choice.get("finish_reason") == "stop"
        and not message.get("tool_calls")
        and not message.get("refusal")
        and isinstance(message.get("content"), str)
    )
