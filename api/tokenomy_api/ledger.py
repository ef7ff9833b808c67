"""The budget ledger of one CostPolicy period: spent, leased out, and what is left.

Sidecars spend only from leases (reserve, then reconcile). The ledger grants
a lease out of what no one has spent or holds, so leases shrink as the
budget runs low; a lease that expires stops counting, and its unspent part
returns to the pool. Reports carry a per-sidecar sequence number: a report
replayed after a reconnect is recognised and counted once.

Pure: time comes from the caller, nothing here does I/O. A standalone
sidecar keeps one itself; in a cluster the operator keeps one per policy
and period (:mod:`tokenomy_operator.spend.usage`), and persists ``spent`` and
``sequence`` in the policy's status, so a restarted operator resumes.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from decimal import Decimal

ZERO = Decimal(0)


@dataclass(frozen=True)
class LeaseSettings:
    """How leases are sized and how long they live."""

    ttl_seconds: float = 30.0
    """A lease's life; a sidecar that cannot renew stops spending it after this."""
    share: Decimal = Decimal("0.5")
    """Share of what is left that all holders' fresh leases may take together."""
    minimum: Decimal = Decimal("0.01")
    """Smallest fresh lease worth granting (USD), unless less than that is left."""
    maximum_share: Decimal = Decimal("0.01")
    """Largest fresh lease as a share of the budget: the first sidecars to ask must not
    hold the budget that later ones need (a hundred sidecars can each hold 1 %)."""


@dataclass
class Lease:
    """What one sidecar may spend until ``expires``."""

    holder: str
    amount: Decimal
    """USD it may spend, including what was in flight when the lease was granted."""
    expires: float
    spent: Decimal = ZERO
    """USD reported against it so far."""

    @property
    def unspent(self) -> Decimal:
        """What it still holds back from the pool."""
        return max(ZERO, self.amount - self.spent)


@dataclass
class Ledger:
    """One policy's budget for one period."""

    budget: Decimal
    settings: LeaseSettings = field(default_factory=LeaseSettings)
    spent: Decimal = ZERO
    """USD reported this period (resumed from status after a restart)."""
    leases: dict[str, Lease] = field(default_factory=dict)
    sequence: dict[str, int] = field(default_factory=dict)
    """The last report number counted per sidecar."""

    def report(self, holder: str, number: int, cost: Decimal) -> bool:
        """Count a report once; False for one already counted (a replay after a reconnect)."""
        if number <= self.sequence.get(holder, 0):
            return False
        self.sequence[holder] = number
        self.spent += cost
        lease = self.leases.get(holder)
        if lease is not None:
            lease.spent += cost
        return True

    def expire(self, now: float) -> None:
        """Forget leases past their time: their holders no longer spend them."""
        for holder in [h for h, lease in self.leases.items() if lease.expires <= now]:
            del self.leases[holder]

    def outstanding(self) -> Decimal:
        """What live leases hold back and have not spent."""
        return sum((lease.unspent for lease in self.leases.values()), ZERO)

    def available(self) -> Decimal:
        """What nobody has spent or holds."""
        return self.budget - self.spent - self.outstanding()

    def grant(self, holder: str, in_flight: Decimal, now: float, need: Decimal = ZERO) -> Lease:
        """A new lease for ``holder``, replacing its old one.

        ``in_flight`` is what the holder has reserved for requests still
        running: it stays held (inside the new lease) so that returning the
        old lease's remainder never frees money those requests will spend.
        The fresh part is a share of what is left, split among the holders:
        small when the budget runs low, zero when it is gone; but at least
        ``need`` (the reservation that asked for the lease) while that much
        is left, so a request larger than a share is served, never overshooting.
        """
        self.expire(now)
        self.leases.pop(holder, None)
        held = min(in_flight, max(ZERO, self.available()))
        left = self.available() - held
        holders = len(self.leases) + 1
        fresh = ZERO
        if left > 0:
            fresh = max(left * self.settings.share / holders, min(left, self.settings.minimum))
            if self.budget.is_finite():
                fresh = min(
                    fresh, max(self.budget * self.settings.maximum_share, self.settings.minimum)
                )
            fresh = min(max(fresh, need), left)
        lease = Lease(holder, held + fresh, now + self.settings.ttl_seconds)
        self.leases[holder] = lease
        return lease

    @property
    def exhausted(self) -> bool:
        """Whether everything is spent."""
        return self.spent >= self.budget


def overshoot_bound(replicas: int, concurrency: int, underestimate: Decimal) -> Decimal:
    """The most a period's spend can pass its budget, in USD.

    Every request reserves its estimated cost from its sidecar's lease before
    it is sent, and leases never add up to more than the budget. Spend can
    pass the budget only by what requests cost beyond their reservation: at
    most ``underestimate`` (the largest amount one request's actual cost can
    exceed its reservation) for each request in flight, and at most
    ``replicas x concurrency`` are. With ``output.maxTokens`` set the output
    is reserved in full, so ``underestimate`` is only the input side's:
    input price x (actual input tokens - estimated input tokens).
    """
    return replicas * concurrency * max(ZERO, underestimate)
