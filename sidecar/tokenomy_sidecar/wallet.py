"""The sidecar's side of budget leases: reserve before a call, reconcile after it.

A request may go upstream only with a reservation of its estimated cost
from the current lease; when it finishes, the reservation becomes the
actual cost and a numbered usage report. Pure bookkeeping: time is passed
in, and the lease client (renewals over gRPC) builds on it.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from decimal import Decimal

from tokenomy_api.usage_protocol import RequestUsage

ZERO = Decimal(0)


@dataclass(frozen=True)
class Reservation:
    """Money set aside for one request in flight."""

    amount: Decimal


@dataclass(frozen=True)
class Report:
    """One numbered usage report, as the operator counts it."""

    number: int
    usage: RequestUsage

    @property
    def cost(self) -> Decimal:
        """What the request cost."""
        return self.usage.cost


@dataclass
class Wallet:
    """The current lease and what is reserved and spent from it."""

    lease: Decimal = ZERO
    expires: float = 0.0
    spent: Decimal = ZERO
    """Reconciled spend against the current lease."""
    reserved: Decimal = ZERO
    """Reservations of requests in flight."""
    number: int = 0
    """The last report's number; numbers keep rising across leases and reconnects."""
    unsent: list[Report] = field(default_factory=list)
    """Reports not yet acknowledged by the operator; resent after a reconnect."""
    settled: Decimal = ZERO
    """Everything ever settled: marks taken when a lease is asked for are read against it."""

    @property
    def free(self) -> Decimal:
        """What the lease still covers."""
        return self.lease - self.spent - self.reserved

    def reserve(self, estimate: Decimal, now: float) -> Reservation | None:
        """Set ``estimate`` aside, or None when the lease cannot cover it (or has expired)."""
        if now >= self.expires or self.spent + self.reserved + estimate > self.lease:
            return None
        self.reserved += estimate
        return Reservation(estimate)

    def settle(self, reservation: Reservation, usage: RequestUsage) -> Report:
        """Turn a reservation into the request's actual cost and a numbered report."""
        self.reserved -= reservation.amount
        self.spent += usage.cost
        self.settled += usage.cost
        self.number += 1
        report = Report(self.number, usage)
        self.unsent.append(report)
        return report

    def compact(self, after: int) -> int:
        """Merge the reports numbered above ``after`` into one; returns how many were merged.

        For a long outage: only reports the operator has never been sent may
        be merged (it can have counted none of them, so the merged report,
        numbered as the last, is counted exactly once). Their cost, savings
        and tokens stay exact; which tier, cache, labels and task each had is
        dropped, and the operator counts them as money, not as requests.
        """
        fresh = [r for r in self.unsent if r.number > after]
        if len(fresh) < 2:
            return 0
        merged = RequestUsage(
            cost=sum((r.usage.cost for r in fresh), ZERO),
            saved=sum((r.usage.saved for r in fresh), ZERO),
            input_tokens=sum(r.usage.input_tokens for r in fresh),
            output_tokens=sum(r.usage.output_tokens for r in fresh),
        )
        self.unsent = [r for r in self.unsent if r.number <= after]
        self.unsent.append(Report(fresh[-1].number, merged))
        return len(fresh)

    def acknowledged(self, number: int) -> None:
        """The operator has counted every report up to ``number``."""
        self.unsent = [r for r in self.unsent if r.number > number]

    def renew(self, amount: Decimal, expires: float, mark: Decimal | None = None) -> None:
        """A new lease replaces the old; it already includes what was in flight.

        ``mark`` is :attr:`settled` when the lease was asked for: requests in
        flight then that have settled since are already spending the new
        lease (the operator counts their reports against it).
        """
        self.lease = amount
        self.expires = expires
        self.spent = self.settled - mark if mark is not None else ZERO
