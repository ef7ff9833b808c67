"""Budget periods: calendar days, ISO weeks and months in a time zone, and spend arithmetic.

Pure functions shared by the operator (which sums spend per period) and the
sidecar (whose 429 says when the budget resets). Periods start at local
midnight, so a daylight-saving day is 23 or 25 hours long, as people expect.
"""

from __future__ import annotations

from datetime import UTC, date, datetime, timedelta
from decimal import Decimal
from typing import Literal
from zoneinfo import ZoneInfo

Period = Literal["daily", "weekly", "monthly"]


def bounds(period: Period, time_zone: str, now: datetime) -> tuple[datetime, datetime]:
    """The period containing ``now`` (aware): its start and the next period's start, in UTC."""
    zone = ZoneInfo(time_zone)
    local = now.astimezone(zone)
    day = local.date()
    if period == "daily":
        first, after = day, day + timedelta(days=1)
    elif period == "weekly":
        first = day - timedelta(days=day.weekday())  # ISO weeks start on Monday
        after = first + timedelta(days=7)
    else:
        first = day.replace(day=1)
        after = (first + timedelta(days=32)).replace(day=1)

    def midnight(d: date) -> datetime:
        return datetime(d.year, d.month, d.day, tzinfo=zone).astimezone(UTC)

    return midnight(first), midnight(after)


def rfc3339(moment: datetime) -> str:
    """A moment as status writes it: UTC, whole seconds, ``Z``."""
    return moment.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def projected(spent: Decimal, start: datetime, end: datetime, now: datetime) -> Decimal:
    """Spend at the end of the period if it goes on at the rate so far."""
    elapsed = Decimal(str((now - start).total_seconds()))
    if elapsed <= 0:
        return spent
    whole = Decimal(str((end - start).total_seconds()))
    return spent * whole / elapsed


def share_used(spent: Decimal, amount: Decimal) -> str:
    """The share of the budget spent, as status shows it: ``42%`` (whole percent, floor)."""
    if amount <= 0:
        return "100%"
    return f"{int(spent * 100 // amount)}%"
