"""Figures for people to read: money to the cent (status keeps the exact amounts)."""

from __future__ import annotations

from decimal import ROUND_HALF_UP, Decimal

CENT = Decimal("0.01")


def dollars(amount: str | Decimal) -> str:
    """An amount to the cent, for reading: ``$12.35``, ``-$0.40``; ``<$0.01`` for less
    than a cent that is not nothing (status keeps the exact figure)."""
    value = Decimal(amount)
    sign = "-" if value < 0 else ""
    if 0 < abs(value) < CENT / 2:
        return f"{sign}<$0.01"
    return f"{sign}${abs(value).quantize(CENT, ROUND_HALF_UP):,}"
