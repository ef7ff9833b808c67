"""Metering: tokens from the backend's ``usage``, cost and savings in exact decimals."""

from __future__ import annotations

from dataclasses import dataclass
from decimal import Decimal
from typing import Any

from tokenomy_api.compiled import Price

MILLION = Decimal(1_000_000)


@dataclass(frozen=True)
class Usage:
    """Tokens one answer used."""

    prompt: int = 0
    """Input tokens, cached ones included."""
    completion: int = 0
    """Output tokens."""
    cached: int = 0
    """Input tokens the provider read from its prompt cache."""

    @classmethod
    def from_openai(cls, usage: Any) -> Usage:
        """Read an OpenAI ``usage`` object; anything missing or malformed counts as 0."""
        if not isinstance(usage, dict):
            return cls()
        details = usage.get("prompt_tokens_details")
        cached = details.get("cached_tokens") if isinstance(details, dict) else 0
        return cls(
            prompt=_count(usage.get("prompt_tokens")),
            completion=_count(usage.get("completion_tokens")),
            cached=min(_count(cached), _count(usage.get("prompt_tokens"))),
        )


def _count(value: Any) -> int:
    return value if isinstance(value, int) and not isinstance(value, bool) and value > 0 else 0


def cost(usage: Usage, price: Price) -> Decimal:
    """What ``usage`` costs at ``price`` (USD per million tokens)."""
    cached_price = price.cached_input if price.cached_input is not None else price.input
    total = (
        (usage.prompt - usage.cached) * price.input
        + usage.cached * cached_price
        + usage.completion * price.output
    )
    return total / MILLION


def savings(usage: Usage, paid: Decimal, reference: Price) -> Decimal:
    """What the answer would have cost on the reference tier, minus what it cost.

    Negative when a request cost more than the reference would have, e.g. a
    cascade that tried a small tier and then escalated.
    """
    return cost(usage, reference) - paid


def usd(amount: Decimal) -> str:
    """An amount for a header: plain decimal notation, no exponent, no trailing zeros."""
    text = format(amount.normalize(), "f")
    return text if text != "-0" else "0"
