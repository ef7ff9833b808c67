"""How the demo scores its own workload: what all-large would have cost, and what is right."""

from __future__ import annotations

from decimal import Decimal

from tokenomy_api.compiled import Price
from tokenomy_demo.report import MILLION, words
from tokenomy_demo.run import SYSTEM
from tokenomy_demo.workload import Question, support_answer


def large_answer(q: Question) -> str:
    """What the large tier answers."""
    return support_answer(q.intent) if q.kind == "support" else q.answers[1]


def cost_on_large(q: Question, price: Price) -> Decimal:
    """What the question costs sent straight to the large tier."""
    prompt = words(SYSTEM) + words(q.text)
    return (prompt * price.input + words(large_answer(q)) * price.output) / MILLION


def correct(q: Question, text: str) -> bool:
    """Whether the served answer is right for the question asked.

    Support: the answer must be for the question's intent (a semantic hit
    may serve another intent's). Arithmetic: the answer must be one of the
    recorded answers to *this* question, and that answer must have been right.
    """
    if q.kind == "support":
        return text.startswith(f"[{q.intent}]")
    served = text.split()
    for answer, right in zip(q.answers, q.correct, strict=True):
        if served == answer.split():
            return right
    return False
