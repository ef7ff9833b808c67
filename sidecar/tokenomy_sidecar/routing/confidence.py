"""Judging a tier's answer in a cascade: confidence signals, format checks, the verdict.

Pure functions over OpenAI ``choices``; the proxy makes the calls they need
(logprobs asked for, ``n`` samples, a verifier prompt) and ``tokenomy eval
cascade`` applies the same checks to recorded answers.
"""

from __future__ import annotations

import math
import re
from collections import Counter
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import jsonschema
import orjson

DEFAULT_VERIFIER_PROMPT = (
    "You check answers. Question:\n{question}\n\nProposed answer:\n{answer}\n\n"
    "How likely is the proposed answer to be correct and complete? "
    "Reply with one number between 0 and 1 and nothing else."
)
"""The verifier prompt when the policy sets none; ``{question}`` and ``{answer}`` are filled."""

# Openings of answers that decline the task. Matched at the start only: an
# answer that explains what it cannot know is still an answer.
REFUSAL = re.compile(
    r"^\s*(i'?m sorry|i am sorry|sorry, (but )?i|i (can(no|')t|am unable to|won'?t) "
    r"(help|assist|provide|comply|do that)|as an ai\b)",
    re.IGNORECASE,
)
NUMBER = re.compile(r"-?\d[\d,]*(?:\.\d+)?")
FINAL = re.compile(r"(?:####|answer is:?|answer:)\s*\$?\s*(-?\d[\d,]*(?:\.\d+)?)", re.IGNORECASE)


@dataclass(frozen=True)
class Verdict:
    """Whether an answer is kept, and why."""

    accept: bool
    confidence: float | None
    reason: str
    """``confident``, ``format_ok``, or why it escalates: ``low_confidence``, ``truncated``,
    ``refusal``, ``format``, ``unjudged`` (no signal came back), ``error`` (the call failed)."""


def content(choice: Mapping[str, Any]) -> str:
    """The text of a choice's message ("" when there is none)."""
    message = choice.get("message")
    text = message.get("content") if isinstance(message, dict) else None
    return text if isinstance(text, str) else ""


def logprob_confidence(choice: Mapping[str, Any]) -> float | None:
    """Geometric mean token probability of the answer; None without logprobs."""
    logprobs = choice.get("logprobs")
    tokens = logprobs.get("content") if isinstance(logprobs, dict) else None
    if not isinstance(tokens, list) or not tokens:
        return None
    values = [t.get("logprob") for t in tokens if isinstance(t, dict)]
    numbers = [float(v) for v in values if isinstance(v, int | float)]
    if not numbers:
        return None
    return math.exp(sum(numbers) / len(numbers))


def final_answer(text: str) -> str:
    """What two answers must share to agree: the final number if any, else the words."""
    marked = FINAL.findall(text)
    if marked:
        return str(marked[-1]).replace(",", "")
    numbers = NUMBER.findall(text)
    if numbers:
        return str(numbers[-1]).replace(",", "")
    return " ".join(text.lower().split())


def agreement(choices: Sequence[Mapping[str, Any]]) -> tuple[int, float]:
    """(index of a majority answer, share of samples giving it)."""
    if not choices:
        return 0, 0.0
    answers = [final_answer(content(c)) for c in choices]
    top, count = Counter(answers).most_common(1)[0]
    return answers.index(top), count / len(answers)


def verifier_messages(template: str, question: str, answer: str) -> list[dict[str, str]]:
    """The verifier call's messages."""
    prompt = template.replace("{question}", question).replace("{answer}", answer)
    return [{"role": "user", "content": prompt}]


def parse_verdict(text: str) -> float | None:
    """The verifier's number in 0..1 (a yes/no is 1/0); None when it gave neither."""
    match = re.search(r"\d*\.?\d+", text)
    if match is not None:
        value = float(match.group())
        if 0.0 <= value <= 1.0:
            return value
        if 1.0 < value <= 100.0 and "%" in text:
            return value / 100.0
    words = text.strip().lower()
    if words.startswith("yes"):
        return 1.0
    if words.startswith("no"):
        return 0.0
    return None


def format_problem(choice: Mapping[str, Any], request: Mapping[str, Any]) -> str | None:
    """Why an answer is unusable whatever its confidence, or None.

    ``truncated`` (finish_reason ``length``), ``refusal`` (the model declined),
    ``format`` (not the JSON, or not the JSON schema, ``response_format`` asked for).
    """
    if choice.get("finish_reason") == "length":
        return "truncated"
    message = choice.get("message")
    if isinstance(message, dict) and message.get("refusal"):
        return "refusal"
    if isinstance(message, dict) and message.get("tool_calls"):
        return None  # tool calls carry no prose to judge
    text = content(choice)
    if REFUSAL.match(text):
        return "refusal"
    wanted = request.get("response_format")
    kind = wanted.get("type") if isinstance(wanted, dict) else None
    if kind not in ("json_object", "json_schema"):
        return None
    try:
        value = orjson.loads(text)
    except orjson.JSONDecodeError:
        return "format"
    if kind == "json_object":
        return None if isinstance(value, dict) else "format"
    spec = wanted.get("json_schema") if isinstance(wanted, dict) else None
    schema = spec.get("schema") if isinstance(spec, dict) else None
    if not isinstance(schema, dict):
        return None
    try:
        jsonschema.validate(value, schema)
    except jsonschema.ValidationError:
        return "format"
    except jsonschema.SchemaError:
        return None  # the client's schema is broken, not the answer
    return None


def judge(method: str, confidence: float | None, threshold: float, problem: str | None) -> Verdict:
    """Keep or escalate: a format problem always escalates; ``format`` needs nothing else."""
    if problem is not None:
        return Verdict(False, confidence, problem)
    if method == "format":
        return Verdict(True, confidence, "format_ok")
    if confidence is None:
        return Verdict(False, None, "unjudged")
    if confidence < threshold:
        return Verdict(False, confidence, "low_confidence")
    return Verdict(True, confidence, "confident")
