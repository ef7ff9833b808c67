"""The demo's workload: a support agent's traffic, from real data.

Most requests are customer-support questions (Banking77): popular intents
come up far more often than rare ones (Zipf), the same question is asked
again word for word now and then, and other customers ask the same thing in
their own words. The rest are arithmetic word problems (GSM8K) with both
models' recorded answers, so whether an answer is right is known, not guessed.
"""

from __future__ import annotations

import csv
import json
import random
from dataclasses import dataclass
from importlib import resources
from pathlib import Path

DATA = Path(str(resources.files("tokenomy_demo") / "data"))


@dataclass(frozen=True)
class Question:
    """One question the demo can ask."""

    text: str
    kind: str
    """``support`` or ``math``."""
    intent: str = ""
    """The Banking77 intent of a support question."""
    answers: tuple[str, str] = ("", "")
    """(weak, strong) recorded answers of a math question."""
    correct: tuple[bool, bool] = (True, True)
    """Whether the (weak, strong) answer is right."""


@dataclass(frozen=True)
class Data:
    """Everything the demo asks from."""

    support: dict[str, list[Question]]
    """Support questions by intent."""
    math: list[Question]


def load() -> Data:
    """The packaged data slice."""
    support: dict[str, list[Question]] = {}
    with (DATA / "banking77.csv").open(newline="") as f:
        for row in csv.DictReader(f):
            q = Question(row["text"], "support", intent=row["category"])
            support.setdefault(q.intent, []).append(q)
    math = []
    for line in (DATA / "gsm8k.jsonl").read_text().splitlines():
        item = json.loads(line)
        math.append(
            Question(
                item["question"],
                "math",
                answers=(item["answers"]["weak"], item["answers"]["strong"]),
                correct=(item["correct"]["weak"], item["correct"]["strong"]),
            )
        )
    return Data(support, math)


def support_answer(intent: str) -> str:
    """The support team's answer for an intent; it names the intent so a wrong one shows."""
    topic = intent.replace("_", " ")
    return (
        f"[{intent}] Thanks for getting in touch about {topic}. Here is what to do: open the "
        "app, go to Help, choose this topic and follow the steps; we will confirm by e-mail."
    )


def workload(
    data: Data,
    requests: int,
    seed: int = 0,
    math_share: float = 0.3,
    repeat_share: float = 0.15,
) -> list[Question]:
    """``requests`` questions in the order they arrive."""
    rng = random.Random(seed)
    intents = sorted(data.support)
    rng.shuffle(intents)
    weights = [1.0 / (rank + 1) for rank in range(len(intents))]  # Zipf: popular intents
    asked: list[Question] = []
    out = []
    for _ in range(requests):
        if asked and rng.random() < repeat_share:
            q = rng.choice(asked)  # the same words again
        elif rng.random() < math_share:
            q = rng.choice(data.math)
        else:
            intent = rng.choices(intents, weights)[0]
            q = rng.choice(data.support[intent])  # often another customer's wording
        asked.append(q)
        out.append(q)
    return out
